"""Dead letters: rejected records go to lum.deadletter with their reason, never dropped.

A dead-letter record keeps the ORIGINAL bytes as its value and original key as its key,
so a fixed-up consumer can replay it verbatim; everything else rides in headers (no JSON
envelope: wrapping would mean re-encoding arbitrary, possibly non-UTF-8 bytes):

==========================  ====================================================
header                      value (UTF-8)
==========================  ====================================================
``lum.reason``              machine-readable reason (``streams.contracts.events.Reason``)
``lum.detail``              what was wrong, for humans (at most 1,024 characters)
``lum.stage``               where it was rejected (``ingest``, ``import``, ...)
``lum.source.topic``        topic of the original record (when it came from Kafka)
``lum.source.partition``    its partition
``lum.source.offset``       its offset
``lum.truncated``           original size in bytes; present only when the value was
                            cut to fit ``kafka.max_message_bytes``
==========================  ====================================================

The writer and the readers are in :mod:`streams.sinks.deadletters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

H_REASON = "lum.reason"
H_DETAIL = "lum.detail"
H_STAGE = "lum.stage"
H_TOPIC = "lum.source.topic"
H_PARTITION = "lum.source.partition"
H_OFFSET = "lum.source.offset"
H_TRUNCATED = "lum.truncated"

MAX_DETAIL_CHARS = 1024
MAX_KEY_BYTES = 1024
OVERHEAD_BYTES = 512  # record and batch framing kept free below max_message_bytes


@dataclass(frozen=True)
class SourceRef:
    """Where a rejected record came from.

    Args:
        topic / partition / offset: its position in Kafka.
    """

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Rejected:
    """A record the worker rejected, before it is written anywhere.

    Args:
        value / key: the original bytes and key.
        reason / detail: why (``streams.contracts.events.Reason``) and what was wrong.
        offset: its offset in the partition being processed.
    """

    value: bytes
    key: bytes | None
    reason: str
    detail: str
    offset: int


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
    """A kafka-python consumer record (or one shaped like it) from lum.deadletter -> DeadLetter.

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
