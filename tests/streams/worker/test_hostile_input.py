"""Hostile input through the real broker: sequences that once poisoned a partition or split
a user's state, each record's outcome asserted (applied, or dead-lettered with its reason).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.contracts.ids import stable_id
from streams.contracts.samples import decode_block
from streams.kafka.consumer import read_topic
from streams.kafka.producer import Producer
from streams.sinks.deadletters import read_deadletters
from streams.worker.confluent_engine import StreamWorker
from streams.worker.store import StoreReader

TEN_YEARS_MS = 10 * 365 * 86_400_000

# (key, value, record timestamp ms or None for the producer's clock)
Record = tuple[bytes, bytes, int | None]


def _event(event_id: str, user: str, item: str, action: str, ts: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "user_id": user,
            "item_id": item,
            "action": action,
            "condition": "c",
            "ts": ts,
        }
    )


def _produce(cfg: KafkaConfig, records: Sequence[Record], metrics: Metrics) -> None:
    with Producer(cfg, cfg.bootstrap_servers, metrics=metrics) as producer:
        for key, value, ts in records:
            producer.send(cfg.topic_events, key, value, timestamp_ms=ts)
            producer.flush()  # one at a time: the order on the partition is the send order


def _run_worker(cfg: KafkaConfig, root: Path, metrics: Metrics, n_records: int) -> None:
    worker = StreamWorker(
        cfg,
        StoreConfig(),
        WorkerConfig(group_id="hostile-" + uuid.uuid4().hex[:6], batch_max=4),
        EventConfig(),
        cfg.bootstrap_servers,
        root,
        metrics,
    )
    stop = threading.Event()

    def done(stats: Any) -> None:
        if stats.applied + stats.dead_letters + stats.skipped >= n_records:
            stop.set()

    timer = threading.Timer(60, stop.set)  # never hang the suite
    timer.start()
    try:
        worker.run(stop, on_batch=done)
    finally:
        timer.cancel()


def _samples(cfg: KafkaConfig) -> np.ndarray:
    blocks = [
        decode_block(r.value) for r in read_topic(cfg, cfg.bootstrap_servers, cfg.topic_samples)
    ]
    return np.concatenate([b.rows for b in blocks]) if blocks else np.empty(0)


@pytest.mark.integration
def test_one_far_future_event_cannot_poison_a_partition(
    kafka_cfg: KafkaConfig, metrics: Metrics, tmp_path: Path
) -> None:
    """Five impressions at T, a click at T+5 s, a click whose ts and record timestamp are
    both ten years ahead, an impression at T+10 s and its click at T+12 s, then an exact
    re-send of the T+5 s click (and one later impression that closes the label windows)."""
    now = int(time.time() * 1000)
    t0 = now - 3_600_000
    user = "p1"
    records: list[Record] = [
        (user.encode(), _event(f"imp-{i}", user, f"i{i}", "impression", t0), None) for i in range(5)
    ]
    click = _event("click-5s", user, "i0", "click", t0 + 5_000)
    poison = _event("poison", user, "i9", "click", now + TEN_YEARS_MS)
    records += [
        (user.encode(), click, None),
        (user.encode(), poison, now + TEN_YEARS_MS),
        (user.encode(), _event("imp-10s", user, "i5", "impression", t0 + 10_000), None),
        (user.encode(), _event("click-12s", user, "i5", "click", t0 + 12_000), None),
        (user.encode(), click, None),  # the exact re-send
        (user.encode(), _event("imp-200s", user, "i6", "impression", t0 + 200_000), None),
    ]
    _produce(kafka_cfg, records, metrics)
    _run_worker(kafka_cfg, tmp_path / "store", metrics, len(records))

    dead = {d.value: d.reason for d in read_deadletters(kafka_cfg, kafka_cfg.bootstrap_servers)}
    assert dead == {poison: "ts_out_of_range", click: "duplicate"}
    rows = _samples(kafka_cfg)
    labels = {int(r["item"]): int(r["label"]) for r in rows}
    expected = {stable_id(f"i{i}"): 0 for i in range(1, 5)}
    expected[stable_id("i0")] = 1  # clicked at T+5 s
    expected[stable_id("i5")] = 1  # clicked at T+12 s, not cut off by a jumped watermark
    assert labels == expected
    assert len(rows) == 6  # the T+200 s impression is still inside its window
    reader = StoreReader(tmp_path / "store", StoreConfig(), tmp_path / "reader")
    try:
        (state,) = [s for s in reader.states().values() if s.next_offset]
        assert state.watermark == t0 + 200_000  # not ten years ahead
        seq = reader.sequence(stable_id(user))
        assert seq["item"].tolist() == [stable_id("i0"), stable_id("i5")]  # each click once
    finally:
        reader.close()


@pytest.mark.integration
def test_a_user_id_with_leading_zeros_is_another_user_in_one_partition(
    kafka_cfg: KafkaConfig, metrics: Metrics, tmp_path: Path
) -> None:
    t0 = int(time.time() * 1000) - 3_600_000
    users = ["900000001", "0900000001"]
    records: list[Record] = [
        (u.encode(), _event(f"e{k}-{u}", u, f"i{k}", "click", t0 + k), None)
        for k in range(6)
        for u in users
    ]
    _produce(kafka_cfg, records, metrics)
    _run_worker(kafka_cfg, tmp_path / "store", metrics, len(records))
    reader = StoreReader(tmp_path / "store", StoreConfig(), tmp_path / "reader")
    try:
        ids = [stable_id(u) for u in users]
        assert len(set(ids)) == 2
        found = dict(reader.sequences())
        assert sorted(found) == sorted(ids)  # one entry each: no id split over partitions
        for i in ids:
            meta = reader.meta(i)
            assert meta is not None
            assert meta[1][0] == 6  # all six clicks in one partition's sequence
    finally:
        reader.close()


@pytest.mark.integration
def test_records_at_the_edges_of_the_contract(
    kafka_cfg: KafkaConfig, metrics: Metrics, tmp_path: Path
) -> None:
    """A tombstone, a huge key, a BOM, an id beyond 64 bits, a record timestamp ten years
    ahead: each applied, or dead-lettered with its reason, and nothing crashes (a record
    without a timestamp: test_processor, librdkafka stamps every record it sends)."""
    from confluent_kafka import Producer as RawProducer

    t0 = int(time.time() * 1000) - 3_600_000
    big = 123456789012345678901  # 21 digits: a JSON integer id beyond 2**64
    bom = b"\xef\xbb\xbf" + _event("bom", "b1", "i1", "click", t0)
    big_id = _event("big", "x", "i2", "click", t0 + 1).replace(b'"x"', str(big).encode())
    huge_key = b"k" * 200_000
    records: list[Record] = [
        (b"b1", bom, None),
        (str(big).encode(), big_id, None),
        (huge_key, _event("hk", "h1", "i3", "click", t0 + 2), None),
        (b"s1", _event("skew", "s1", "i4", "click", t0 + 3), t0 + TEN_YEARS_MS),
    ]
    _produce(kafka_cfg, records, metrics)
    raw = RawProducer({"bootstrap.servers": kafka_cfg.bootstrap_servers})
    raw.produce(kafka_cfg.topic_events, key=b"t1", value=None)  # a tombstone
    assert raw.flush(30) == 0
    _run_worker(kafka_cfg, tmp_path / "store", metrics, len(records) + 1)

    dead = [
        (d.key, d.value, d.reason) for d in read_deadletters(kafka_cfg, kafka_cfg.bootstrap_servers)
    ]
    assert dead == [(b"t1", b"", "malformed_json")]
    reader = StoreReader(tmp_path / "store", StoreConfig(), tmp_path / "reader")
    try:
        for user, item in (
            ("b1", "i1"),
            (str(big), "i2"),
            ("h1", "i3"),
            ("s1", "i4"),
        ):
            seq = reader.sequence(stable_id(user))
            assert seq["item"].tolist() == [stable_id(item)], user
    finally:
        reader.close()
