"""Backfill: the worker's processing over a log; resumable; equal to the live worker."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support.replay import (
    STORE,
    T0,
    WORKER,
    dump_store,
    event,
    generated,
    sample_rows,
    write_jsonl,
)

from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig, ReplayConfig
from streams.contracts.samplefile import iter_sample_file
from streams.contracts.samples import decode_block
from streams.kafka.consumer import read_topic
from streams.kafka.producer import Producer
from streams.kafka.topics import ensure_topics, with_topics
from streams.replay.backfill import MANIFEST, Backfill, partition_of
from streams.replay.kafka_range import KafkaRangeSource
from streams.replay.produce import read_json, replay_produce
from streams.replay.run import run_backfill
from streams.replay.sources import EventLogSource, ReplayError, expand_paths
from streams.sinks.deadletters import (
    DeadLetterFile,
    DeadLetterWriter,
    KafkaDeadLetterSink,
    read_deadletter_file,
    read_deadletters,
)
from streams.sinks.samples import KafkaSampleSink, SampleFileWriter
from streams.worker.confluent_engine import StreamWorker
from streams.worker.processor import open_processor
from streams.worker.store import PartitionStore

PARTS = 4
VALUES = generated(3000)


@dataclasses.dataclass
class Result:
    """What a backfill left: store dump, samples, dead letters (order kept)."""

    store: dict[int, object]
    samples: dict[tuple[int, int], tuple[bytes, bytes]]
    dead: list[tuple[int, int, str, bytes]]  # sorted
    sample_rows_in_file: int = 0


def log_of(tmp: Path, values: list[bytes] = VALUES) -> EventLogSource:
    return EventLogSource(expand_paths(str(write_jsonl(tmp / "events.jsonl", values))))


def backfill(
    source: Any,
    root: Path,
    out: Path,
    *,
    cfg: ReplayConfig | None = None,
    partitions: int = PARTS,
    stop: threading.Event | None = None,
    progress: Any = None,
    fail_on_flush: int | None = None,
) -> Any:
    m = Metrics(CollectorRegistry())
    bf = Backfill(
        source, root, partitions, STORE, WORKER, EventConfig(), cfg=cfg or ReplayConfig(), metrics=m
    )
    samples: Any = SampleFileWriter(out / "samples.lsb", sync=False, must_be_new=not bf.resuming)
    if fail_on_flush is not None:
        samples = CrashingSink(samples, fail_on_flush)
    dead = DeadLetterFile(out / "dead.jsonl", m, sync=False, must_be_new=not bf.resuming)
    try:
        return bf.run(samples, dead, stop=stop, progress=progress)
    finally:
        samples.close()
        dead.close()


class CrashingSink:
    """A sample sink that dies on its n-th flush: after the batch's samples are written,
    before its store commit (the worst moment)."""

    def __init__(self, inner: SampleFileWriter, n: int) -> None:
        self.inner, self.left = inner, n

    def write(self, block: Any) -> None:
        self.inner.write(block)

    def flush(self) -> None:
        self.inner.flush()
        self.left -= 1
        if self.left == 0:
            raise RuntimeError("crash")

    def close(self) -> None:
        self.inner.close()


def result(root: Path, out: Path) -> Result:
    blocks = list(iter_sample_file(out / "samples.lsb"))
    dead = [
        (int(d["partition"]), int(d["offset"]), str(d["reason"]), bytes(d["value"]))  # type: ignore[arg-type]
        for d in read_deadletter_file(out / "dead.jsonl")
    ]
    # the file is in batch order; each partition's dead letters are in offset order
    for p in range(PARTS):
        offsets = [o for q, o, *_ in dead if q == p]
        assert offsets == sorted(offsets)
    return Result(dump_store(root, PARTS), sample_rows(blocks), sorted(dead), sum(map(len, blocks)))


REFERENCE: dict[str, Result] = {}


def reference(tmp_path_factory: pytest.TempPathFactory) -> Result:
    """One uninterrupted backfill of VALUES."""
    if "ref" not in REFERENCE:
        tmp = tmp_path_factory.mktemp("reference")
        stats = backfill(log_of(tmp), tmp / "store", tmp)
        assert stats.complete
        REFERENCE["ref"] = result(tmp / "store", tmp)
    return REFERENCE["ref"]


# -- the partitioning rule ---------------------------------------------------------------


def test_partition_of_is_kafkas_default_partitioner() -> None:
    # Utils.murmur2 of the Java client (its UtilsTest vectors), then toPositive % n; the
    # producer's librdkafka murmur2_random agrees (tests/streams/kafka/test_kafka.py)
    java = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, h in java.items():
        for n in (1, 4, 7):
            assert partition_of(key, b"ignored", n) == (h & 0x7FFFFFFF) % n
    assert partition_of(None, b"abc", 4) == (479470107 & 0x7FFFFFFF) % 4  # keyless: the bytes


# -- the processor over a log ------------------------------------------------------------


def test_backfill_equals_each_partition_in_one_batch(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Partitioning + synthetic offsets + batching: the processor fed by hand agrees."""
    ref = reference(tmp_path_factory)
    assert ref.samples
    reasons = {reason for *_, reason, _ in ref.dead}
    assert "duplicate" in reasons
    assert len(reasons) >= 4
    assert ref.sample_rows_in_file == len(ref.samples)
    m = Metrics(CollectorRegistry())
    samples, dead = [], []
    for p in range(PARTS):
        mine = [v for v in VALUES if partition_of(user_key_of(v), v, PARTS) == p]
        proc = open_processor(tmp_path, p, STORE, WORKER, EventConfig(), m)
        res = proc.process(list(range(len(mine))), [user_key_of(v) for v in mine], mine)
        proc.commit()
        proc.close()
        if res.samples is not None:
            samples.append(res.samples)
        dead += [(p, d.offset, d.reason, d.value) for d in res.dead_letters]
    assert dump_store(tmp_path, PARTS) == ref.store
    assert sample_rows(samples) == ref.samples
    assert sorted(dead) == sorted(ref.dead)


