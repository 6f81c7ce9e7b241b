"""The stream worker: lum.events -> RocksDB sequences + lum.samples + lum.deadletter.

One consumer in a consumer group (confluent-kafka: librdkafka fetches in C threads and
builds records in C, which profiling showed is where a pure-Python client spends a third
of the worker's time). Each poll returns up to ``batch_max`` records within
``batch_timeout_ms``; each partition's slice goes through :class:`PartitionProcessor`,
then (:class:`BatchApplier`):

1. sample blocks and dead letters are produced and flushed (acks=all),
2. the store batch (sequences, join state, offsets) is written and fsynced,
3. the Kafka offset is committed (only an optimisation: on assignment the worker seeks
   to the offset stored in RocksDB, which is the truth).

A crash between any two steps re-processes the batch from step 1: the store skips
nothing and doubles nothing; re-sent samples carry the same (partition, seq).

With ``worker.pipeline`` (the default) steps 1's flush and 2 of one poll run in a second
thread while the main thread polls and processes the next one (decoding, sequences, join
and histories are Python and numpy work that holds the GIL; the flush waits in
librdkafka and the fsync in RocksDB). The next poll is processed on top of the previous
one's sealed, not yet written, store batch (reads see it); its samples are sent only
after the previous flush and commit have finished, and its own commit again only after
its own flush. If a flush fails, every partition of both polls is reopened from its
store and re-read from its stored offset: the samples of the second poll that went out
were computed from the same records and state as the re-run's, so they are the same.

Partitions move between workers of the group with their RocksDB directories (a revoked
partition's store is closed, an assigned one opened and the consumer positioned at its
stored offset, both inside the rebalance callbacks).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaException, TopicPartition

from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.kafka.librdkafka import librdkafka_consumer_config
from streams.kafka.producer import ProduceError, Producer
from streams.worker.applier import (
    RETRY_BACKOFF_S,
    BatchApplier,
    PartitionBatch,
    StagedPoll,
    WorkerStats,
    kafka_applier,
)
from streams.worker.processor import OPEN_WAIT_S, PartitionProcessor, open_processor
from streams.worker.snapshots import Snapshots

log = logging.getLogger(__name__)


class StreamWorker:
    """Consume lum.events and keep the partition stores and the samples topic up to date.

    Args:
        kafka / store / worker / events: component configs.
        bootstrap: the cluster.
        root: the store directory (one RocksDB per partition beneath it).
        metrics: where to count.
        snapshots: durable snapshots of the partition stores: taken after commits, and
            restored when a partition's store is missing here or older (None: neither).
    Example:
        >>> w = StreamWorker(kafka, store, worker, events, bootstrap, root, m)  # doctest: +SKIP
        >>> w.run(threading.Event(), idle_exit_s=5)  # doctest: +SKIP
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        store: StoreConfig,
        worker: WorkerConfig,
        events: EventConfig,
        bootstrap: str,
        root: Path,
        metrics: Metrics,
        snapshots: Snapshots | None = None,
    ) -> None:
        self.kafka, self.store_cfg, self.cfg, self.events = kafka, store, worker, events
        self.snapshots = snapshots
        self.bootstrap = bootstrap
        self.root = root
        self.metrics = metrics
        self.processors: dict[int, PartitionProcessor] = {}
        self.stats = WorkerStats()
        self.keep_latencies = False  # keep every event-to-store latency (benchmarks)
        self._applier: BatchApplier | None = None
        # the poll whose flush and commit run in the committer thread (pipeline mode)
        self._inflight: tuple[StagedPoll, Future[None]] | None = None
        self._committer: ThreadPoolExecutor | None = None
        # partition -> Kafka timestamp (s) of the newest record applied, or the time of
        # assignment until one is: how far behind in time a lagging partition is
        self._behind_since: dict[int, float] = {}

    @property
    def latencies_ms(self) -> list[np.ndarray]:
        """Event-to-store latencies per batch when ``keep_latencies`` was set."""
        return self._applier.latencies_ms if self._applier is not None else []

    @property
    def commit_ms(self) -> list[float]:
        """Wall-clock commit time (ms) of each batch in ``latencies_ms``."""
        return self._applier.commit_ms if self._applier is not None else []

    # -- partition ownership ---------------------------------------------------------------
    def _open(self, partition: int) -> PartitionProcessor:
        return open_processor(
            self.root,
            partition,
            self.store_cfg,
            self.cfg,
            self.events,
            self.metrics,
            wait_lock_s=OPEN_WAIT_S,
            snapshots=self.snapshots,
        )

    def _close(self, partition: int) -> None:
        """Close a partition (revoked, or the worker stopping) after snapshotting its last
        commit, so the next owner, on any host, starts from where this one stopped."""
        proc = self.processors.pop(partition, None)
        if proc is not None:
            if self.snapshots is not None and self.snapshots.every_s > 0:
                self.snapshots.take(proc.store)
            proc.close()
        self.metrics.partitions_owned.set(len(self.processors))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.partition not in self.processors:
                self.processors[tp.partition] = self._open(tp.partition)
            tp.offset = self.processors[tp.partition].next_offset
            self._behind_since.setdefault(tp.partition, time.time())
        consumer.assign(partitions)
        self.metrics.partitions_owned.set(len(self.processors))
        for tp in partitions:
            self._lag(consumer, tp.partition, self.processors[tp.partition], cached=False)
        self.stats.last_record_at = time.monotonic()  # idle time counts from here
        log.info("assigned partitions %s", {tp.partition: tp.offset for tp in partitions})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle(consumer)  # the poll in flight is committed (or recovered) first
        for tp in partitions:
            self._close(tp.partition)
            self._behind_since.pop(tp.partition, None)
            for gauge in (self.metrics.consumer_lag, self.metrics.consumer_lag_seconds):
                with contextlib.suppress(KeyError):  # its lag is another owner's to report now
                    gauge.remove(self.kafka.topic_events, str(tp.partition))
        consumer.unassign()
        log.info("revoked partitions %s", sorted(tp.partition for tp in partitions))

    # -- the loop --------------------------------------------------------------------------
    def run(
        self,
        stop: threading.Event,
        *,
        idle_exit_s: float | None = None,
        on_batch: Callable[[WorkerStats], None] | None = None,
    ) -> WorkerStats:
        """Consume until ``stop`` is set (or nothing arrived for ``idle_exit_s``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        consumer = Consumer(
            librdkafka_consumer_config(self.kafka, self.bootstrap, self.cfg.group_id, "worker")
        )
        producer = Producer(
            self.kafka, self.bootstrap, metrics=self.metrics, compression_type=self.cfg.compression
        )
        self._applier = kafka_applier(
            self.kafka,
            self.cfg,
            producer,
            self.metrics,
            self.stats,
            keep_latencies=self.keep_latencies,
            snapshots=self.snapshots,
        )
        consumer.subscribe(
            [self.kafka.topic_events],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self.stats.last_record_at = time.monotonic()
        timeout_s = self.cfg.batch_timeout_ms / 1000
        if self.cfg.pipeline:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="lumstream-commit")
        try:
            while not stop.is_set():
                records = consumer.consume(num_messages=self.cfg.batch_max, timeout=timeout_s)
                if not records:
                    self._settle(consumer)
                    for p, proc in list(self.processors.items()):  # lag moves while idle
                        self._lag(consumer, p, proc)
                    idle = time.monotonic() - self.stats.last_record_at
                    if idle_exit_s is not None and self.processors and idle > idle_exit_s:
                        break
                    continue
                self.stats.last_record_at = time.monotonic()
                self._apply(consumer, records)
                if on_batch is not None:
                    on_batch(self.stats)
        finally:
            try:
                self._settle(consumer)
            finally:
                if self._committer is not None:
                    self._committer.shutdown()
                    self._committer = None
            consumer.close()
            for part in list(self.processors):
                self._close(part)
            producer.close()
            if self.snapshots is not None:
                self.snapshots.wait()  # a copy in flight finishes (its checkpoint is on disk)
        return self.stats

    def _apply(self, consumer: Consumer, records: list[Any]) -> None:
        by_partition: dict[int, list[Any]] = {}
        for rec in records:
            if rec.error() is not None:
                log.warning("consumer error: %s", rec.error())
                continue
            by_partition.setdefault(rec.partition(), []).append(rec)
        todo = [
            (p, self.processors[p], recs)
            for p, recs in by_partition.items()
            if p in self.processors
        ]  # else revoked while the records were in flight
        assert self._applier is not None
        applier = self._applier
        batches = [
            PartitionBatch(
                proc,
                [r.offset() for r in recs],
                [r.key() for r in recs],
                [r.value() for r in recs],
                [r.timestamp()[1] for r in recs],
            )
            for _, proc, recs in todo
        ]
        staged = applier.process_many(batches)
        if self._committer is None:  # one poll at a time
            try:
                applier.send(staged)
                applier.deliver(staged)
            except ProduceError as exc:
                self._recover_all(consumer, staged.partitions, exc)
                return
            self._finish(consumer, staged)
            return
        # the previous poll's flush and commit ran while this one was processed
        if not self._settle(consumer, also=staged.partitions):
            return  # recovered: this poll is re-read from the stores' offsets
        try:
            applier.send(staged)
        except ProduceError as exc:  # refused before anything was committed
            self._recover_all(consumer, staged.partitions, exc)
            return
        self._inflight = (staged, self._committer.submit(applier.deliver, staged))

    def _settle(self, consumer: Consumer, also: list[int] | None = None) -> bool:
        """Wait for the poll in flight (its flush and store commit) and account for it.

        Returns False when its flush failed: its partitions, and ``also`` (a poll already
        processed on top of it), were reopened from their stores and are re-read.
        """
        if self._inflight is None:
            return True
        staged, done = self._inflight
        self._inflight = None
        try:
            done.result()
        except ProduceError as exc:
            self._recover_all(consumer, sorted({*staged.partitions, *(also or [])}), exc)
            return False
        self._finish(consumer, staged)
        return True

    def _finish(self, consumer: Consumer, staged: StagedPoll) -> None:
        """A poll is durable: metrics, the Kafka offset commit (a hint), lag."""
        assert self._applier is not None
        results = self._applier.account(staged)
        commits = [
            TopicPartition(self.kafka.topic_events, r.partition, r.next_offset) for r in results
        ]
        try:
            consumer.commit(offsets=commits, asynchronous=True)
        except KafkaException as exc:  # the store holds the truth; this only costs a re-read
            log.warning("offset commit failed (%s); the store offsets still hold", exc)
        for b in staged.batches:
            p = b.proc.partition
            stamps = b.timestamps_ms or []
            if stamps and max(stamps) > 0:
                self._behind_since[p] = max(stamps) / 1000.0
            if self.processors.get(p) is b.proc:
                self._lag(consumer, p, b.proc)

    def _recover_all(self, consumer: Consumer, partitions: list[int], exc: Exception) -> None:
        for p in partitions:
            if p in self.processors:  # else revoked meanwhile (closed without its commit)
                self._recover(consumer, p, exc, pause=False)
        time.sleep(RETRY_BACKOFF_S)

    def _recover(
        self, consumer: Consumer, partition: int, exc: Exception, *, pause: bool = True
    ) -> None:
        """A batch could not be delivered: rebuild the partition from its store and retry.

        Nothing of the batch was committed, so reopening the store (which rebuilds the
        join and duplicate state) and seeking back re-processes it from scratch.
        """
        self.metrics.worker_batch_failures.inc()
        log.error(
            "partition %d: batch not delivered (%s); retrying from the store offset", partition, exc
        )
        self._close(partition)
        proc = self._open(partition)
        self.processors[partition] = proc
        consumer.seek(TopicPartition(self.kafka.topic_events, partition, proc.next_offset))
        if pause:
            time.sleep(RETRY_BACKOFF_S)

    def _lag(
        self, consumer: Consumer, partition: int, proc: PartitionProcessor, cached: bool = True
    ) -> None:
        """Set ``consumer_lag`` of an owned partition: records after the stored offset, and
        ``consumer_lag_seconds``: 0 when none, else how long ago the newest applied record
        was produced (before the first one: how long ago the partition was assigned).

        ``cached`` reads the high watermark the last fetch carried (no broker call); on
        assignment it is asked for, so the series exists before the first record arrives
        (an alert must see a worker that owns partitions but never consumes).
        """
        tp = TopicPartition(self.kafka.topic_events, partition)
        try:
            _, high = consumer.get_watermark_offsets(tp, timeout=5.0, cached=cached)
        except KafkaException as exc:
            log.warning("partition %d: no high watermark (%s)", partition, exc)
            return
        if high >= 0:
            lag = max(0, high - proc.next_offset)
            self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(partition)).set(lag)
            since = self._behind_since.get(partition, time.time())
            seconds = max(0.0, time.time() - since) if lag else 0.0
            self.metrics.consumer_lag_seconds.labels(topic=tp.topic, partition=str(partition)).set(
                seconds
            )
