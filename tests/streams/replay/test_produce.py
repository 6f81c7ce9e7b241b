"""Replay, produce mode: order, keys, pacing, and resuming without loss or duplicates."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from support.replay import T0, event, write_jsonl

from monitoring.metrics import Metrics
from streams.config import KafkaConfig, ReplayConfig
from streams.kafka.consumer import read_topic
from streams.replay.produce import (
    H_REPLAY,
    ReplayStats,
    read_json,
    replay_produce,
    write_json_atomic,
)
from streams.replay.run import run_produce
from streams.replay.sources import EventLogSource, ReplayError, expand_paths

pytestmark = pytest.mark.integration

N = 5000
BAD = b'{"user_id": "3", "action": "hover"}'  # invalid, but keyed: passed through untouched


def values() -> list[bytes]:
    out = [event(f"e{i}", i % 17, i % 50, "click", T0 + i) for i in range(N)]
    out[100] = BAD
    return out


def log(tmp: Path) -> EventLogSource:
    return EventLogSource(expand_paths(str(write_jsonl(tmp / "events.jsonl", values()))))


def topic_records(kafka_cfg: KafkaConfig, bootstrap: str) -> list[Any]:
    return read_topic(kafka_cfg, bootstrap, kafka_cfg.topic_events, timeout_s=30)


def check_exactly_once(records: list[Any]) -> None:
    """Every value of the log is in the topic once, keyed by its user, in log order per key."""
    counts = Counter(r.value for r in records)
    assert sorted(counts) == sorted(set(values()))
    assert set(counts.values()) == {1}
    by_key: dict[bytes, list[bytes]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(r.key, []).append(r.value)
        assert r.key == orjson.loads(r.value)["user_id"].encode()
    for key, got in by_key.items():
        assert got == [v for v in values() if orjson.loads(v)["user_id"].encode() == key]


def run(tmp: Path, kafka_cfg: KafkaConfig, bootstrap: str, **kw: Any) -> ReplayStats:
    kw.setdefault("metrics", Metrics(CollectorRegistry()))
    return replay_produce(log(tmp), kafka_cfg, bootstrap, tmp / "ck.json", **kw)


def test_produce_keeps_order_keys_and_bytes(
    tmp_path: Path, kafka_cfg: KafkaConfig, broker: Any, metrics: Metrics
) -> None:
    seen: list[int] = []
    stats = run(tmp_path, kafka_cfg, broker.bootstrap, metrics=metrics, progress=seen.append)
    assert stats.complete
    assert (stats.read, stats.produced, stats.skipped) == (N, N, 0)
    assert seen[-1] == N
    assert seen == sorted(seen)
    records = topic_records(kafka_cfg, broker.bootstrap)
    check_exactly_once(records)
    numbers = sorted(int(dict(r.headers)[H_REPLAY].split(b":")[1]) for r in records)
    assert numbers == list(range(N))
    reg = metrics.registry
    assert (
        reg.get_sample_value(
            "lumstream_replay_records_total", {"mode": "produce", "outcome": "produced"}
        )
        == N
    )
    assert (
        reg.get_sample_value(
            "lumstream_events_produced_total", {"topic": kafka_cfg.topic_events, "source": "replay"}
        )
        == N
    )
    checkpoint = read_json(tmp_path / "ck.json")
    assert checkpoint is not None
    assert (checkpoint["complete"], checkpoint["records"]) == (True, N)
    again = run(tmp_path, kafka_cfg, broker.bootstrap)  # complete: nothing to do
    assert (again.complete, again.produced, again.skipped) == (True, 0, N)


def test_rate_goes_through_the_token_bucket(
    tmp_path: Path, kafka_cfg: KafkaConfig, broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.generator import pacing

    taken: list[float] = []

    class Bucket:
        def __init__(self, rate: float) -> None:
            assert rate == 40_000

        def acquire(self, n: float) -> None:
            taken.append(n)

    monkeypatch.setattr(pacing, "TokenBucket", Bucket)
    stats = run(tmp_path, kafka_cfg, broker.bootstrap, cfg=ReplayConfig(rate=40_000))
    assert stats.complete
    assert sum(taken) == N
    assert max(taken) == pacing.batch_size_for(40_000)


def test_graceful_stop_then_resume(tmp_path: Path, kafka_cfg: KafkaConfig, broker: Any) -> None:
    stop = threading.Event()

    def progress(done: int) -> None:
        if done >= 1800:
            stop.set()

    cfg = ReplayConfig(checkpoint_every=700, checkpoint_s=1e9, rate=1e5)
    first = run(tmp_path, kafka_cfg, broker.bootstrap, cfg=cfg, stop=stop, progress=progress)
    assert not first.complete
    assert 1800 <= first.produced < N
    second = run(tmp_path, kafka_cfg, broker.bootstrap, cfg=cfg)
    assert second.complete
    assert second.resumed
    assert first.produced + second.produced == N
    check_exactly_once(topic_records(kafka_cfg, broker.bootstrap))


def test_a_crash_after_sending_before_the_checkpoint_does_not_duplicate(
    tmp_path: Path, kafka_cfg: KafkaConfig, broker: Any
) -> None:
    """Records sent after the last checkpoint are in the topic; the resumed run finds them
    by their replay header and skips exactly those."""

    def crash(done: int) -> None:
        if done >= 3200:
            raise RuntimeError("crash")

    cfg = ReplayConfig(checkpoint_every=2000, checkpoint_s=1e9, rate=1e4)  # chunks of 500
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path, kafka_cfg, broker.bootstrap, cfg=cfg, progress=crash)
    state = read_json(tmp_path / "ck.json")
    assert state is not None
    assert state["records"] == 2000
    late = len(topic_records(kafka_cfg, broker.bootstrap)) - 2000
    assert late > 0  # sent past the checkpoint

    def crash_at_once(done: int) -> None:
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):  # killed again before its checkpoint
        run(tmp_path, kafka_cfg, broker.bootstrap, cfg=cfg, progress=crash_at_once)
    state = read_json(tmp_path / "ck.json")
    assert state is not None
    assert state["depth"] == late + 2000  # the next resume looks past both runs' records
    stats = run(tmp_path, kafka_cfg, broker.bootstrap, cfg=ReplayConfig(checkpoint_every=999))
    assert stats.complete
    assert stats.skipped > 2000  # the checkpoint, plus what the crashed run had sent after it
    check_exactly_once(topic_records(kafka_cfg, broker.bootstrap))


def test_a_checkpoint_of_another_source_or_topic_is_refused(
    tmp_path: Path, kafka_cfg: KafkaConfig, broker: Any
) -> None:
    src = log(tmp_path)
    state = {
        "format": 1,
        "mode": "produce",
        "topic": "elsewhere",
        "source": src.identity(),
        "run": "x",
        "records": 0,
        "position": None,
        "complete": False,
        "depth": 1,
    }
    write_json_atomic(tmp_path / "ck.json", state)
    with pytest.raises(ReplayError, match="went to topic 'elsewhere'"):
        run(tmp_path, kafka_cfg, broker.bootstrap)
    state["topic"] = kafka_cfg.topic_events
    state["source"] = {**src.identity(), "files": []}
    write_json_atomic(tmp_path / "ck.json", state)
    with pytest.raises(ReplayError, match="differ"):
        run(tmp_path, kafka_cfg, broker.bootstrap)


def test_a_topic_is_not_replayed_into_itself(
    tmp_path: Path, kafka_cfg: KafkaConfig, broker: Any
) -> None:
    from streams.replay.kafka_range import KafkaRangeSource

    src = KafkaRangeSource(kafka_cfg, broker.bootstrap, kafka_cfg.topic_events)
    with pytest.raises(ReplayError, match="into itself"):
        replay_produce(src, kafka_cfg, broker.bootstrap, tmp_path / "ck.json")


def test_run_produce_keeps_a_checkpoint_per_source_and_topic(
    tmp_path: Path, kafka_cfg: KafkaConfig, broker: Any
) -> None:
    log_file = write_jsonl(tmp_path / "events.jsonl", values())
    checkpoints = tmp_path / "replay"

    @contextlib.contextmanager
    def connect() -> Iterator[str]:
        yield broker.bootstrap

    def produce(**kw: Any) -> ReplayStats:
        kw.setdefault("metrics", Metrics(CollectorRegistry()))
        return run_produce(str(log_file), kafka_cfg, connect, checkpoint_dir=checkpoints, **kw)

    first = produce()
    assert (first.produced, first.complete) == (N, True)
    [checkpoint] = checkpoints.iterdir()
    assert checkpoint.name.startswith("produce-")
    assert first.output == f"topic {kafka_cfg.topic_events} (checkpoint {checkpoint})"
    assert produce().produced == 0  # complete: found by its default name
    copy = f"{kafka_cfg.topic_events}.copy"  # created on the way
    assert produce(topic=copy).produced == N
    assert len(list(checkpoints.iterdir())) == 2
    assert produce(topic=copy, restart=True).produced == N
    assert (
        len(topic_records(dataclasses.replace(kafka_cfg, topic_events=copy), broker.bootstrap))
        == 2 * N
    )
