"""Producing and consuming against the real embedded broker: keys, order, metrics, errors."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.kafka_faults import ProxiedBroker

from monitoring.metrics import Metrics
from streams.config import BrokerConfig, EventConfig, KafkaConfig
from streams.contracts.events import Event, decode, encode, event_key
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.cluster import bootstrap_servers
from streams.kafka.consumer import end_offsets, make_consumer, read_topic
from streams.kafka.producer import ProduceError, make_producer
from streams.kafka.topics import ensure_topics
from streams.sinks.events import KafkaEventSink

T0 = 1_767_225_600_000


def _events(users: int, per_user: int) -> list[Event]:
    """Interleaved events: user u's k-th event has ts T0 + k and item str(k)."""
    return [
        Event(
            f"e-{u}-{k}",
            f"user-{u}",
            str(k),
            "impression",
            f"cat-{u % 3}",
            T0 + k,
            {"category": f"cat-{u % 3}"},
        )
        for k in range(per_user)
        for u in range(users)
    ]


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.integration
def test_round_trip_keys_partitions_and_order(kafka_cfg: KafkaConfig, metrics: Metrics) -> None:
    events = _events(users=40, per_user=25)
    bootstrap = kafka_cfg.bootstrap_servers
    with make_producer(kafka_cfg, bootstrap, metrics=metrics) as producer:
        sink = KafkaEventSink(producer, kafka_cfg.topic_events, source="test")
        for ev in events:
            sink.write(ev)
        sink.flush()
        assert sink.count == len(events)
    records = read_topic(kafka_cfg, bootstrap, kafka_cfg.topic_events)
    assert len(records) == len(events)
    partitions: dict[bytes, set[int]] = defaultdict(set)
    seen: dict[str, list[int]] = defaultdict(list)
    for rec in records:  # sorted by (partition, offset)
        ev = decode(rec.value, EventConfig(), now_ms=T0)
        assert rec.key == event_key(ev) == ev.user_id.encode()
        partitions[rec.key].add(rec.partition)
        seen[ev.user_id].append(ev.ts)
    assert all(len(p) == 1 for p in partitions.values())  # one user, one partition
    assert len({p for ps in partitions.values() for p in ps}) > 1  # users are spread
    assert all(ts == sorted(ts) and len(ts) == 25 for ts in seen.values())  # order per key
    assert {r.value for r in records} == {encode(ev) for ev in events}
    produced = _sample(
        metrics, "lumstream_events_produced_total", topic=kafka_cfg.topic_events, source="test"
    )
    assert produced == len(events)