def user_key_of(value: bytes) -> bytes | None:
    from streams.replay.base import user_key

    return user_key(value)


@pytest.mark.parametrize(
    ("crash_at", "every"),
    [(3, 10_000_000), (9, 500), (15, 700), (60, 41)],
    ids=["no-hint", "hint-500", "hint-700", "hint-41"],
)
def test_a_crash_then_resume_gives_the_uninterrupted_result(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, crash_at: int, every: int
) -> None:
    ref = reference(tmp_path_factory)
    src = log_of(tmp_path)
    cfg = ReplayConfig(checkpoint_every=every, checkpoint_s=1e9)
    with pytest.raises(RuntimeError, match="crash"):
        backfill(src, tmp_path / "store", tmp_path, cfg=cfg, fail_on_flush=crash_at)
    manifest = read_json(tmp_path / "store" / MANIFEST)
    assert manifest is not None
    assert not manifest["complete"]
    stats = backfill(log_of(tmp_path), tmp_path / "store", tmp_path, cfg=cfg)
    assert stats.complete
    assert stats.resumed
    assert stats.skipped > 0
    got = result(tmp_path / "store", tmp_path)
    assert got.store == ref.store
    assert got.samples == ref.samples
    assert got.sample_rows_in_file == len(ref.samples)  # no repeats in the file
    assert got.dead == ref.dead


