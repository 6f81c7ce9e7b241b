"""The served-impressions log against the real embedded broker: what reaches lum.events,
how a Kafka outage is survived and counted, the spool bound, torn tails, one process per
spool."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from monitoring.metrics import Metrics
from serving.loop_config import ServedLogConfig
from serving.served_log import ServedList, ServedLog, ServedLogError, spool_path
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.contracts.events import decode, encode, event_key
from streams.kafka.consumer import read_topic

pytestmark = pytest.mark.integration

FAST = ServedLogConfig(ship_interval_s=0.01, retry_s=0.05, ack_timeout_s=5.0, drain_s=2.0)


def events_on(kafka: KafkaConfig) -> list[dict[str, object]]:
    records = read_topic(kafka, kafka.bootstrap_servers, kafka.topic_events, timeout_s=10)
    return [orjson.loads(r.value) for r in records]


def lists(n: int, start: int = 0, items: int = 3) -> list[ServedList]:
    return [
        ServedList(
            request_id=f"req-{i}",
            user_id=f"u{i % 5}",
            condition="Comedy",
            items=[f"i{i}-{p}" for p in range(items)],
            categories=["Comedy"] * items,
            ranker_version="r7",
            backbone_version="v2",
        )
        for i in range(start, start + n)
    ]


def open_log(
    root: Path, kafka: KafkaConfig, metrics: Metrics, cfg: ServedLogConfig = FAST
) -> ServedLog:
    return ServedLog(cfg, root, kafka, kafka.bootstrap_servers, EventConfig(), metrics=metrics)


def dead_kafka() -> KafkaConfig:
    """A cluster address nothing listens on, with a short timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return KafkaConfig(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=300)