@pytest.mark.integration
def test_threads_sharing_a_producer_keep_each_keys_order_and_count_exactly(
    kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    """The worker's sinks, or a tool's threads, share one producer: each key's records
    arrive in send order, and every delivered record is counted once."""
    bootstrap = kafka_cfg.bootstrap_servers
    topic, n, threads = kafka_cfg.topic_samples, 6_000, 4
    with make_producer(kafka_cfg, bootstrap, metrics=metrics) as producer:

        def run(t: int) -> None:
            key = b"t%d" % t
            for i in range(0, n, 500):
                if t % 2:
                    producer.send_many(
                        topic, [(key, b"%d" % j) for j in range(i, i + 500)], source="test"
                    )
                else:
                    for j in range(i, i + 500):
                        producer.send(topic, key, b"%d" % j, source="test")
                if i % 2000 == 0:
                    producer.flush()

        workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    landed: dict[bytes, list[int]] = defaultdict(list)
    for rec in read_topic(kafka_cfg, bootstrap, topic, timeout_s=30):
        landed[rec.key].append(int(rec.value))
    assert {k: v == list(range(n)) for k, v in landed.items()} == {
        b"t%d" % t: True for t in range(threads)
    }
    assert _sample(metrics, "lumstream_events_produced_total", topic=topic, source="test") == (
        n * threads
    )


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["swallow", "drop_answer"])
def test_a_lost_request_or_answer_loses_nothing_behind_a_high_water_mark(
    fault: str, tmp_path: Path
) -> None:
    """A Produce request lost on the way (retried after the socket timeout) or whose
    answer is lost (written, then retried: a duplicate) must not let a later record of
    the key land before it: the trainer drops a sample block whose seq is at or below its
    high-water mark, so a reordered record is a lost one."""
    lost = {3}
    with ProxiedBroker(**{fault: lost}, log_dir=tmp_path) as broker:
        cfg = KafkaConfig(bootstrap_servers=broker.bootstrap, partitions=1, request_timeout_ms=2000)
        ensure_topics(cfg, broker.bootstrap)
        n = 3_000
        metrics = Metrics(CollectorRegistry())
        # small batches: several requests, the lost one with others queued behind it
        with make_producer(cfg, broker.bootstrap, metrics=metrics, batch_num_messages=100) as p:
            for i in range(n):
                p.send(cfg.topic_samples, b"user", b"%d" % i, source="test")
                if i % 100 == 99:
                    time.sleep(0.002)  # let requests go out one by one
        assert broker.proxy.lost, "the fault was not injected"
        landed = [int(r.value) for r in read_topic(cfg, broker.bootstrap, cfg.topic_samples)]
    kept, high = [], -1
    for v in landed:  # what a high-water-mark consumer keeps
        if v > high:
            kept.append(v)
            high = v
    assert kept == list(range(n))
    assert (len(landed) > n) == (fault == "drop_answer")  # a retried written batch: a copy
    assert (
        _sample(metrics, "lumstream_events_produced_total", topic=cfg.topic_samples, source="test")
        == n
    )


