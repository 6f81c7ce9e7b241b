"""The one way a processed batch leaves a worker, whatever consumed it.

:class:`BatchApplier` runs a batch through :class:`PartitionProcessor`, writes its sample
blocks and dead letters to their sinks (Kafka for the workers, Kafka or files for a
backfill), waits until they are durable, then commits the partition store, and counts.
The confluent engine, the faust engine and the backfill all call it, so the exactly-once
argument (streams/worker/processor.py) is made once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from monitoring.metrics import Metrics
from streams.config import KafkaConfig, WorkerConfig
from streams.contracts.deadletters import Rejected, SourceRef
from streams.contracts.samples import split_blocks
from streams.kafka.producer import Producer
from streams.sinks.deadletters import DeadLetterSink, DeadLetterWriter, KafkaDeadLetterSink
from streams.sinks.samples import KafkaSampleSink, SampleSink
from streams.worker.processor import BatchResult, PartitionProcessor
from streams.worker.snapshots import Snapshots
from streams.worker.store import SealedBatch

_LATENCY_SAMPLES = 256  # event-to-store latencies observed per batch (evenly strided)
_SIZE_EVERY = 50  # batches between RocksDB size estimates (a property read, not free)
RETRY_BACKOFF_S = 1.0  # the workers' pause before re-processing a batch whose delivery failed


@dataclass
class WorkerStats:
    """Counts of this worker process (the store holds the durable ones)."""

    applied: int = 0
    batches: int = 0
    samples: int = 0
    positives: int = 0  # samples with label 1
    history_events: int = 0  # history rows carried by the samples
    dead_letters: int = 0
    skipped: int = 0
    last_record_at: float = 0.0


@dataclass
class PartitionBatch:
    """Records of one partition in offset order, and what to tell about them."""

    proc: PartitionProcessor
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes]
    timestamps_ms: list[int] | None = None
    origin: Callable[[Rejected], SourceRef] | None = None

    @property
    def args(self) -> tuple[list[int], list[bytes | None], list[bytes], list[int] | None]:
        """What :meth:`PartitionProcessor.process` takes."""
        return self.offsets, self.keys, self.values, self.timestamps_ms


@dataclass
class StagedPoll:
    """One poll's batches on their way through :class:`BatchApplier`'s steps."""

    batches: list[PartitionBatch]
    results: list[BatchResult]
    t0: float  # perf_counter at the start of processing
    sealed: list[SealedBatch] = field(default_factory=list)
    done_ms: float = 0.0  # wall clock (ms) when the store batches were written
    seconds: float = 0.0  # process + send + flush + commit

    @property
    def partitions(self) -> list[int]:
        return [b.proc.partition for b in self.batches]


class BatchApplier:
    """Process, deliver, commit and count one batch of one partition.

    Args:
        worker: the worker config (samples per block).
        samples / dead: where sample blocks and dead letters go (streams/sinks/).
        metrics / stats: where to count.
        source_topic: the topic dead letters point back to when no origin is given.
        keep_latencies: keep every event-to-store latency in ``latencies_ms`` (benchmarks).
        snapshots: snapshot a partition's store after a commit when its interval passed.
    """

    def __init__(
        self,
        worker: WorkerConfig,
        samples: SampleSink,
        dead: DeadLetterSink,
        metrics: Metrics,
        stats: WorkerStats,
        *,
        source_topic: str,
        keep_latencies: bool = False,
        snapshots: Snapshots | None = None,
    ) -> None:
        self.cfg, self.samples, self.dead = worker, samples, dead
        self.metrics, self.stats = metrics, stats
        self.source_topic = source_topic
        self.snapshots = snapshots
        self.keep_latencies = keep_latencies
        self.latencies_ms: list[np.ndarray] = []
        self.commit_ms: list[float] = []  # with keep_latencies: each batch's commit time

    def apply(
        self,
        proc: PartitionProcessor,
        offsets: list[int],
        keys: list[bytes | None],
        values: list[bytes],
        timestamps_ms: list[int] | None = None,
        origin: Callable[[Rejected], SourceRef] | None = None,
    ) -> BatchResult:
        """One batch of ``proc``'s partition in offset order: process, send + flush, commit.

        Args:
            timestamps_ms: the records' Kafka timestamps (the future bound on ``ts`` and
                event-to-store latency), if any.
            origin: where a dead letter's record came from (default: ``source_topic``,
                the processor's partition and the record's offset).
        """
        return self.apply_many(
            [PartitionBatch(proc, offsets, keys, values, timestamps_ms, origin)]
        )[0]

    def apply_many(self, batches: list[PartitionBatch]) -> list[BatchResult]:
        """Batches of different partitions: all processed and sent, one flush, then every
        store committed. A failed flush raises before any commit (nothing is applied)."""
        staged = self.process_many(batches)
        self.send(staged)
        self.deliver(staged)
        return self.account(staged)

    # The steps of apply_many, for a caller that overlaps them (the confluent engine
    # processes the next poll while the previous one's deliver runs in another thread):
    # process_many -> send -> deliver -> account, each poll's in this order, deliver of
    # one poll finished before the next poll is sent.
    def process_many(self, batches: list[PartitionBatch]) -> StagedPoll:
        """Process every batch (its effects wait in the stores' current batches); nothing
        is sent yet."""
        t0 = time.perf_counter()
        return StagedPoll(batches, [b.proc.process(*b.args) for b in batches], t0)

    def send(self, staged: StagedPoll) -> None:
        """Queue the sample blocks and dead letters, and seal every store's batch."""
        for b, result in zip(staged.batches, staged.results, strict=True):
            self._send(b, result)
            staged.sealed.append(b.proc.store.seal())

    def deliver(self, staged: StagedPoll) -> None:
        """Wait until everything sent is durable, then write the sealed store batches.

        Raises:
            ProduceError: the sinks could not deliver; no store batch was written.
        """
        self.samples.flush()
        self.dead.flush()
        for b, sealed in zip(staged.batches, staged.sealed, strict=True):
            b.proc.store.write_sealed(sealed)
        staged.done_ms = time.time() * 1000.0
        staged.seconds = time.perf_counter() - staged.t0

    def account(self, staged: StagedPoll) -> list[BatchResult]:
        """After :meth:`deliver`: snapshots when due, metrics."""
        if self.snapshots is not None:
            for b in staged.batches:
                self.snapshots.maybe_take(b.proc.store)
        for b, result in zip(staged.batches, staged.results, strict=True):
            self._count(b.proc, result, b.timestamps_ms, staged.done_ms, staged.seconds)
        return staged.results

    def _send(self, b: PartitionBatch, result: BatchResult) -> None:
        proc = b.proc
        stats = self.stats
        if result.samples is not None:
            for block in split_blocks(result.samples, self.cfg.max_samples_per_message):
                self.samples.write(block)
            stats.samples += len(result.samples)
            stats.positives += int(result.samples.rows["label"].sum())
            stats.history_events += int(result.samples.hist_lengths.sum())
        for d in result.dead_letters:
            where = (
                b.origin(d)
                if b.origin is not None
                else SourceRef(self.source_topic, proc.partition, d.offset)
            )
            self.dead.write(d, proc.partition, where)
        stats.applied += result.applied
        stats.skipped += result.skipped
        stats.dead_letters += len(result.dead_letters)
        stats.batches += 1

    def _count(
        self,
        proc: PartitionProcessor,
        result: BatchResult,
        timestamps_ms: list[int] | None,
        done_ms: float,
        seconds: float,
    ) -> None:
        m = self.metrics
        part = str(proc.partition)
        m.batch_apply_seconds.observe(seconds)
        m.batches_applied.inc()
        if result.applied:
            m.events_applied.labels(partition=part).inc(result.applied)
        for n in result.sequence_lengths[:: max(1, len(result.sequence_lengths) // 64)].tolist():
            m.sequence_length.observe(n)
        if result.skipped:
            m.redelivered_skipped.inc(result.skipped)
        if timestamps_ms is not None:
            lat = (done_ms - np.asarray(timestamps_ms[result.skipped :], np.float64)) / 1000.0
            for v in lat[:: max(1, len(lat) // _LATENCY_SAMPLES)].tolist():
                m.event_to_store_seconds.observe(max(v, 0.0))
            if self.keep_latencies:
                self.latencies_ms.append(lat * 1000.0)
                self.commit_ms.append(done_ms)
        m.open_impressions.labels(partition=part).set(proc.join.open_count)
        m.store_users.labels(partition=part).set(proc.store.state.counters.get("users", 0))
        if self.stats.batches % _SIZE_EVERY == 1:
            m.store_bytes.labels(partition=part).set(proc.store.live_bytes())


def kafka_applier(
    kafka: KafkaConfig,
    worker: WorkerConfig,
    producer: Producer,
    metrics: Metrics,
    stats: WorkerStats,
    *,
    keep_latencies: bool = False,
    snapshots: Snapshots | None = None,
) -> BatchApplier:
    """The live workers' applier: samples and dead letters to the configured topics."""
    samples, dead = kafka_outputs(producer, kafka, metrics, stage="worker")
    return BatchApplier(
        worker,
        samples,
        dead,
        metrics,
        stats,
        source_topic=kafka.topic_events,
        keep_latencies=keep_latencies,
        snapshots=snapshots,
    )


def kafka_outputs(
    producer: Producer, kafka: KafkaConfig, metrics: Metrics, stage: str
) -> tuple[KafkaSampleSink, KafkaDeadLetterSink]:
    """The sample and dead-letter sinks of a worker: the configured topics."""
    return (
        KafkaSampleSink(producer, kafka.topic_samples),
        KafkaDeadLetterSink(DeadLetterWriter.from_config(producer, kafka, metrics), stage),
    )
