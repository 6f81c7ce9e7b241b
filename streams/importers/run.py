"""One import from start to end: what to read, where the events go (an event log or a
Kafka topic), the importer that reads it (``lumstream import``).

Example:
    >>> stats = run_import(MovieLensInput(Path("ml-latest-small")), EventConfig(),
    ...                    out="events.jsonl")  # doctest: +SKIP
    >>> print(stats.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from core.durable import write_json_atomic
from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig
from streams.contracts.eventlog import META_FORMAT, meta_path
from streams.importers.generic import GenericOptions, import_generic
from streams.importers.movielens import DEFAULT_CLICK_THRESHOLD, import_movielens
from streams.importers.rows import BadRow, ImportRun, ImportSetupError, ImportStats, WriteOptions


@dataclass(frozen=True)
class MovieLensInput:
    """A MovieLens directory (any flavour, see :mod:`streams.importers.movielens`)."""

    name: ClassVar[str] = "movielens"
    directory: Path
    click_threshold: float = DEFAULT_CLICK_THRESHOLD


@dataclass(frozen=True)
class GenericInput:
    """A CSV/TSV, JSONL or Parquet log read with a column mapping
    (:mod:`streams.importers.generic`)."""

    name: ClassVar[str] = "generic"
    file: Path
    options: GenericOptions


def run_import(
    what: MovieLensInput | GenericInput,
    events: EventConfig,
    *,
    out: str | Path | None = None,
    kafka: KafkaConfig | None = None,
    bootstrap: str | None = None,
    metrics: Metrics | None = None,
    strict: bool = False,
    on_bad: Callable[[BadRow], None] | None = None,
    progress: bool = False,
    stop: threading.Event | None = None,
    write: WriteOptions | None = None,
) -> ImportStats:
    """Import ``what`` into the event log ``out``, or else into ``kafka.topic_events`` on
    ``bootstrap`` (the lumstream topics created when missing).

    The log is written atomically: it appears when the import is complete, and nothing is
    left when it fails (also at a ``strict`` stop). Events queued for Kafka before a
    failure are still delivered (events are queued only once the input has been read
    and sorted). Counts ``import_rows``, ``events_rejected{stage="import"}`` and
    ``events_produced{source="import-<name>"}``.

    Args:
        events: the event contract every event must pass.
        strict: stop at the first bad row.
        on_bad: called with each bad row.
        progress: tqdm bars on stderr (when it is a terminal).
        stop: set it to end the import early (:class:`ImportInterrupted`; a log is then
            not written, events already queued for Kafka are delivered).
        write: event-time ordering (an external merge sort unless ``presorted``; the
            MovieLens importer sorts its ratings itself) and sampled negatives. Events
            reach the output when the input has been read. An event log gets a metadata
            file beside it (``streams.contracts.eventlog.meta_path``) with the input's
            disorder, the label delays and the recommended label window.
    Raises:
        ImportSetupError: the import cannot start (an unknown output format, a missing
            file or column).
        ImportAborted: ``strict`` and a bad row.
        ImportInterrupted: ``stop`` was set.
        ProduceError: events were not delivered.
    """
    from streams.sinks.events import event_output

    if out is None and kafka is not None and bootstrap is not None:
        from streams.kafka.topics import ensure_topics

        ensure_topics(kafka, bootstrap)
    try:
        output = event_output(
            out, kafka=kafka, bootstrap=bootstrap, metrics=metrics, source=f"import-{what.name}"
        )
    except ValueError as exc:  # an unknown output suffix
        raise ImportSetupError(str(exc)) from None
    write = write or WriteOptions()
    if isinstance(what, MovieLensInput):
        write = dataclasses.replace(write, presorted=True)  # sorted by the importer
    with output as sink:
        run = ImportRun(
            what.name,
            sink,
            events,
            metrics=metrics,
            strict=strict,
            on_bad=on_bad,
            progress=progress,
            stop=stop,
            write=write,
        )
        if isinstance(what, MovieLensInput):
            import_movielens(what.directory, run, click_threshold=what.click_threshold)
        else:
            import_generic(what.file, what.options, run)
    stats = run.finish()
    if out is not None:
        write_json_atomic(
            meta_path(out),
            {
                "format": META_FORMAT,
                "importer": what.name,
                "source": stats.source,
                "recommended_label_window_s": stats.recommended_label_window_s,
                "label_delays": stats.label_delays,
                "disorder": stats.disorder,
                "negatives": stats.negatives,
                "events": stats.events,
            },
        )
    return stats