def test_stop_leaves_a_resume_point_and_a_rerun_is_a_no_op(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ref = reference(tmp_path_factory)
    stop = threading.Event()

    def progress(done: int) -> None:
        if done > 1000:
            stop.set()

    cfg = ReplayConfig(checkpoint_every=256)
    first = backfill(
        log_of(tmp_path), tmp_path / "store", tmp_path, cfg=cfg, stop=stop, progress=progress
    )
    assert not first.complete
    assert 1000 < first.read < len(VALUES)
    second = backfill(log_of(tmp_path), tmp_path / "store", tmp_path, cfg=cfg)
    assert second.complete
    assert second.skipped == first.read  # the resume point: nothing re-read
    assert first.applied + second.applied == sum(
        s[1]["counters"].get("applied", 0)  # type: ignore[index]
        for s in ref.store.values()
    )
    third = backfill(log_of(tmp_path), tmp_path / "store", tmp_path, cfg=cfg)
    assert third.complete
    assert (third.read, third.applied) == (0, 0)
    got = result(tmp_path / "store", tmp_path)
    assert (got.store, got.samples, got.dead) == (ref.store, ref.samples, ref.dead)


def test_a_store_of_another_source_or_layout_is_refused(tmp_path: Path) -> None:
    src = log_of(tmp_path, VALUES[:200])
    assert backfill(src, tmp_path / "store", tmp_path).complete
    other = tmp_path / "other"
    other.mkdir()
    other_src = log_of(other, VALUES[:201])
    with pytest.raises(ReplayError, match="another source"):
        backfill(other_src, tmp_path / "store", other)
    with pytest.raises(ReplayError, match="with 4 partitions, not 3"):
        backfill(src, tmp_path / "store", other, partitions=3)
    live = tmp_path / "live"
    PartitionStore(live, 0, STORE).close()  # a worker's store: no manifest
    with pytest.raises(ReplayError, match="not a backfill store"):
        backfill(src, live, other)


def test_run_backfill_to_files_needs_no_cluster(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ref = reference(tmp_path_factory)
    log_file = write_jsonl(tmp_path / "events.jsonl", VALUES)

    def connect() -> Any:
        raise AssertionError("a backfill to files reaches no cluster")

    def run(partitions: int = PARTS) -> Any:
        return run_backfill(
            str(log_file),
            tmp_path / "store",
            partitions,
            store=STORE,
            worker=WORKER,
            events=EventConfig(),
            kafka=KafkaConfig(),
            connect=connect,
            samples_out=tmp_path / "samples.lsb",
            deadletters_out=tmp_path / "dead.jsonl",
            metrics=Metrics(CollectorRegistry()),
        )

    with pytest.raises(ReplayError, match="--partitions must be >= 1"):
        run(0)
    stats = run()
    assert stats.complete
    assert result(tmp_path / "store", tmp_path) == ref
    assert stats.output == (
        f"store {tmp_path / 'store'}, samples {tmp_path / 'samples.lsb'}, "
        f"dead letters {tmp_path / 'dead.jsonl'}"
    )
    assert f"output: {stats.output}" in stats.summary()
    again = run()  # complete: nothing left to read
    assert (again.complete, again.read, again.skipped) == (True, 0, stats.read)


def test_bad_lines_are_dead_lettered_with_their_line(tmp_path: Path) -> None:
    good = [event(f"e{i}", i % 3, i, "click", T0 + i) for i in range(6)]
    lines = [good[0], b"\x00\x01garbage", good[1], b"", good[2], b'{"user_id": "1", "x": 1}']
    lines += good[3:]
    src = log_of(tmp_path, lines)
    stats = backfill(src, tmp_path / "store", tmp_path)
    assert (stats.applied, stats.rejected) == (6, 2)
    dead = {d["source"]["offset"]: d for d in read_deadletter_file(tmp_path / "dead.jsonl")}  # type: ignore[index]
    assert sorted(dead) == [2, 6]  # physical line numbers
    assert dead[2]["reason"] == "malformed_json"
    assert dead[2]["value"] == b"\x00\x01garbage"
    assert dead[2]["key"] is None
    assert dead[6]["key"] == b"1"
    assert str(dead[6]["source"]["topic"]).endswith("events.jsonl")  # type: ignore[index]


# -- against the live worker and a Kafka source --------------------------------------------


@pytest.mark.integration
def test_backfill_equals_the_live_worker_on_the_same_events(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, kafka_cfg: KafkaConfig, broker: Any
) -> None:
    """One code path, two sources: log -> backfill == log -> lum.events -> StreamWorker."""
    ref = reference(tmp_path_factory)
    m = Metrics(CollectorRegistry())
    stats = replay_produce(
        log_of(tmp_path), kafka_cfg, broker.bootstrap, tmp_path / "ck.json", metrics=m
    )
    assert stats.produced == len(VALUES)
    worker_cfg = dataclasses.replace(WORKER, batch_max=1000, group_id=f"g-{uuid.uuid4().hex}")
    live = StreamWorker(
        kafka_cfg, STORE, worker_cfg, EventConfig(), broker.bootstrap, tmp_path / "live", m
    )
    live.run(threading.Event(), idle_exit_s=2)
    assert live.stats.applied + live.stats.dead_letters == len(VALUES)
    assert dump_store(tmp_path / "live", PARTS) == ref.store
    blocks = [
        decode_block(r.value)
        for r in read_topic(kafka_cfg, broker.bootstrap, kafka_cfg.topic_samples)
    ]
    assert sample_rows(blocks) == ref.samples
    dead = [
        (d.source.partition, d.source.offset, d.reason, d.value)
        for d in read_deadletters(kafka_cfg, broker.bootstrap)
        if d.source is not None
    ]
    assert sorted(dead) == sorted(ref.dead)


@pytest.mark.integration
def test_backfill_from_a_kafka_topic_to_kafka_equals_the_file_backfill(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, kafka_cfg: KafkaConfig, broker: Any
) -> None:
    ref = reference(tmp_path_factory)
    m = Metrics(CollectorRegistry())
    replay_produce(log_of(tmp_path), kafka_cfg, broker.bootstrap, tmp_path / "ck.json", metrics=m)
    out_cfg = with_topics(kafka_cfg, ".out")
    ensure_topics(out_cfg, broker.bootstrap)
    source = KafkaRangeSource(kafka_cfg, broker.bootstrap, kafka_cfg.topic_events)
    bf = Backfill(source, tmp_path / "store", PARTS, STORE, WORKER, EventConfig(), metrics=m)
    with Producer(out_cfg, broker.bootstrap, metrics=m) as producer:
        samples = KafkaSampleSink(producer, out_cfg.topic_samples)
        dead = KafkaDeadLetterSink(DeadLetterWriter.from_config(producer, out_cfg, m))
        assert bf.run(samples, dead).complete
    assert read_json(tmp_path / "store" / MANIFEST)["source"]["kind"] == "kafka"  # type: ignore[index]
    assert dump_store(tmp_path / "store", PARTS) == ref.store
    blocks = [
        decode_block(r.value) for r in read_topic(out_cfg, broker.bootstrap, out_cfg.topic_samples)
    ]
    assert sample_rows(blocks) == ref.samples
    letters = read_deadletters(out_cfg, broker.bootstrap)
    assert {d.stage for d in letters} == {"backfill"}
    # the origin of a dead letter is its record in the source topic, which holds those bytes
    topic = {
        (r.partition, r.offset): r.value
        for r in read_topic(kafka_cfg, broker.bootstrap, kafka_cfg.topic_events)
    }
    assert len(letters) == len(ref.dead)
    for d in letters:
        assert d.source is not None
        assert d.source.topic == kafka_cfg.topic_events
        assert topic[(d.source.partition, d.source.offset)] == d.value
