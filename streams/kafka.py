"""Kafka client helpers: the bootstrap address, producer factory, event sink, consumers.

Producing goes through :class:`streams.producer.Producer` (aiokafka's batch API behind a
synchronous facade; see that module for why). Consumers for tools and tests use
kafka-python (:func:`make_consumer`, :func:`read_topic`) with :func:`consumer_options`; the
hot consumers (the stream worker, the ranker's sample source) use confluent-kafka, whose
librdkafka fetches and decodes in C threads, with :func:`librdkafka_consumer_config`.

Example:
    >>> with bootstrap_servers(cfg.kafka, cfg.broker) as bootstrap:  # doctest: +SKIP
    ...     with make_producer(cfg.kafka, bootstrap) as producer:
    ...         sink = KafkaEventSink(producer, cfg.kafka.topic_events, source="demo")
    ...         sink.write(event)
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from monitoring.metrics import Metrics
from streams.config import BrokerConfig, KafkaConfig
from streams.events import Event, encode, event_key
from streams.producer import Header, ProduceError, Producer

__all__ = [
    "Header",
    "KafkaEventSink",
    "ProduceError",
    "Producer",
    "bootstrap_servers",
    "consumer_options",
    "end_offsets",
    "librdkafka_consumer_config",
    "make_consumer",
    "make_producer",
    "produce_raw",
    "read_topic",
    "with_topics",
]


@contextlib.contextmanager
def bootstrap_servers(
    kafka: KafkaConfig,
    broker: BrokerConfig,
    *,
    metrics: Metrics | None = None,
    log_dir: Path | None = None,
    run_file: Path | None = None,
) -> Iterator[str]:
    """The cluster to talk to, for the duration of the ``with`` block.

    ``kafka.bootstrap_servers`` when set (an external cluster); else the broker recorded in
    ``run_file`` by a running ``lumstream broker`` when it answers; else an
    :class:`~streams.broker.EmbeddedBroker` started here and stopped on exit.
    """
    if kafka.bootstrap_servers:
        yield kafka.bootstrap_servers
        return
    from streams.broker import EmbeddedBroker, running_broker

    found = running_broker(run_file) if run_file is not None else None
    if found is not None:
        yield found
        return
    with EmbeddedBroker(broker, metrics=metrics, log_dir=log_dir) as embedded:
        yield embedded.bootstrap


def make_producer(
    cfg: KafkaConfig, bootstrap: str, *, metrics: Metrics | None = None, **overrides: Any
) -> Producer:
    """A started :class:`Producer` (acks=all, batched, uncompressed); caller closes it.

    Compression is off: on loopback it only costs CPU, and lz4/zstd/snappy need the
    ``cramjam`` package, which lumstream does not install.

    Args:
        overrides: aiokafka producer options, e.g. ``enable_idempotence=True`` for a real
            Kafka cluster (tansu 0.6.0 rejects InitProducerId from aiokafka) or
            ``compression_type="gzip"`` (lz4/zstd/snappy need the ``cramjam`` package).
    """
    return Producer(cfg, bootstrap, metrics=metrics, **overrides)


def produce_raw(
    producer: Producer, topic: str, key: bytes | None, value: bytes, headers: Iterable[Header] = ()
) -> None:
    """Queue one pre-encoded record with headers (delivery errors are counted and raised
    by the next ``flush``); the path of the dead-letter writer."""
    producer.send(topic, key, value, tuple(headers))


class KafkaEventSink:
    """An :class:`~streams.sinks.EventSink` that produces events to a topic.

    Key = ``event_key(event)`` (the user id), value = ``encode(event)``. Delivered events
    count in ``events_produced{topic, source}``, failed ones in ``produce_errors{topic}``
    (the producer's metrics).

    Args:
        producer: a started :class:`Producer`, shared or owned (see ``owns_producer``).
        topic: where events go (normally ``KafkaConfig.topic_events``).
        source: the metric's source label (``generator``, ``import-movielens``, ...).
        owns_producer: :meth:`close` also closes the producer.
    """

    def __init__(
        self, producer: Producer, topic: str, *, source: str, owns_producer: bool = False
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.source = source
        self.owns_producer = owns_producer
        self.count = 0

    def write(self, event: Event) -> None:
        self.producer.send(self.topic, event_key(event), encode(event), source=self.source)
        self.count += 1

    def write_encoded(self, key: bytes | None, value: bytes) -> None:
        """One pre-encoded event (the generator's fast path)."""
        self.producer.send(self.topic, key, value, source=self.source)
        self.count += 1

    def write_many(self, pairs: Iterable[tuple[bytes | None, bytes]]) -> int:
        """Pre-encoded ``(key, value)`` pairs; returns how many were queued."""
        n = self.producer.send_many(self.topic, pairs, source=self.source)
        self.count += n
        return n

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for every queued event; raises ProduceError when some were not delivered."""
        self.producer.flush(timeout_s)

    def close(self) -> None:
        if self.owns_producer:
            self.producer.close()
        else:
            self.producer.flush()

    def __enter__(self) -> KafkaEventSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def consumer_options(cfg: KafkaConfig, group_id: str | None = None) -> dict[str, Any]:
    """Consumer settings shared by kafka-python and aiokafka consumers.

    tansu holds a group join for about half the session timeout, so a short session
    (6 s, heartbeat 0.5 s) makes a join take ~3 s instead of the ~20 s seen with the
    client defaults. Offsets are committed explicitly (after the work is stored).
    """
    return {
        "bootstrap_servers": None,  # filled by the caller
        "client_id": f"{cfg.client_id}-consumer",
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 500,
        "request_timeout_ms": max(cfg.request_timeout_ms, 6_500),
        "max_partition_fetch_bytes": cfg.max_message_bytes,
        "fetch_max_wait_ms": 100,
    }


def librdkafka_consumer_config(
    kafka: KafkaConfig, bootstrap: str, group_id: str, role: str
) -> dict[str, Any]:
    """confluent-kafka (librdkafka) consumer settings: manual commits, fast group joins on
    tansu (as :func:`consumer_options`), fetches large enough for the biggest message.

    Args:
        kafka: client settings.
        bootstrap: the cluster.
        group_id: the consumer group (librdkafka wants one even when partitions are
            assigned explicitly and nothing is committed).
        role: ``client.id`` suffix (``worker``, ``ranker``), so brokers can tell them apart.
    """
    return {
        "bootstrap.servers": bootstrap,
        "client.id": f"{kafka.client_id}-{role}",
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6_000,
        "heartbeat.interval.ms": 500,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "message.max.bytes": kafka.max_message_bytes + 65_536,
        "socket.timeout.ms": kafka.request_timeout_ms,
    }


def make_consumer(
    cfg: KafkaConfig, bootstrap: str, *topics: str, group_id: str | None = None, **kw: Any
) -> Any:
    """A kafka-python ``KafkaConsumer``; subscribed to ``topics`` when given (caller closes).

    Without ``group_id`` nothing is committed; use ``assign`` + ``seek`` (or
    :func:`read_topic`). ``kw`` overrides :func:`consumer_options`.
    """
    from kafka import KafkaConsumer

    options = consumer_options(cfg, group_id) | {"bootstrap_servers": bootstrap} | kw
    return KafkaConsumer(*topics, **options)


def read_topic(
    cfg: KafkaConfig,
    bootstrap: str,
    topic: str,
    *,
    timeout_s: float = 10.0,
    max_records: int | None = None,
) -> list[Any]:
    """Every record of ``topic`` from the beginning, at least up to its end at call time.

    Reads all partitions without a group (nothing committed) and returns the records
    sorted by (partition, offset). It is done when every position has passed the end
    offset listed when called and a poll returns nothing more: tansu 0.6.0 lists the base
    offset of the last record batch + 1 rather than the true end, and the rest of that
    batch comes with the same fetch. Stops early after ``max_records``, or after
    ``timeout_s`` (returning what it has).
    """
    from kafka import TopicPartition

    consumer = make_consumer(cfg, bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = 0
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(records)
                got += len(records)
            if max_records is not None and len(out) >= max_records:
                break
            # done when past the listed end and the fetched-but-unreturned records are drained
            if not got and all(consumer.position(tp) >= end[tp] for tp in tps):
                break
        out.sort(key=lambda r: (r.partition, r.offset))
        return out if max_records is None else out[:max_records]
    finally:
        consumer.close()


def end_offsets(
    cfg: KafkaConfig, bootstrap: str, topic: str, *, timeout_s: float = 10.0
) -> dict[int, int]:
    """``{partition: true end offset}`` (records ever written, for an uncompacted topic).

    ListOffsets is not enough with tansu 0.6.0: it answers the base offset of the last
    record batch + 1. This seeks to that offset - 1, fetches the batch there and takes the
    position after it; on Kafka the answer is the listed offset itself.
    """
    from kafka import TopicPartition

    consumer = make_consumer(cfg, bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        listed = consumer.end_offsets(tps) if tps else {}
        todo = [tp for tp in tps if listed[tp] > 0]
        consumer.assign(todo)
        for tp in todo:
            consumer.seek(tp, listed[tp] - 1)
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            got = sum(len(r) for r in consumer.poll(timeout_ms=200).values())
            if not got and all(consumer.position(tp) >= listed[tp] for tp in todo):
                break
        return {tp.partition: consumer.position(tp) if tp in todo else 0 for tp in tps}
    finally:
        consumer.close()


def with_topics(cfg: KafkaConfig, suffix: str) -> KafkaConfig:
    """``cfg`` with every topic name suffixed (tests and side-by-side runs)."""
    return dataclasses.replace(
        cfg,
        topic_events=f"{cfg.topic_events}{suffix}",
        topic_samples=f"{cfg.topic_samples}{suffix}",
        topic_cq=f"{cfg.topic_cq}{suffix}",
        topic_deadletter=f"{cfg.topic_deadletter}{suffix}",
        topic_model_updates=f"{cfg.topic_model_updates}{suffix}",
    )
