"""One replay from start to end, either mode: open the source, reach Kafka when it is needed,
assemble the outputs and run (``lumstream replay produce|backfill``).

The cluster comes from ``connect``, a factory of a context manager yielding the bootstrap
servers, entered only when the run needs Kafka and only after file sources were opened
(so a missing log fails before any broker starts).

Example:
    >>> stats = run_backfill("events.jsonl", Path("data/backfill/store"), 4, store=...,
    ...                      worker=..., events=..., kafka=..., connect=no_cluster,
    ...                      samples_out=Path("s.lsb"), deadletters_out=Path("d.jsonl"))
    ... # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig, ReplayConfig, StoreConfig, WorkerConfig
from streams.contracts.eventlog import window_for_log
from streams.replay.backfill import Backfill
from streams.replay.base import EventSource, ReplayError
from streams.replay.files import EventLogSource
from streams.replay.produce import Progress, ReplayStats, default_checkpoint, replay_produce
from streams.replay.sources import is_kafka, open_source
from streams.sinks.deadletters import DeadLetterSink
from streams.sinks.samples import SampleSink

log = logging.getLogger(__name__)

Connect = Callable[[], AbstractContextManager[str]]  # enters the cluster, yields bootstrap
ProgressFor = Callable[[EventSource], Progress]  # the progress callback of an opened source


def run_produce(
    spec: str,
    kafka: KafkaConfig,
    connect: Connect,
    *,
    checkpoint_dir: Path,
    checkpoint: Path | None = None,
    restart: bool = False,
    topic: str | None = None,
    from_ts: int | None = None,
    to_ts: int | None = None,
    cfg: ReplayConfig | None = None,
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
    progress: ProgressFor | None = None,
) -> ReplayStats:
    """Re-produce the source ``spec`` into ``topic`` (default ``kafka.topic_events``;
    created with the lumstream topics when missing), resumably
    (:func:`~streams.replay.produce.replay_produce`).

    Args:
        spec: the source (:func:`~streams.replay.sources.open_source`).
        connect: the cluster.
        checkpoint_dir / checkpoint: the checkpoint file, by default one per source and
            topic in ``checkpoint_dir``.
        restart: forget the checkpoint first.
        from_ts / to_ts: the time range of a ``kafka:`` source (ms).
        progress: makes the progress callback once the source is open.
    Returns:
        the stats, ``output`` naming the topic and checkpoint.
    Raises:
        ReplayError: the replay cannot start or go on (the message says why).
        ProduceError: records were not delivered (run again to resume).
    """
    source = None if is_kafka(spec) else open_source(spec, from_ts=from_ts, to_ts=to_ts)
    topic = topic or kafka.topic_events
    with connect() as bootstrap:
        from streams.kafka.topics import ensure_topics, topic_specs

        ensure_topics(kafka, bootstrap, topic_specs(kafka, topic))
        if source is None:
            source = open_source(
                spec, kafka=kafka, bootstrap=bootstrap, from_ts=from_ts, to_ts=to_ts
            )
        checkpoint = checkpoint or default_checkpoint(checkpoint_dir, source, topic)
        log.info("replay: %s -> topic %s, checkpoint %s", source.name, topic, checkpoint)
        stats = replay_produce(
            source,
            kafka,
            bootstrap,
            checkpoint,
            topic=topic,
            cfg=cfg,
            metrics=metrics,
            stop=stop,
            progress=progress(source) if progress is not None else None,
            restart=restart,
        )
    stats.output = f"topic {topic} (checkpoint {checkpoint})"
    return stats


def _log_window(worker: WorkerConfig, files: list[Path]) -> WorkerConfig:
    """The worker settings for a backfill of event logs: their recorded label window (the
    longest, when they differ) unless ``worker.label_window_s`` was set (see
    :func:`streams.contracts.eventlog.window_for_log`)."""
    best, origin = worker, "settings"
    for path in files:
        got, where = window_for_log(worker, path)
        if where != "settings" and got.label_window_s > best.label_window_s:
            best, origin = got, where
    if origin != "settings":
        log.info("replay: label window %g s, recorded in %s", best.label_window_s, origin)
    return best


def run_backfill(
    spec: str,
    root: Path,
    partitions: int,
    *,
    store: StoreConfig,
    worker: WorkerConfig,
    events: EventConfig,
    kafka: KafkaConfig,
    connect: Connect,
    samples_out: Path | None = None,
    deadletters_out: Path | None = None,
    from_ts: int | None = None,
    to_ts: int | None = None,
    cfg: ReplayConfig | None = None,
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
    progress: ProgressFor | None = None,
) -> ReplayStats:
    """Apply the source ``spec`` to the backfill store ``root`` of ``partitions``
    partitions with the worker's code (:class:`~streams.replay.backfill.Backfill`),
    resumably.

    Samples go to ``samples_out`` (a sample file) or else ``kafka.topic_samples``, dead
    letters to ``deadletters_out`` (JSON lines) or else ``kafka.topic_deadletter``; the
    cluster (``connect``) is entered only for a ``kafka:`` source or a Kafka output. A fresh
    backfill refuses output files that already hold records; a resumed one appends.

    Args:
        store / worker / events: the settings the store is built with (the live worker's);
            for event logs written by ``lumstream import``, ``worker.label_window_s`` left
            at its default becomes the logs' recorded window.
        progress: makes the progress callback once the source is open.
    Returns:
        the stats, ``output`` naming the store and both outputs.
    Raises:
        ReplayError: the backfill cannot start or go on (the message says why).
        FileExistsError: a fresh backfill's output file already holds records.
        ProduceError: records were not delivered to Kafka (run again to resume).
    """
    if partitions < 1:
        raise ReplayError(f"--partitions must be >= 1, got {partitions}")
    source = None if is_kafka(spec) else open_source(spec, from_ts=from_ts, to_ts=to_ts)
    if isinstance(source, EventLogSource):
        worker = _log_window(worker, source.files)
    needs_kafka = source is None or samples_out is None or deadletters_out is None
    cluster: AbstractContextManager[str | None] = (
        connect() if needs_kafka else contextlib.nullcontext(None)
    )
    with cluster as bootstrap:
        if bootstrap is not None:
            from streams.kafka.topics import ensure_topics

            ensure_topics(kafka, bootstrap)
        if source is None:
            source = open_source(
                spec, kafka=kafka, bootstrap=bootstrap, from_ts=from_ts, to_ts=to_ts
            )
        bf = Backfill(source, root, partitions, store, worker, events, cfg=cfg, metrics=metrics)
        log.info(
            "replay: backfill of %s into %s (%d partitions%s)",
            source.name,
            root,
            partitions,
            ", resuming" if bf.resuming else "",
        )
        with _outputs(
            kafka,
            bootstrap,
            samples_out,
            deadletters_out,
            metrics=bf.metrics,
            sync=store.sync_writes,
            fresh=not bf.resuming,
        ) as (samples, dead):
            stats = bf.run(
                samples, dead, stop=stop, progress=progress(source) if progress else None
            )
    stats.output = ", ".join(
        [
            f"store {root}",
            f"samples {samples_out or 'topic ' + kafka.topic_samples}",
            f"dead letters {deadletters_out or 'topic ' + kafka.topic_deadletter}",
        ]
    )
    return stats


@contextlib.contextmanager
def _outputs(
    kafka: KafkaConfig,
    bootstrap: str | None,
    samples_out: Path | None,
    deadletters_out: Path | None,
    *,
    metrics: Metrics,
    sync: bool,
    fresh: bool,
) -> Iterator[tuple[SampleSink, DeadLetterSink]]:
    """The backfill's sample and dead-letter sinks (files or Kafka, one producer shared by
    both), closed in reverse order on exit."""
    from streams.sinks.deadletters import DeadLetterFile, DeadLetterWriter, KafkaDeadLetterSink
    from streams.sinks.samples import KafkaSampleSink, SampleFileWriter

    with contextlib.ExitStack() as stack:
        producer = None
        if samples_out is None or deadletters_out is None:
            if bootstrap is None:
                raise ReplayError("samples or dead letters go to Kafka, but there is no cluster")
            from streams.kafka.producer import Producer

            producer = Producer(kafka, bootstrap, metrics=metrics)
            stack.callback(producer.close)
        samples: SampleSink
        if samples_out is not None:
            samples = SampleFileWriter(samples_out, sync=sync, must_be_new=fresh)
        else:
            assert producer is not None
            samples = KafkaSampleSink(producer, kafka.topic_samples)
        stack.callback(samples.close)
        dead: DeadLetterSink
        if deadletters_out is not None:
            dead = DeadLetterFile(deadletters_out, metrics, sync=sync, must_be_new=fresh)
        else:
            assert producer is not None
            dead = KafkaDeadLetterSink(DeadLetterWriter.from_config(producer, kafka, metrics))
        stack.callback(dead.close)
        yield samples, dead