def test_served_lists_become_impression_events(
    tmp_path: Path, kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    with open_log(tmp_path, kafka_cfg, metrics) as served:
        for lst in lists(20):
            assert served.log(lst)
        assert served.wait_shipped(20)
        assert served.backlog == (0, 0)
    got = events_on(kafka_cfg)
    assert len(got) == 60
    by_id = {e["event_id"]: e for e in got}
    e = by_id["req-4:2"]
    assert e["user_id"] == "u4"
    assert e["item_id"] == "i4-2"
    assert e["action"] == "impression"
    assert e["condition"] == "Comedy"
    assert e["features"] == {
        "request_id": "req-4",
        "position": 2,
        "randomized": False,
        "ranker_version": "r7",
        "backbone_version": "v2",
        "category": "Comedy",
    }
    records = read_topic(kafka_cfg, kafka_cfg.bootstrap_servers, kafka_cfg.topic_events)
    for r in records:  # the contract's own canonical bytes, keyed by user
        ev = decode(r.value, EventConfig())
        assert r.value == encode(ev)
        assert r.key == event_key(ev)
    value = metrics.registry.get_sample_value
    assert value("lumstream_served_log_lists_total", {"outcome": "spooled"}) == 20
    assert value("lumstream_served_log_events_shipped_total") == 60
    assert value("lumstream_served_log_backlog_lists") == 0
    assert value("lumstream_served_log_kafka_up") == 1
    assert (
        value(
            "lumstream_events_produced_total", {"topic": kafka_cfg.topic_events, "source": "served"}
        )
        == 60
    )


def test_kafka_down_keeps_accepting_counts_and_ships_after_restart(
    tmp_path: Path, kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    down = dead_kafka()
    cfg = ServedLogConfig(ship_interval_s=0.01, retry_s=0.05, drain_s=0.0)
    served = ServedLog(cfg, tmp_path, down, down.bootstrap_servers, EventConfig(), metrics=metrics)
    try:
        for lst in lists(30):
            assert served.log(lst)  # never blocks on Kafka
        assert not served.wait_shipped(1.0)
        assert served.backlog[0] == 30
    finally:
        served.close()
    value = metrics.registry.get_sample_value
    assert value("lumstream_served_log_ship_failures_total") >= 1
    assert value("lumstream_served_log_kafka_up") == 0
    assert value("lumstream_served_log_backlog_lists") == 30
    # the service comes back with Kafka reachable: the spool ships
    fresh = Metrics(metrics.registry.__class__())
    with open_log(tmp_path, kafka_cfg, fresh) as served:
        assert served.backlog[0] == 30
        served.log(lists(1, start=30)[0])
        assert served.wait_shipped(20)
    ids = [e["event_id"] for e in events_on(kafka_cfg)]
    assert sorted(ids) == sorted(f"req-{i}:{p}" for i in range(31) for p in range(3))


def test_a_full_spool_drops_and_counts(tmp_path: Path, metrics: Metrics) -> None:
    down = dead_kafka()
    cfg = ServedLogConfig(spool_max_bytes=2048, retry_s=0.05, drain_s=0.0)
    with ServedLog(
        cfg, tmp_path, down, down.bootstrap_servers, EventConfig(), metrics=metrics
    ) as s:
        results = [s.log(lst) for lst in lists(40)]
        lists_in, bytes_in = s.backlog
    assert results.count(False) > 0
    assert results[:lists_in] == [True] * lists_in  # accepted until full, then dropped
    assert bytes_in <= 2048
    value = metrics.registry.get_sample_value
    dropped = value("lumstream_served_log_lists_total", {"outcome": "dropped_spool_full"})
    assert dropped == results.count(False) == 40 - lists_in


def test_segments_roll_and_shipped_ones_are_deleted(
    tmp_path: Path, kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    cfg = ServedLogConfig(segment_bytes=1024, ship_batch_bytes=1024, ship_interval_s=0.01)
    with open_log(tmp_path, kafka_cfg, metrics, cfg) as served:
        for lst in lists(60):
            served.log(lst)
        assert served.wait_shipped(20)
        served.log(lists(1, start=60)[0])  # rolls once more: older segments are complete
        assert served.wait_shipped(20)
        segments = sorted(p.name for p in tmp_path.glob("spool-*.jsonl"))
    assert len(segments) <= 2
    ids = {e["event_id"] for e in events_on(kafka_cfg)}
    assert len(ids) == 61 * 3


def test_a_torn_tail_is_cut_on_restart(
    tmp_path: Path, kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    down = dead_kafka()
    cfg = ServedLogConfig(drain_s=0.0, retry_s=0.05)
    with ServedLog(
        cfg, tmp_path, down, down.bootstrap_servers, EventConfig(), metrics=metrics
    ) as s:
        for lst in lists(3):
            s.log(lst)
    segment = sorted(tmp_path.glob("spool-*.jsonl"))[-1]
    with segment.open("ab") as fh:
        fh.write(b'{"request_id":"req-torn","user_id":"u1","cond')  # a crash mid-write
    with open_log(tmp_path, kafka_cfg, Metrics(metrics.registry.__class__())) as served:
        assert served.backlog[0] == 3
        assert served.wait_shipped(20)
    ids = sorted(e["event_id"] for e in events_on(kafka_cfg))
    assert ids == sorted(f"req-{i}:{p}" for i in range(3) for p in range(3))


def test_impressions_that_break_the_contract_are_counted_not_shipped(
    tmp_path: Path, kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    with open_log(tmp_path, kafka_cfg, metrics) as served:
        served.log(ServedList("r" * 200, "u1", "Comedy", ["a", "b"]))  # event id too long
        served.log(ServedList("ok", "u1", "Comedy", ["a", ""]))  # an empty item id
        assert served.wait_shipped(20)
    assert [e["event_id"] for e in events_on(kafka_cfg)] == ["ok:0"]
    assert metrics.registry.get_sample_value("lumstream_served_log_events_invalid_total") == 3


def test_odd_ids_take_the_precise_path_with_the_same_bytes(
    tmp_path: Path, kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    with open_log(tmp_path, kafka_cfg, metrics) as served:
        served.log(ServedList("é-1", "ü", "Komödie", ["ä", "b"], categories=["x", None]))
        with pytest.raises(ValueError, match="2 categories for 1 items"):
            served.log(ServedList("r", "u", "c", ["a"], categories=["x", "y"]))
        assert served.wait_shipped(20)
    records = read_topic(kafka_cfg, kafka_cfg.bootstrap_servers, kafka_cfg.topic_events)
    assert len(records) == 2
    for r in records:
        ev = decode(r.value, EventConfig())
        assert r.value == encode(ev)
    assert {orjson.loads(r.value)["event_id"] for r in records} == {"é-1:0", "é-1:1"}


def test_one_process_per_spool(tmp_path: Path, kafka_cfg: KafkaConfig, metrics: Metrics) -> None:
    with open_log(tmp_path, kafka_cfg, metrics), pytest.raises(ServedLogError, match="in use"):
        open_log(tmp_path, kafka_cfg, metrics)


def test_spool_paths(tmp_path: Path) -> None:
    host = socket.gethostname()
    assert spool_path(ServedLogConfig(), tmp_path, 2) == tmp_path / "served-spool" / f"{host}-w2"
    cfg = ServedLogConfig(spool_dir=str(tmp_path / "s"))
    assert spool_path(cfg, Path("ignored")) == tmp_path / "s" / f"{host}-w0"


def test_close_does_not_wait_for_a_stuck_connection(tmp_path: Path, metrics: Metrics) -> None:
    from streams.kafka.producer import ProduceError

    def stuck() -> Any:
        time.sleep(3.0)  # a cluster that does not answer within the request timeout
        raise ProduceError("cannot reach the cluster")

    cfg = ServedLogConfig(drain_s=0.0, ack_timeout_s=0.2)
    down = dead_kafka()
    log = ServedLog(
        cfg, tmp_path, down, "unused", EventConfig(), metrics=metrics, producer_factory=stuck
    )
    log.log(lists(1)[0])
    time.sleep(0.1)  # the shipper is now inside the factory
    t0 = time.monotonic()
    log.close()
    assert time.monotonic() - t0 < 2.0
    assert (tmp_path / "spool-000000000000.jsonl").stat().st_size > 0  # kept for next start


def test_a_list_acknowledged_but_not_recorded_is_resent_and_deduplicated(
    tmp_path: Path, kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    """The window the kill test hits by chance: Kafka has the events, the position is not
    yet saved. The round is repeated (a re-send); the worker drops the copies."""
    from streams.worker.processor import open_processor

    class LosesFirstPosition(ServedLog):
        failed = False

        def _save(self, segment: int, offset: int) -> None:
            if not self.failed and offset:
                self.failed = True
                raise OSError("disk hiccup after the acknowledgement")
            super()._save(segment, offset)

    with LosesFirstPosition(
        FAST,
        tmp_path / "spool",
        kafka_cfg,
        kafka_cfg.bootstrap_servers,
        EventConfig(),
        metrics=metrics,
    ) as served:
        for lst in lists(5):
            served.log(lst)
        assert served.wait_shipped(20)
        assert served.failed
    records = read_topic(kafka_cfg, kafka_cfg.bootstrap_servers, kafka_cfg.topic_events)
    ids = [orjson.loads(r.value)["event_id"] for r in records]
    assert set(ids) == {f"req-{i}:{p}" for i in range(5) for p in range(3)}
    assert len(ids) > len(set(ids))  # some were sent twice
    applied = dropped = 0
    for partition in {r.partition for r in records}:
        part = [r for r in records if r.partition == partition]
        proc = open_processor(
            tmp_path / "store",
            partition,
            StoreConfig(sync_writes=False),
            WorkerConfig(),
            EventConfig(),
            metrics,
        )
        try:
            res = proc.process(
                [r.offset for r in part], [r.key for r in part], [r.value for r in part]
            )
        finally:
            proc.close()
        applied += res.applied
        dropped += sum(d.reason == "duplicate" for d in res.dead_letters)
    assert applied == 15
    assert dropped == len(ids) - 15
