"""Dead letters: rejected records go to lum.deadletter with their reason, never dropped.

A dead-letter record keeps the ORIGINAL bytes as its value and original key as its key,
so a fixed-up consumer can replay it verbatim; everything else rides in headers (no JSON
envelope: wrapping would mean re-encoding arbitrary, possibly non-UTF-8 bytes):

==========================  ====================================================
header                      value (UTF-8)
==========================  ====================================================
``lum.reason``              machine-readable reason (``streams.events.Reason``)
``lum.detail``              what was wrong, for humans (at most 1,024 characters)
``lum.stage``               where it was rejected (``ingest``, ``import``, ...)
``lum.source.topic``        topic of the original record (when it came from Kafka)
``lum.source.partition``    its partition
``lum.source.offset``       its offset
``lum.truncated``           original size in bytes; present only when the value was
                            cut to fit ``kafka.max_message_bytes``
==========================  ====================================================

Example:
    >>> writer = DeadLetterWriter(producer, cfg.topic_deadletter, metrics)  # doctest: +SKIP
    >>> writer.send(b"{not json", b"user-7", "malformed_json", "line 1: ...",
    ...             SourceRef("lum.events", 3, 1042), stage="ingest")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from monitoring.metrics import Metrics
from streams.config import KafkaConfig

H_REASON = "lum.reason"
H_DETAIL = "lum.detail"
H_STAGE = "lum.stage"
H_TOPIC = "lum.source.topic"
H_PARTITION = "lum.source.partition"
H_OFFSET = "lum.source.offset"
H_TRUNCATED = "lum.truncated"

MAX_DETAIL_CHARS = 1024
MAX_KEY_BYTES = 1024
_OVERHEAD_BYTES = 512  # record and batch framing kept free below max_message_bytes


@dataclass(frozen=True)
class SourceRef:
    """Where a rejected record came from.

    Args:
        topic / partition / offset: its position in Kafka.
    """

    topic: str
    partition: int
    offset: int


class RawSender(Protocol):
    """What the writer needs from a producer (``streams.producer.Producer`` fits)."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: tuple[tuple[str, bytes], ...] = ...,
    ) -> None: ...

    def flush(self, timeout_s: float | None = ...) -> None: ...


class DeadLetterWriter:
    """Writes rejected records to the dead-letter topic and counts them.

    Each :meth:`send` counts ``events_rejected{stage, reason}``.

    Args:
        producer: where records go (a started ``Producer``; not closed here).
        topic: the dead-letter topic (``KafkaConfig.topic_deadletter``).
        metrics: the metrics to count in (default: the process-wide ones).
        max_message_bytes: the largest record; longer originals are truncated.

    Example:
        >>> w = DeadLetterWriter(producer, "lum.deadletter", metrics)  # doctest: +SKIP
        >>> w.send(raw, key, "non_utf8", "user_id: invalid byte 0xff", None, stage="import")
    """

    def __init__(
        self,
        producer: RawSender,
        topic: str,
        metrics: Metrics | None = None,
        max_message_bytes: int = 1_048_576,
    ) -> None:
        if metrics is None:
            from monitoring.metrics import default_metrics

            metrics = default_metrics()
        self.producer = producer
        self.topic = topic
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.count = 0

    @classmethod
    def from_config(
        cls, producer: RawSender, cfg: KafkaConfig, metrics: Metrics | None = None
    ) -> DeadLetterWriter:
        return cls(producer, cfg.topic_deadletter, metrics, cfg.max_message_bytes)

    def send(
        self,
        raw_value: bytes,
        key: bytes | None,
        reason: str,
        detail: str,
        source: SourceRef | None = None,
        stage: str = "ingest",
    ) -> None:
        """Queue one dead letter (delivery is checked by the producer's ``flush``)."""
        headers = [
            (H_REASON, str(reason).encode()),
            (H_STAGE, stage.encode()),
            (H_DETAIL, _clip(detail, MAX_DETAIL_CHARS).encode("utf-8", "replace")),
        ]
        if source is not None:
            headers += [
                (H_TOPIC, source.topic.encode()),
                (H_PARTITION, str(source.partition).encode()),
                (H_OFFSET, str(source.offset).encode()),
            ]
        if key is not None and len(key) > MAX_KEY_BYTES:
            key = key[:MAX_KEY_BYTES]
        room = (
            self.max_message_bytes
            - _OVERHEAD_BYTES
            - (len(key) if key else 0)
            - sum(len(k) + len(v) + 8 for k, v in headers)
            - len(H_TRUNCATED)
            - 24
        )
        value = bytes(raw_value)
        if len(value) > room:
            headers.append((H_TRUNCATED, str(len(value)).encode()))
            value = value[: max(room, 0)]
        self.producer.send(self.topic, key, value, tuple(headers))
        self.metrics.events_rejected.labels(stage=stage, reason=str(reason)).inc()
        self.count += 1

    def flush(self, timeout_s: float | None = None) -> None:
        self.producer.flush(timeout_s)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class DeadLetter:
    """A dead-letter record read back.

    Args:
        value: the original bytes (cut when ``truncated_from`` is set).
        key: the original key.
        reason / detail / stage: why and where it was rejected.
        source: the original record's position, when it came from Kafka.
        truncated_from: the original size when the value was cut, else None.
        at: the dead letter's own position in the dead-letter topic.
        timestamp_ms: when it was written.
    """

    value: bytes
    key: bytes | None
    reason: str
    detail: str
    stage: str
    source: SourceRef | None
    truncated_from: int | None
    at: SourceRef
    timestamp_ms: int


def decode_deadletter(record: Any) -> DeadLetter:
    """A kafka-python or aiokafka consumer record from the dead-letter topic -> DeadLetter.

    Missing or foreign headers give empty strings / None rather than an error, so a
    record some other tool wrote there can still be inspected.
    """
    h = _headers(record.headers)
    source = None
    if H_TOPIC in h:
        source = SourceRef(h[H_TOPIC], _int(h.get(H_PARTITION), -1), _int(h.get(H_OFFSET), -1))
    truncated = _int(h.get(H_TRUNCATED), -1)
    return DeadLetter(
        value=bytes(record.value or b""),
        key=record.key,
        reason=h.get(H_REASON, ""),
        detail=h.get(H_DETAIL, ""),
        stage=h.get(H_STAGE, ""),
        source=source,
        truncated_from=truncated if truncated >= 0 else None,
        at=SourceRef(record.topic, record.partition, record.offset),
        timestamp_ms=int(record.timestamp),
    )


def _headers(raw: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (raw or ())}


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def read_deadletters(
    cfg: KafkaConfig, bootstrap: str, *, timeout_s: float = 10.0, max_records: int | None = None
) -> list[DeadLetter]:
    """Every dead letter in ``cfg.topic_deadletter`` (see ``streams.kafka.read_topic``)."""
    from streams.kafka import read_topic

    records = read_topic(
        cfg, bootstrap, cfg.topic_deadletter, timeout_s=timeout_s, max_records=max_records
    )
    return [decode_deadletter(r) for r in records]
