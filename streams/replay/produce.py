"""Replay, mode *produce*: re-produce a source's events into a topic, rate-limited, resumable.

Records go out in the source's order with key = the user id (so Kafka's partitioner puts a
user's events in one partition, in order) and the value untouched: a bad event is passed
through and the live worker dead-letters it. Each record carries one header,
``lum.replay = <run id>:<n>`` (``n``: its number in the source order).

Resuming: every ``checkpoint_every`` records (or ``checkpoint_s`` seconds) the producer is
flushed and a checkpoint file is written atomically (temporary file, fsync, rename): the
source identity, the run id, ``records`` done and the source position after them. A
restarted run refuses another source, skips to the position, then reads the tail of each
partition of the topic (``depth`` records: ``checkpoint_every`` plus what earlier killed
runs had sent past the checkpoint) and skips the numbers of this replay that are already
there. So a resumed replay neither loses nor duplicates a record, as long as no other
producer wrote more than that many records to a partition in between; then it degrades to
at-least-once, and the worker's duplicate window drops the repeats (same ``event_id``).

Backfill (the other mode) is :mod:`streams.replay.backfill`.

Example:
    >>> stats = replay_produce(open_source("events.jsonl"), kafka, bootstrap,
    ...                        Path("data/replay/ck.json"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from core.durable import write_json_atomic
from monitoring.metrics import Metrics
from streams.config import KafkaConfig, ReplayConfig
from streams.replay.base import SourceReader
from streams.replay.sources import EventSource, ReplayError

H_REPLAY = "lum.replay"
CHECKPOINT_FORMAT = 1
Progress = Callable[[int], None]  # called with the source units done so far


@dataclass
class ReplayStats:
    """What one replay run did (``skipped``: done by an earlier run, not redone)."""

    mode: str
    source: str
    read: int = 0
    skipped: int = 0
    produced: int = 0
    applied: int = 0
    rejected: int = 0
    samples: int = 0
    batches: int = 0
    seconds: float = 0.0
    resumed: bool = False
    complete: bool = False
    output: str = ""  # where the records went, for messages (set by streams.replay.run)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        rate = self.read / self.seconds if self.seconds > 0 else 0.0
        head = f"replay ({self.mode}) of {self.source}: " + (
            "complete" if self.complete else "interrupted: run the same command to resume"
        )
        lines = [head, f"  read {self.read:,} records in {self.seconds:.1f} s ({rate:,.0f}/s)"]
        if self.resumed or self.skipped:
            lines.append(f"  resumed: {self.skipped:,} records were done by an earlier run")
        if self.mode == "produce":
            lines.append(f"  produced {self.produced:,}")
        else:
            lines.append(
                f"  applied {self.applied:,} events in {self.batches:,} batches, "
                f"{self.samples:,} samples, {self.rejected:,} dead letters"
            )
        if self.output:
            lines.append(f"  output: {self.output}")
        return "\n".join(lines)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when there is no file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ReplayError(f"{path}: not a replay checkpoint ({exc})") from None
    if not isinstance(obj, dict):
        raise ReplayError(f"{path}: not a replay checkpoint")
    return obj


def default_checkpoint(directory: Path, source: EventSource, topic: str) -> Path:
    """The checkpoint of replaying ``source`` into ``topic``: one file per pair in
    ``directory`` (``Layout.replay_checkpoints``), so rerunning a command finds its own."""
    digest = hashlib.sha256(f"{source.key()}>{topic}".encode()).hexdigest()[:12]
    return directory / f"produce-{digest}.json"


def delivered_numbers(
    kafka: KafkaConfig, bootstrap: str, topic: str, run: str, after: int, depth: int
) -> set[int]:
    """Numbers >= ``after`` of run ``run`` among the last ``depth`` records per partition."""
    from kafka import TopicPartition

    from streams.kafka.consumer import end_offsets, make_consumer

    ends = end_offsets(kafka, bootstrap, topic)
    tag = run.encode()
    found: set[int] = set()
    consumer = make_consumer(kafka, bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
        begins = consumer.beginning_offsets(tps) if tps else {}
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, max(int(begins[tp]), ends[tp.partition] - depth))
        deadline = time.monotonic() + max(kafka.request_timeout_ms / 1000.0, 10.0)
        while tps and time.monotonic() < deadline:
            got = 0
            for records in consumer.poll(timeout_ms=200).values():
                got += len(records)
                for rec in records:
                    for name, value in rec.headers or ():
                        if name == H_REPLAY and value:
                            rid, _, n = value.partition(b":")
                            if rid == tag and int(n) >= after:
                                found.add(int(n))
            if not got and all(consumer.position(tp) >= ends[tp.partition] for tp in tps):
                return found
        raise ReplayError(f"{topic}: could not read the records of the interrupted run (timeout)")
    finally:
        consumer.close()


def replay_produce(
    source: EventSource,
    kafka: KafkaConfig,
    bootstrap: str,
    checkpoint: Path,
    *,
    topic: str | None = None,
    cfg: ReplayConfig | None = None,
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    restart: bool = False,
) -> ReplayStats:
    """Re-produce ``source`` into ``topic`` (default ``kafka.topic_events``), resumably.

    Args:
        source: what to replay.
        kafka / bootstrap: the cluster and client settings.
        checkpoint: the checkpoint file (created, or resumed from when it exists;
            :func:`default_checkpoint` names one).
        topic: the target topic.
        cfg: rate and checkpoint spacing.
        metrics: counts ``replay_records{mode="produce"}`` and, through the producer,
            ``events_produced{source="replay"}``.
        stop: set it to stop after the current chunk (flushed and checkpointed).
        progress: called with the source units done so far.
        restart: forget the checkpoint and replay everything again.
    Returns:
        the run's stats; ``complete`` is False when ``stop`` ended it.
    """
    from streams.kafka.producer import Producer

    if metrics is None:
        from monitoring.metrics import default_metrics

        metrics = default_metrics()
    cfg = cfg or ReplayConfig()
    topic = topic or kafka.topic_events
    if source.key().startswith(f"kafka:{topic}:"):
        raise ReplayError(f"{source.name}: a topic cannot be replayed into itself; use --topic")
    started = time.perf_counter()
    stats = ReplayStats("produce", source.name)
    if restart:
        checkpoint.unlink(missing_ok=True)
    state = read_json(checkpoint)
    delivered: set[int] = set()
    if state is not None:
        if state.get("format") != CHECKPOINT_FORMAT or state.get("mode") != "produce":
            raise ReplayError(f"{checkpoint}: not a produce checkpoint of this lumstream version")
        if state.get("topic") != topic:
            raise ReplayError(
                f"{checkpoint}: that replay went to topic {state.get('topic')!r}, not {topic!r}"
            )
        source.adopt(state["source"])
        stats.resumed = True
        stats.skipped = int(state["records"])
        if state.get("complete"):
            stats.complete = True
            return stats
        delivered = delivered_numbers(
            kafka, bootstrap, topic, state["run"], int(state["records"]), int(state["depth"])
        )
    else:
        state = {
            "format": CHECKPOINT_FORMAT,
            "mode": "produce",
            "topic": topic,
            "source": source.identity(),
            "run": uuid.uuid4().hex[:16],
            "records": 0,
            "position": None,
            "complete": False,
        }
    # how deep the next resume must look: what is already there past the checkpoint, plus
    # what this run may send before its next checkpoint
    state["depth"] = len(delivered) + cfg.checkpoint_every
    write_json_atomic(checkpoint, state)  # before anything is sent, so a kill can resume
    producer = Producer(kafka, bootstrap, metrics=metrics)
    try:
        run = _ProduceRun(producer, topic, checkpoint, state, cfg, stats, metrics)
        with source.open(state["position"]) as reader:
            stats.complete = run.run(reader, delivered, stop, progress)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            producer.close()
        raise
    producer.close()
    stats.seconds = time.perf_counter() - started
    return stats


class _ProduceRun:
    """The loop of :func:`replay_produce`: chunks, pacing, checkpoints."""

    def __init__(
        self,
        producer: Any,
        topic: str,
        checkpoint: Path,
        state: dict[str, Any],
        cfg: ReplayConfig,
        stats: ReplayStats,
        metrics: Metrics,
    ) -> None:
        from streams.generator.pacing import TokenBucket, batch_size_for

        self.producer, self.topic, self.checkpoint = producer, topic, checkpoint
        self.state, self.cfg, self.stats = state, cfg, stats
        self.bucket = TokenBucket(cfg.rate) if cfg.rate > 0 else None
        self.chunk = batch_size_for(cfg.rate)
        self.produced = metrics.replay_records.labels(mode="produce", outcome="produced")
        self.skipped = metrics.replay_records.labels(mode="produce", outcome="skipped")
        self.tag = str(state["run"]).encode()
        self.buf: list[tuple[bytes | None, bytes, int]] = []
        self.delivered: set[int] = set()
        self.ordinal = self.saved = int(state["records"])
        self.saved_at = time.monotonic()

    def send(self) -> None:
        if not self.buf:
            return
        if self.bucket is not None:
            self.bucket.acquire(len(self.buf))
        send, topic, tag = self.producer.send, self.topic, self.tag
        for key, value, n in self.buf:
            send(topic, key, value, ((H_REPLAY, b"%s:%d" % (tag, n)),), source="replay")
        self.produced.inc(len(self.buf))
        self.stats.produced += len(self.buf)
        self.buf.clear()

    def save(self, reader: SourceReader, complete: bool = False) -> None:
        """Send, flush, then record the position: a checkpoint never runs ahead of Kafka."""
        self.send()
        self.producer.flush()
        earlier = sum(1 for n in self.delivered if n >= self.ordinal)  # a killed run's, ahead
        self.state.update(
            records=self.ordinal,
            position=reader.position(),
            complete=complete,
            depth=earlier + self.cfg.checkpoint_every,
        )
        write_json_atomic(self.checkpoint, self.state)
        self.saved, self.saved_at = self.ordinal, time.monotonic()

    def run(
        self,
        reader: SourceReader,
        delivered: set[int],
        stop: threading.Event | None,
        progress: Progress | None,
    ) -> bool:
        """Produce to the end (True) or until ``stop`` is set (False)."""
        every, every_s = self.cfg.checkpoint_every, self.cfg.checkpoint_s
        self.delivered = delivered
        if progress is not None:
            progress(reader.done())
        for key, value, _ in reader:
            if self.ordinal in delivered:  # sent by the interrupted run after its checkpoint
                self.skipped.inc()
                self.stats.skipped += 1
            else:
                self.buf.append((key, value, self.ordinal))
            self.ordinal += 1
            self.stats.read += 1
            if len(self.buf) < self.chunk and self.ordinal - self.saved < every:
                continue
            if self.ordinal - self.saved >= every or time.monotonic() - self.saved_at >= every_s:
                self.save(reader)
            else:
                self.send()
            if progress is not None:
                progress(reader.done())
            if stop is not None and stop.is_set():
                self.save(reader)
                return False
        self.save(reader, complete=True)
        if progress is not None:
            progress(reader.done())
        return True
