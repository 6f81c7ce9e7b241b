"""Where a batch's samples and dead letters go: Kafka topics, or local files (backfill).

:class:`streams.applier.BatchApplier` writes a batch's samples and dead letters, flushes
both, and only then commits the store batch: a crash in between re-emits them from the
same records. Kafka consumers drop repeats by (partition, seq); the file sinks drop them
themselves (exactly once in the file).

Dead-letter file (``--deadletters-out FILE.jsonl``): one JSON object per line::

    {"partition": 2, "offset": 1041,              # backfill store partition, synthetic offset
     "reason": "malformed_json", "detail": "...",
     "source": {"topic": "file:/logs/events.jsonl", "partition": 0, "offset": 17},
     "key_b64": "Nw==", "value_b64": "..."}        # original key and bytes, base64

``source`` is where the record came from: a Kafka topic/partition/offset, or for a log
file ``file:<path>`` with the 1-based line (or Parquet row) as the offset.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Protocol

import orjson

from monitoring.metrics import Metrics
from streams.config import KafkaConfig
from streams.deadletter import DeadLetterWriter, SourceRef
from streams.processor import DeadLetter
from streams.producer import Producer
from streams.samples import SampleBlock, encode_block

STAGE = "backfill"


class SampleSink(Protocol):
    """Takes sample blocks; everything written is durable once :meth:`flush` returns."""

    def write(self, block: SampleBlock) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class DeadLetterSink(Protocol):
    """Takes rejected records with where they came from; durable after :meth:`flush`."""

    def write(self, dead: DeadLetter, partition: int, source: SourceRef) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class KafkaSampleSink:
    """Sample blocks to ``topic`` keyed ``p<partition>``, like the live worker's."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer, self.topic = producer, topic

    def write(self, block: SampleBlock) -> None:
        self.producer.send(self.topic, b"p%d" % block.partition, encode_block(block))

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()


class KafkaDeadLetterSink:
    """Dead letters to the dead-letter topic with the record's origin.

    Args:
        writer: the dead-letter writer (counts ``events_rejected{stage, reason}``).
        stage: ``worker`` for the live worker, ``backfill`` for replay backfills.
    """

    def __init__(self, writer: DeadLetterWriter, stage: str = STAGE) -> None:
        self.writer, self.stage = writer, stage

    def write(self, dead: DeadLetter, partition: int, source: SourceRef) -> None:
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

    def write(self, dead: DeadLetter, partition: int, source: SourceRef) -> None:
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


def kafka_outputs(
    producer: Producer, kafka: KafkaConfig, metrics: Metrics, stage: str
) -> tuple[KafkaSampleSink, KafkaDeadLetterSink]:
    """The sample and dead-letter sinks of a worker: the configured topics."""
    return (
        KafkaSampleSink(producer, kafka.topic_samples),
        KafkaDeadLetterSink(DeadLetterWriter.from_config(producer, kafka, metrics), stage),
    )


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
