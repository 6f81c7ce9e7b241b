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
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from monitoring.metrics import Metrics
from streams.applier import BatchApplier, WorkerStats, kafka_applier
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.kafka import consumer_options
from streams.processor import BatchResult, PartitionProcessor
from streams.producer import ProduceError, Producer
from streams.store import PartitionStore, StoreError

log = logging.getLogger(__name__)
_OPEN_RETRY_S = 60.0  # how long to wait for a revoked owner to release a partition store
_RETRY_BACKOFF_S = 1.0  # pause before re-processing a batch whose delivery failed


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
        self.keep_latencies = False  # keep every event-to-store latency (benchmarks)
        self._lock = asyncio.Lock()
        self._producer: Producer | None = None
        self._applier: BatchApplier | None = None

    @property
    def latencies_ms(self) -> list[np.ndarray]:
        """Event-to-store latencies per batch when ``keep_latencies`` was set."""
        return self._applier.latencies_ms if self._applier is not None else []

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

    def _apply(self, proc: PartitionProcessor, records: list[Any]) -> BatchResult:
        assert self._applier is not None
        return self._applier.apply(
            proc,
            [r.offset for r in records],
            [r.key for r in records],
            [r.value for r in records],
            [r.timestamp for r in records],
        )

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
        self._applier = kafka_applier(
            self.kafka,
            self.cfg,
            self._producer,
            self.metrics,
            self.stats,
            keep_latencies=self.keep_latencies,
        )
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
                        try:
                            result = self._apply(proc, records)
                        except ProduceError as exc:
                            await self._recover(consumer, tp, exc)
                            continue
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

    async def _recover(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, exc: Exception
    ) -> None:
        """A batch could not be delivered: rebuild the partition from its store and retry.

        Nothing of the batch was committed, so reopening the store (which rebuilds the
        join and duplicate state) and seeking back re-processes it from scratch.
        """
        self.metrics.worker_batch_failures.inc()
        log.error(
            "partition %d: batch not delivered (%s); retrying from the store offset",
            tp.partition,
            exc,
        )
        self._close(tp.partition)
        proc = await self._open(tp.partition)
        self.processors[tp.partition] = proc
        consumer.seek(tp, proc.next_offset)
        await asyncio.sleep(_RETRY_BACKOFF_S)

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
