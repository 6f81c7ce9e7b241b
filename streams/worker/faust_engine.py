"""The stream worker on faust-streaming (``worker.engine = "faust"``).

A faust agent takes lum.events in batches (``Stream.take_events``, bounded by
``batch_max`` and ``batch_timeout_ms``) and hands each partition's slice to the same
:class:`BatchApplier` and :class:`PartitionProcessor` as the confluent-kafka engine, so both
engines have the same effect on the store and the topics. Partition stores open on
faust's ``on_partitions_assigned`` (and the consumer seeks to the store's offset) and
close on ``on_partitions_revoked``.

A batch whose sample blocks or dead letters could not be delivered is handled as the
confluent engine handles it: nothing of it was committed, so the partition stores are
reopened (rebuilding the join and duplicate state from their offsets) and the batch is
applied again from there, after a pause, until it goes through
(``worker_batch_failures`` counts each partition's failure). The records are still in
hand, so no seek is needed: seeking faust's consumer back would race the records it has
already buffered. ``consumer_lag{topic, partition}`` is set after each batch from the high
watermark the consumer's last fetch carried.

faust's per-event stream machinery caps this engine well below the confluent-kafka engine
(bench/ingest.py measures both); it is here for deployments that run their stream
processing as faust apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.kafka.producer import ProduceError, Producer
from streams.worker.applier import (
    RETRY_BACKOFF_S,
    BatchApplier,
    PartitionBatch,
    WorkerStats,
    kafka_applier,
)
from streams.worker.processor import OPEN_WAIT_S, PartitionProcessor, open_processor

log = logging.getLogger(__name__)


def build_app(
    kafka: KafkaConfig,
    store: StoreConfig,
    worker: WorkerConfig,
    events: EventConfig,
    bootstrap: str,
    root: Path,
    metrics: Metrics,
    stats: WorkerStats,
    stop: asyncio.Event | None = None,
) -> faust.App:
    """A faust app whose one agent applies lum.events to the partition stores.

    Args:
        stop: when given, the app stops once it is set (checked after each batch).
    """
    app = faust.App(
        worker.group_id,
        broker=[f"kafka://{b}" for b in bootstrap.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        topic_partitions=kafka.partitions,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=0.5,
        broker_max_poll_records=worker.batch_max,
        stream_buffer_maxsize=max(worker.batch_max, 4096),
        datadir=str(root / ".faust"),
    )
    topic = app.topic(kafka.topic_events, key_type=bytes, value_type=bytes)
    processors: dict[int, PartitionProcessor] = {}
    state: dict[str, Any] = {}

    def close(partition: int) -> None:
        proc = processors.pop(partition, None)
        if proc is not None:
            proc.close()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust types want *args
    async def on_revoked(app: Any, revoked: Any, *, signal: Any = None, **_: Any) -> None:
        for tp in revoked:
            if tp.topic == kafka.topic_events:
                close(tp.partition)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(app: Any, assigned: Any, *, signal: Any = None, **_: Any) -> None:
        for tp in assigned:
            if tp.topic != kafka.topic_events or tp.partition in processors:
                continue
            proc = open_processor(
                root, tp.partition, store, worker, events, metrics, wait_lock_s=OPEN_WAIT_S
            )
            processors[tp.partition] = proc
            await app.consumer.seek(tp, proc.next_offset)
        metrics.partitions_owned.set(len(processors))

    def reopen(partition: int) -> None:
        close(partition)
        processors[partition] = open_processor(
            root, partition, store, worker, events, metrics, wait_lock_s=OPEN_WAIT_S
        )

    async def deliver(applier: BatchApplier, todo: dict[int, list[Any]]) -> None:
        """Apply the partitions' slices of one batch, again and again until their samples
        and dead letters are delivered (the stores are reopened after a failure)."""
        while todo:
            try:
                applier.apply_many(
                    [
                        PartitionBatch(
                            processors[p],
                            [m.offset for m in msgs],
                            [m.key for m in msgs],
                            [m.value for m in msgs],
                            [int(m.timestamp * 1000) for m in msgs],
                        )
                        for p, msgs in todo.items()
                    ]
                )
                return
            except ProduceError as exc:
                for p in todo:
                    metrics.worker_batch_failures.inc()
                    log.error(
                        "partition %d: batch not delivered (%s); retrying from the store offset",
                        p,
                        exc,
                    )
                    reopen(p)
            await asyncio.sleep(RETRY_BACKOFF_S)
            # revoked meanwhile: the new owner re-reads them from its store
            todo = {p: msgs for p, msgs in todo.items() if p in processors}

    def lag(partition: int) -> None:
        proc = processors.get(partition)
        try:
            high = app.consumer.highwater(TP(kafka.topic_events, partition))
        except (AssertionError, KeyError, AttributeError):  # not assigned (any more)
            return
        if proc is not None and high is not None and high >= 0:
            metrics.consumer_lag.labels(topic=kafka.topic_events, partition=str(partition)).set(
                max(0, high - proc.next_offset)
            )

    @app.agent(topic)
    async def ingest(stream: Any) -> None:
        async for batch in stream.take_events(
            worker.batch_max, within=worker.batch_timeout_ms / 1000
        ):
            if "applier" not in state:
                state["producer"] = Producer(kafka, bootstrap, metrics=metrics)
                state["applier"] = kafka_applier(kafka, worker, state["producer"], metrics, stats)
            by_partition: dict[int, list[Any]] = {}
            for event in batch:
                by_partition.setdefault(event.message.partition, []).append(event.message)
            todo = {
                p: sorted(msgs, key=lambda m: m.offset)
                for p, msgs in by_partition.items()
                if p in processors  # else revoked meanwhile; the new owner re-reads them
            }
            await deliver(state["applier"], todo)
            for partition in todo:
                lag(partition)
            if stop is not None and stop.is_set():
                await app.stop()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def on_shutdown(app: Any, *, signal: Any = None, **_: Any) -> None:
        for partition in list(processors):
            close(partition)
        producer = state.get("producer")
        if producer is not None:
            producer.close()

    return app


def run_faust(
    kafka: KafkaConfig,
    store: StoreConfig,
    worker: WorkerConfig,
    events: EventConfig,
    bootstrap: str,
    root: Path,
    metrics: Metrics,
    *,
    idle_exit_s: float | None = None,
) -> WorkerStats:
    """Run the faust worker in the foreground until SIGINT/SIGTERM (or idle for
    ``idle_exit_s`` seconds after its first batch)."""
    import os
    import signal
    import time

    stats = WorkerStats(last_record_at=time.monotonic())
    root.mkdir(parents=True, exist_ok=True)
    app = build_app(kafka, store, worker, events, bootstrap, root, metrics, stats)
    runner = faust.Worker(app, loglevel="WARNING", quiet=True)

    if idle_exit_s is not None:
        last = {"applied": -1, "since": time.monotonic()}

        @app.timer(interval=0.5)
        async def idle_check() -> None:
            if stats.applied != last["applied"]:
                last["applied"], last["since"] = stats.applied, time.monotonic()
            elif stats.batches and time.monotonic() - last["since"] > idle_exit_s:
                os.kill(os.getpid(), signal.SIGTERM)  # faust's own orderly shutdown path

    with contextlib.suppress(SystemExit):
        runner.execute_from_commandline()
    return stats
