"""Run the stream worker on the configured engine (``worker.engine``): the one entry point
of ``lumstream worker`` and of anything else that wants a worker in the foreground.

Example:
    >>> stop = threading.Event()  # doctest: +SKIP
    >>> stats = run_worker(kafka, store, worker, events, bootstrap, root, metrics,
    ...                    stop=stop, idle_exit_s=5)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.worker.applier import WorkerStats


def run_worker(
    kafka: KafkaConfig,
    store: StoreConfig,
    worker: WorkerConfig,
    events: EventConfig,
    bootstrap: str,
    root: Path,
    metrics: Metrics,
    *,
    stop: threading.Event,
    idle_exit_s: float | None = None,
    on_batch: Callable[[WorkerStats], None] | None = None,
    create_topics: bool = True,
    snapshot_root: Path | None = None,
) -> WorkerStats:
    """Consume ``kafka.topic_events`` into the partition stores under ``root`` until
    ``stop`` is set or nothing arrived for ``idle_exit_s`` seconds.

    Args:
        kafka / store / worker / events: component configs; ``worker.engine`` picks the
            engine: ``confluent`` (the default,
            :class:`~streams.worker.confluent_engine.StreamWorker`) or ``faust``
            (:func:`~streams.worker.faust_engine.run_faust`).
        bootstrap: the cluster.
        root: the store directory (one RocksDB per partition beneath it).
        metrics: where to count.
        stop: set it to stop after the current batch. The faust engine stops on SIGINT or
            SIGTERM through faust's own handlers instead and does not look at it.
        idle_exit_s: return after this many seconds without records (None: never).
        on_batch: called with the running counts after each batch (confluent engine).
        create_topics: create the lumstream topics that are missing first.
        snapshot_root: durable snapshots of the partition stores (``store.snapshot_every_s``
            apart): a store missing here or older than its snapshot is restored from it
            (:mod:`streams.worker.snapshots`); None: no snapshots (confluent engine).
    Returns:
        the counts of this run.
    """
    if create_topics:
        from streams.kafka.topics import ensure_topics

        ensure_topics(kafka, bootstrap)
    if worker.engine == "faust":
        from streams.worker.faust_engine import run_faust

        return run_faust(
            kafka, store, worker, events, bootstrap, root, metrics, idle_exit_s=idle_exit_s
        )
    from streams.worker.confluent_engine import StreamWorker
    from streams.worker.snapshots import Snapshots

    snapshots = (
        Snapshots(snapshot_root, store.snapshot_every_s, keep=store.snapshot_keep, metrics=metrics)
        if snapshot_root is not None
        else None
    )
    engine = StreamWorker(kafka, store, worker, events, bootstrap, root, metrics, snapshots)
    return engine.run(stop, idle_exit_s=idle_exit_s, on_batch=on_batch)