@pytest.mark.integration
def test_partitions_agree_with_the_java_partitioner(
    kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    from kafka.partitioner.default import murmur2  # kafka-python's, not the one we use

    pairs = [(f"u{i}".encode(), b"v") for i in range(200)]
    with make_producer(kafka_cfg, kafka_cfg.bootstrap_servers, metrics=metrics) as producer:
        assert producer.send_many(kafka_cfg.topic_events, pairs, source="test") == 200
    records = read_topic(kafka_cfg, kafka_cfg.bootstrap_servers, kafka_cfg.topic_events)
    ends = end_offsets(kafka_cfg, kafka_cfg.bootstrap_servers, kafka_cfg.topic_events)
    assert ends == Counter(r.partition for r in records)  # true ends despite tansu's ListOffsets
    # the Java client: toPositive(murmur2(key)) % partitions
    expected = {k: (murmur2(k) & 0x7FFFFFFF) % kafka_cfg.partitions for k, _ in pairs}
    assert {r.key: r.partition for r in records} == expected


@pytest.mark.integration
def test_headers_and_linger_without_flush(kafka_cfg: KafkaConfig, metrics: Metrics) -> None:
    with make_producer(kafka_cfg, kafka_cfg.bootstrap_servers, metrics=metrics) as producer:
        producer.send(kafka_cfg.topic_samples, None, b"\xff raw", (("h1", b"a"), ("h2", b"\x00")))
        records: list = []
        deadline = time.monotonic() + 10
        while not records and time.monotonic() < deadline:  # the linger timer hands it off
            records = read_topic(kafka_cfg, kafka_cfg.bootstrap_servers, kafka_cfg.topic_samples)
    assert [(r.key, r.value, list(r.headers)) for r in records] == [
        (None, b"\xff raw", [("h1", b"a"), ("h2", b"\x00")])
    ]
    # raw records carry no source: they are not counted as produced events
    assert (
        _sample(
            metrics, "lumstream_events_produced_total", topic=kafka_cfg.topic_samples, source="test"
        )
        == 0
    )


@pytest.mark.integration
def test_oversized_record_is_refused_and_counted(kafka_cfg: KafkaConfig, metrics: Metrics) -> None:
    topic, big = kafka_cfg.topic_events, b"x" * (kafka_cfg.max_message_bytes + 1)
    with make_producer(kafka_cfg, kafka_cfg.bootstrap_servers, metrics=metrics) as producer:
        with pytest.raises(ProduceError, match=r"exceeds kafka\.max_message_bytes=1048576"):
            producer.send(topic, b"k", big)
        with pytest.raises(ProduceError):  # the pairs before the bad one still go out
            producer.send_many(topic, [(b"a", b"1"), (b"b", big), (b"c", b"3")])
    assert [r.value for r in read_topic(kafka_cfg, kafka_cfg.bootstrap_servers, topic)] == [b"1"]
    assert _sample(metrics, "lumstream_produce_errors_total", topic=topic) == 2


@pytest.mark.integration
def test_delivery_failure_is_counted_and_raised_by_flush() -> None:
    metrics = Metrics(CollectorRegistry())
    with EmbeddedBroker(BrokerConfig(), metrics=metrics) as broker:
        cfg = KafkaConfig(bootstrap_servers=broker.bootstrap, partitions=1, request_timeout_ms=1000)
        ensure_topics(cfg, broker.bootstrap)
        producer = make_producer(cfg, broker.bootstrap, metrics=metrics, retry_backoff_ms=50)
        producer.send(cfg.topic_events, b"k", b"before", source="test")
        producer.flush()
    try:  # the broker is gone now
        producer.send(cfg.topic_events, b"k", b"after", source="test")
        with pytest.raises(ProduceError, match="1 record"):
            producer.flush(timeout_s=30)
    finally:
        producer.close(timeout_s=30)  # the failure was reported by flush; nothing left
    assert _sample(metrics, "lumstream_produce_errors_total", topic=cfg.topic_events) == 1
    assert (
        _sample(metrics, "lumstream_events_produced_total", topic=cfg.topic_events, source="test")
        == 1
    )


@pytest.mark.integration
def test_consumer_group_joins_and_commits(kafka_cfg: KafkaConfig) -> None:
    bootstrap = kafka_cfg.bootstrap_servers
    with make_producer(kafka_cfg, bootstrap, metrics=Metrics(CollectorRegistry())) as producer:
        producer.send_many(kafka_cfg.topic_events, [(b"k%d" % i, b"v") for i in range(50)])
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = make_consumer(kafka_cfg, bootstrap, kafka_cfg.topic_events, group_id=group)
    try:
        got = 0
        deadline = time.monotonic() + 30
        while got < 50 and time.monotonic() < deadline:
            got += sum(len(r) for r in consumer.poll(timeout_ms=200).values())
        assert got == 50
        consumer.commit()
        committed = {tp.partition: consumer.committed(tp) for tp in consumer.assignment()}
        assert sum(v or 0 for v in committed.values()) >= 4  # every partition has a position
    finally:
        consumer.close()


def test_external_bootstrap_is_passed_through() -> None:
    cfg = KafkaConfig(bootstrap_servers="kafka-1:9092,kafka-2:9092")
    with bootstrap_servers(cfg, BrokerConfig(tansu_bin="/nonexistent")) as bootstrap:
        assert bootstrap == "kafka-1:9092,kafka-2:9092"


@pytest.mark.integration
def test_empty_bootstrap_starts_and_stops_an_embedded_broker(metrics: Metrics) -> None:
    with bootstrap_servers(KafkaConfig(), BrokerConfig(), metrics=metrics) as bootstrap:
        assert bootstrap.startswith("127.0.0.1:")
        assert metrics.registry.get_sample_value("lumstream_embedded_broker_up") == 1
    assert metrics.registry.get_sample_value("lumstream_embedded_broker_up") == 0


def test_with_topics_renames_every_topic() -> None:
    from streams.kafka.topics import with_topics

    cfg = with_topics(KafkaConfig(), ".x")
    names = [f.name for f in dataclasses.fields(cfg) if f.name.startswith("topic_")]
    assert all(getattr(cfg, n).endswith(".x") for n in names)
    assert len(names) == 4  # events, samples, deadletter, model_updates
