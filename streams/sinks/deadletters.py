"""Where dead letters go: the :class:`DeadLetterSink` protocol, the dead-letter topic and
dead-letter files, and reading them back.

:class:`DeadLetterWriter` puts a rejected record on the dead-letter topic in the format of
:mod:`streams.contracts.deadletters` (original bytes and key, reason and origin in
headers) and counts it.

Dead-letter file (``--deadletters-out FILE.jsonl``): one JSON object per line::

    {"partition": 2, "offset": 1041,              # backfill store partition, synthetic offset
     "reason": "malformed_json", "detail": "...",
     "source": {"topic": "file:/logs/events.jsonl", "partition": 0, "offset": 17},
     "key_b64": "Nw==", "value_b64": "..."}        # original key and bytes, base64

``source`` is where the record came from: a Kafka topic/partition/offset, or for a log
file ``file:<path>`` with the 1-based line (or Parquet row) as the offset.

Example:
    >>> writer = DeadLetterWriter(producer, cfg.topic_deadletter, metrics)  # doctest: +SKIP
    >>> writer.send(b"{not json", b"user-7", "malformed_json", "line 1: ...",
    ...             SourceRef("lum.events", 3, 1042), stage="ingest")
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Protocol

import orjson

from monitoring.metrics import Metrics
from streams.config import KafkaConfig
from streams.contracts.deadletters import (
    H_DETAIL,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_STAGE,
    H_TOPIC,
    H_TRUNCATED,
    MAX_DETAIL_CHARS,
    MAX_KEY_BYTES,
    OVERHEAD_BYTES,
    DeadLetter,
    Rejected,
    SourceRef,
    decode_deadletter,
)
from streams.kafka.consumer import read_topic

STAGE = "backfill"


class RawSender(Protocol):
    """What the writer needs from a producer (``streams.kafka.producer.Producer`` fits)."""

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
            - OVERHEAD_BYTES
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


class DeadLetterSink(Protocol):
    """Takes rejected records with where they came from; durable after :meth:`flush`."""

    def write(self, dead: Rejected, partition: int, source: SourceRef) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class KafkaDeadLetterSink:
    """Dead letters to the dead-letter topic with the record's origin.

    Args:
        writer: the dead-letter writer (counts ``events_rejected{stage, reason}``).
        stage: ``worker`` for the live worker, ``backfill`` for replay backfills.
    """

    def __init__(self, writer: DeadLetterWriter, stage: str = STAGE) -> None:
        self.writer, self.stage = writer, stage

    def write(self, dead: Rejected, partition: int, source: SourceRef) -> None:
        self.writer.send(dead.value, dead.key, dead.reason, dead.detail, source, stage=self.stage)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()


class DeadLetterFile:
    """Dead letters as JSON lines (module doc), exactly once per (partition, offset).

    Args:
        path: the file; appended to when it exists (a torn last line is cut off).
        metrics: counts ``events_rejected{stage="backfill", reason}``.
        sync: fsync on :meth:`flush`.
        must_be_new: refuse an existing file with lines in it.
    """

    def __init__(
        self, path: str | Path, metrics: Metrics, *, sync: bool = True, must_be_new: bool = False
    ) -> None:
        self.path = Path(path)
        self.metrics, self.sync = metrics, sync
        self.last_offset: dict[int, int] = {}
        self.count = 0
        end = self._scan(must_be_new)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("r+b" if self.path.exists() else "wb")
        self._fh.truncate(end)
        self._fh.seek(end)

    def _scan(self, must_be_new: bool) -> int:
        if not self.path.exists():
            return 0
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1  # a line without its newline was cut by a crash
        if must_be_new and end:
            raise FileExistsError(
                f"{self.path} already holds dead letters; remove it or write elsewhere"
            )
        for line in raw[:end].splitlines():
            if line.strip():
                obj = orjson.loads(line)
                p, o = int(obj["partition"]), int(obj["offset"])
                self.last_offset[p] = max(self.last_offset.get(p, -1), o)
        return end

    def write(self, dead: Rejected, partition: int, source: SourceRef) -> None:
        if dead.offset <= self.last_offset.get(partition, -1):
            return  # written before a crash; the resumed batch emits it again
        line = {
            "partition": partition,
            "offset": dead.offset,
            "reason": dead.reason,
            "detail": dead.detail,
            "source": {
                "topic": source.topic,
                "partition": source.partition,
                "offset": source.offset,
            },
            "key_b64": None if dead.key is None else base64.b64encode(dead.key).decode(),
            "value_b64": base64.b64encode(dead.value).decode(),
        }
        self._fh.write(orjson.dumps(line) + b"\n")
        self.last_offset[partition] = dead.offset
        self.metrics.events_rejected.labels(stage=STAGE, reason=dead.reason).inc()
        self.count += 1

    def flush(self) -> None:
        self._fh.flush()
        if self.sync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self.flush()
            self._fh.close()


def read_deadletter_file(path: str | Path) -> list[dict[str, object]]:
    """The dead letters of a file written by :class:`DeadLetterFile`, with ``key`` and
    ``value`` decoded back to bytes."""
    out: list[dict[str, object]] = []
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            obj = orjson.loads(line)
            key = obj.pop("key_b64")
            obj["key"] = None if key is None else base64.b64decode(key)
            obj["value"] = base64.b64decode(obj.pop("value_b64"))
            out.append(obj)
    return out


def read_deadletters(
    cfg: KafkaConfig, bootstrap: str, *, timeout_s: float = 10.0, max_records: int | None = None
) -> list[DeadLetter]:
    """Every dead letter in ``cfg.topic_deadletter`` (see ``streams.kafka.consumer.read_topic``)."""
    records = read_topic(
        cfg, bootstrap, cfg.topic_deadletter, timeout_s=timeout_s, max_records=max_records
    )
    return [decode_deadletter(r) for r in records]
