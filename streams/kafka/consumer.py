"""Kafka consumers: settings, positioned consumers, whole-topic reads and end offsets.

Consumers for tools and tests use kafka-python (:func:`make_consumer`, :func:`read_topic`)
with :func:`consumer_options`; the hot consumers (the stream worker, the ranker's sample
source) use confluent-kafka, whose librdkafka fetches and decodes in C threads, with
:func:`streams.kafka.librdkafka.librdkafka_consumer_config`; :class:`PositionedConsumer` is
the one for readers that keep their own offsets.

Example:
    >>> records = read_topic(cfg.kafka, bootstrap, "lum.deadletter")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, NamedTuple

from streams.config import KafkaConfig
from streams.kafka.librdkafka import librdkafka_consumer_config

log = logging.getLogger(__name__)


def consumer_options(cfg: KafkaConfig, group_id: str | None = None) -> dict[str, Any]:
    """kafka-python consumer settings (librdkafka's: :mod:`streams.kafka.librdkafka`).

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


class Message(NamedTuple):
    """One record: ``next_offset`` is where reading continues after it; ``timestamp_ms``
    its Kafka timestamp (0 when it has none, e.g. read from a file)."""

    partition: int
    offset: int
    value: bytes
    next_offset: int
    timestamp_ms: int = 0


class ConsumerError(RuntimeError):
    """A topic that cannot be read (missing topic, unreachable cluster)."""


class PositionedConsumer:
    """Every partition of a topic, positioned explicitly by the caller (the ranker keeps its
    offsets in its checkpoint), so no consumer group is joined and nothing is committed.

    Reads with confluent-kafka: librdkafka fetches and decodes in C threads, off the GIL
    the trainer needs. kafka-python's pure-Python fetch path drained sample blocks (about
    150 kB each) at ~8k samples/s, a quarter of what one trainer learns, 22x slower than
    this (``bench/ranker.py source`` compares the two).

    Args:
        kafka: client settings.
        bootstrap: the cluster.
        topic: the samples topic.
        start: ``earliest`` or ``latest`` for partitions without a position.
        stop_at: finite mode (replay): partition -> end offset (from :func:`end_offsets`,
            which knows tansu's listing quirk); exhausted once every partition reached it.
            None: never exhausted.
        timeout_s: how long to wait for the topic's metadata and offsets.
        role: the consumer's ``client.id`` suffix and group name suffix.
    Raises:
        ConsumerError: the topic does not exist or the cluster does not answer.

    Positions are the offsets after the messages handed out; the topic must be neither
    compacted nor transactional (offsets without a gap), as lum.samples is.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        bootstrap: str,
        topic: str,
        start: str = "earliest",
        stop_at: dict[int, int] | None = None,
        timeout_s: float = 10.0,
        role: str = "ranker",
    ) -> None:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        self._tp = TopicPartition
        self.topic = topic
        conf = librdkafka_consumer_config(kafka, bootstrap, f"{kafka.client_id}-{role}", role)
        self.consumer = Consumer(conf)
        try:
            meta = self.consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise ConsumerError(f"{topic}: no such topic ({meta.error if meta else 'absent'})")
            self.partitions = sorted(meta.partitions)
            if start == "latest":
                first = end_offsets(kafka, bootstrap, topic, timeout_s=timeout_s)
            else:
                first = {
                    p: self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout_s)[0]
                    for p in self.partitions
                }
        except (KafkaException, TypeError) as exc:  # TypeError: no watermark answer (None)
            self.consumer.close()
            raise ConsumerError(
                f"{topic}: the cluster at {bootstrap} did not answer: {exc}"
            ) from exc
        except ConsumerError:
            self.consumer.close()
            raise
        self._pos = {p: int(first.get(p, 0)) for p in self.partitions}
        self._end = stop_at
        self._buffer: deque[Message] = deque()
        self._assign()

    def _assign(self) -> None:
        self.consumer.assign([self._tp(self.topic, p, self._pos[p]) for p in self.partitions])

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        if len(self._buffer) < max_messages:
            got: list[Message] = []
            for rec in self.consumer.consume(max_messages, timeout_s):
                err = rec.error()
                if err is not None:
                    if err.fatal():
                        raise ConsumerError(f"{self.topic}: {err}")
                    log.warning("%s: %s (librdkafka retries)", self.topic, err)
                    continue
                part, off = int(rec.partition() or 0), int(rec.offset() or 0)
                stamp = max(0, int(rec.timestamp()[1]))
                # a null value is not a sample block: the assembler counts it as corrupt
                got.append(Message(part, off, rec.value() or b"", off + 1, stamp))
            self._buffer.extend(sorted(got, key=lambda m: (m.partition, m.offset)))
        n = min(max_messages, len(self._buffer))
        out = [self._buffer.popleft() for _ in range(n)]
        for m in out:
            self._pos[m.partition] = m.next_offset
        return out

    def seek(self, positions: dict[int, int]) -> None:
        self._buffer.clear()
        for p in self.partitions:
            if p in positions:
                self._pos[p] = int(positions[p])
        self._assign()

    def finish_at(self, ends: dict[int, int]) -> None:
        """From now on finite: exhausted once every partition reached ``ends`` (a live
        source drained at shutdown; safe to call from another thread)."""
        self._end = dict(ends)

    def exhausted(self) -> bool:
        end = self._end
        if end is None or self._buffer:
            return False
        return all(self._pos[p] >= end.get(p, 0) for p in self.partitions)

    def lag(self) -> dict[int, int]:
        """Messages behind each partition's end, from the offsets the last fetches carried
        (no broker call); partitions not fetched yet are left out."""
        out = {}
        for p in self.partitions:
            _, high = self.consumer.get_watermark_offsets(self._tp(self.topic, p), cached=True)
            if high >= 0:
                out[p] = max(0, high - self._pos[p])
        return out

    def close(self) -> None:
        self.consumer.close()
