"""The stream worker: lum.events -> RocksDB sequences + lum.samples + lum.deadletter.

One asyncio consumer (aiokafka, the client faust-streaming is built on) in a consumer
group; each poll returns up to ``batch_max`` records within ``batch_timeout_ms``; each
partition's slice goes through :class:`PartitionProcessor` on the event loop (a batch
takes well under a second, far inside the group session timeout), then:

1. sample blocks and dead letters are produced and flushed (acks=all),
2. the store batch (sequences, join state, offsets) is written and fsynced,
3. the Kafka offset is committed (only an optimisation: on assignment the worker seeks
   to the offset stored in RocksDB, which is the truth).

A crash between any two steps re-processes the batch from step 1: the store skips
nothing and doubles nothing; re-sent samples carry the same (partition, seq).
Partitions move between workers of the group with their RocksDB directories
(``on_partitions_revoked`` closes, ``on_partitions_assigned`` opens and seeks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.deadletter import DeadLetterWriter, SourceRef
from streams.kafka import consumer_options
from streams.processor import BatchResult, PartitionProcessor
from streams.producer import Producer
from streams.samples import encode_block, split_blocks
from streams.store import PartitionStore, StoreError

log = logging.getLogger(__name__)
_OPEN_RETRY_S = 60.0  # how long to wait for a revoked owner to release a partition store


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


class StreamWorker:
    """Consume lum.events and keep the partition stores and the samples topic up to date.

    Args:
        kafka / store / worker / events: component configs.
        bootstrap: the cluster.
        root: the store directory (one RocksDB per partition beneath it).
        metrics: where to count.
    Example:
        >>> w = StreamWorker(kafka, store, worker, events, bootstrap, root, m)  # doctest: +SKIP
        >>> asyncio.run(w.run(stop_event))  # doctest: +SKIP
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
    ) -> None:
        self.kafka, self.store_cfg, self.cfg, self.events = kafka, store, worker, events
        self.bootstrap = bootstrap
        self.root = root
        self.metrics = metrics
        self.processors: dict[int, PartitionProcessor] = {}
        self.stats = WorkerStats()
        self.latencies_ms: list[np.ndarray] = []  # event-to-store, kept for benchmarks
        self.keep_latencies = False
        self._lock = asyncio.Lock()
        self._producer: Producer | None = None
        self._dead: DeadLetterWriter | None = None

    # -- partition ownership ---------------------------------------------------------------
    async def _open(self, partition: int) -> PartitionProcessor:
        deadline = time.monotonic() + _OPEN_RETRY_S
        while True:
            try:
                store = PartitionStore(self.root, partition, self.store_cfg)
                return PartitionProcessor(store, self.cfg, self.events, self.metrics)
            except StoreError as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                log.info(
                    "partition %d store still locked by its previous owner; retrying", partition
                )
                await asyncio.sleep(0.5)

    def _close(self, partition: int) -> None:
        proc = self.processors.pop(partition, None)
        if proc is not None:
            proc.close()
        self.metrics.partitions_owned.set(len(self.processors))

    def _listener(self, consumer: AIOKafkaConsumer) -> ConsumerRebalanceListener:
        worker = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Any) -> None:
                async with worker._lock:
                    for tp in revoked:
                        worker._close(tp.partition)
                    log.info("revoked partitions %s", sorted(tp.partition for tp in revoked))

            async def on_partitions_assigned(self, assigned: Any) -> None:
                async with worker._lock:
                    for tp in assigned:
                        if tp.partition not in worker.processors:
                            worker.processors[tp.partition] = await worker._open(tp.partition)
                        consumer.seek(tp, worker.processors[tp.partition].next_offset)
                    worker.metrics.partitions_owned.set(len(worker.processors))
                    log.info(
                        "assigned partitions %s",
                        {
                            tp.partition: worker.processors[tp.partition].next_offset
                            for tp in assigned
                        },
                    )

        return Listener()

    # -- one batch -------------------------------------------------------------------------
    def _apply(self, proc: PartitionProcessor, records: list[Any]) -> BatchResult:
        t0 = time.perf_counter()
        result = proc.process(
            [r.offset for r in records], [r.key for r in records], [r.value for r in records]
        )
        assert self._producer is not None
        assert self._dead is not None
        if result.samples is not None:
            key = b"p%d" % proc.partition
            blocks = split_blocks(result.samples, self.cfg.max_samples_per_message)
            self._producer.send_many(
                self.kafka.topic_samples, ((key, encode_block(b)) for b in blocks)
            )
            self.stats.samples += len(result.samples)
            self.stats.positives += int(result.samples.rows["label"].sum())
            self.stats.history_events += int(result.samples.hist_lengths.sum())
        for d in result.dead_letters:
            self._dead.send(
                d.value,
                d.key,
                d.reason,
                d.detail,
                SourceRef(self.kafka.topic_events, proc.partition, d.offset),
                stage="worker",
            )
        self._producer.flush()
        proc.commit()
        done = time.time() * 1000
        self.metrics.batch_apply_seconds.observe(time.perf_counter() - t0)
        self.metrics.batches_applied.inc()
        if result.applied:
            self.metrics.events_applied.labels(partition=str(proc.partition)).inc(result.applied)
        if result.skipped:
            self.metrics.redelivered_skipped.inc(result.skipped)
        stamps = np.fromiter((r.timestamp for r in records[result.skipped :]), np.float64)
        lat = (done - stamps) / 1000.0
        for v in lat[:: max(1, len(lat) // 256)].tolist():
            self.metrics.event_to_store_seconds.observe(max(v, 0.0))
        if self.keep_latencies:
            self.latencies_ms.append(lat * 1000.0)
        self.metrics.open_impressions.labels(partition=str(proc.partition)).set(
            proc.join.open_count
        )
        return result

    async def run(
        self,
        stop: asyncio.Event,
        *,
        idle_exit_s: float | None = None,
        on_batch: Callable[[WorkerStats], None] | None = None,
    ) -> WorkerStats:
        """Consume until ``stop`` is set (or nothing arrived for ``idle_exit_s``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        options = consumer_options(self.kafka, self.cfg.group_id) | {
            "bootstrap_servers": self.bootstrap,
            "max_poll_records": self.cfg.batch_max,
            "fetch_max_bytes": 64 * 1024 * 1024,
            "max_partition_fetch_bytes": 16 * 1024 * 1024,
        }
        consumer = AIOKafkaConsumer(**options)
        self._producer = Producer(self.kafka, self.bootstrap, metrics=self.metrics)
        self._dead = DeadLetterWriter.from_config(self._producer, self.kafka, self.metrics)
        await consumer.start()
        consumer.subscribe([self.kafka.topic_events], listener=self._listener(consumer))
        self.stats.last_record_at = time.monotonic()
        try:
            while not stop.is_set():
                data = await consumer.getmany(
                    timeout_ms=self.cfg.batch_timeout_ms, max_records=self.cfg.batch_max
                )
                if not data:
                    idle = time.monotonic() - self.stats.last_record_at
                    if idle_exit_s is not None and self.processors and idle > idle_exit_s:
                        break
                    continue
                self.stats.last_record_at = time.monotonic()
                async with self._lock:
                    for tp, records in data.items():
                        proc = self.processors.get(tp.partition)
                        if proc is None or not records:
                            continue  # revoked while the records were in flight
                        result = self._apply(proc, records)
                        self.stats.applied += result.applied
                        self.stats.skipped += result.skipped
                        self.stats.dead_letters += len(result.dead_letters)
                        self.stats.batches += 1
                        await self._commit(consumer, tp, result.next_offset)
                        self._lag(consumer, tp)
                if on_batch is not None:
                    on_batch(self.stats)
        finally:
            await consumer.stop()
            for part in list(self.processors):
                self._close(part)
            self._producer.close()
        return self.stats

    async def _commit(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        try:
            await consumer.commit({tp: OffsetAndMetadata(offset, "")})
        except Exception as exc:  # the store holds the truth; a failed commit only costs a re-read
            log.warning("offset commit for %s failed (%s); the store offset still holds", tp, exc)

    def _lag(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        high = consumer.highwater(tp)
        proc = self.processors.get(tp.partition)
        if high is not None and proc is not None:
            self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(0, high - proc.next_offset)
            )
