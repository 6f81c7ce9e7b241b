"""Where events go: the :class:`EventSink` protocol, event-log files and a Kafka topic.

File sinks are atomic: they write ``<path>.tmp`` and rename it to ``path`` on
:meth:`close`; :meth:`abort` (or leaving a ``with`` block by an exception) removes the
temporary file, so a half-written log never looks complete. :class:`KafkaEventSink`
produces to a topic. File formats are those of :mod:`streams.contracts.eventlog`, chosen by
suffix (:func:`open_sink`); Parquet rows go in row groups of ``batch_rows``.
:func:`event_output` is the one way a run (generator, importers) opens either, and finishes
or abandons it.

Example:
    >>> import tempfile, pathlib
    >>> from streams.contracts.events import Event
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "events.jsonl"
    >>> with JsonlSink(path) as sink:
    ...     sink.write(Event("e1", "7", "42", "click", "Comedy", 1700000000000))
    >>> from streams.contracts.eventlog import iter_event_log
    >>> next(iter_event_log(path))[0]
    1
"""

from __future__ import annotations

import abc
import contextlib
import gzip
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Protocol, Self

import orjson

from streams.contracts.eventlog import JSONL_SUFFIXES, LOG_SUFFIXES, PARQUET_COLUMNS
from streams.contracts.events import Event, encode, event_key

if TYPE_CHECKING:
    from monitoring.metrics import Metrics
    from streams.config import KafkaConfig
    from streams.kafka.producer import Producer


class EventSink(Protocol):
    """Anything events can be written to (a log file, a Kafka topic)."""

    count: int

    def write(self, event: Event) -> None: ...

    def close(self) -> None: ...


class _FileSink(abc.ABC):
    """Shared part of the file sinks: temporary file, atomic rename, count, metric."""

    def __init__(self, path: str | Path, metrics: Metrics | None, source: str) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.count = 0
        self.closed = False
        self._produced = (
            metrics.events_produced.labels(topic="file", source=source) if metrics else None
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @abc.abstractmethod
    def _finish(self) -> None:
        """Flush and close the temporary file."""

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"{self.path}: write after close")

    def close(self) -> None:
        """Finish the file and move it into place (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._finish()
            fd = os.open(self.tmp_path, os.O_RDONLY)
            try:
                os.fsync(fd)  # the data is on disk before the rename makes it visible
            finally:
                os.close(fd)
        except BaseException:
            self.tmp_path.unlink(missing_ok=True)
            raise
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        """Drop everything written; ``path`` is left untouched (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._finish()
        finally:
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class JsonlSink(_FileSink):
    """One encoded event per line; gzip when the name ends in ``.gz``.

    Args:
        path: the final file name (written as ``<path>.tmp`` until :meth:`close`).
        metrics: counts ``events_produced{topic="file", source=source}`` when given.
        source: the metric's source label (e.g. ``import-movielens``).
    """

    def __init__(
        self, path: str | Path, *, metrics: Metrics | None = None, source: str = "log"
    ) -> None:
        super().__init__(path, metrics, source)
        # closed by close()/abort(), not by a with block: the sink outlives this call
        self._fh: IO[bytes] | gzip.GzipFile
        if self.path.name.endswith(".gz"):
            self._fh = gzip.GzipFile(self.tmp_path, "wb", compresslevel=6)
        else:
            self._fh = open(self.tmp_path, "wb", buffering=1 << 20)  # noqa: SIM115

    def write(self, event: Event) -> None:
        self._check_open()
        self._fh.write(encode(event) + b"\n")
        self.count += 1
        if self._produced is not None:
            self._produced.inc()

    def _finish(self) -> None:
        self._fh.close()


class ParquetSink(_FileSink):
    """Events as Parquet rows (see the module doc for the columns), batched row groups.

    Args:
        path: the final file name (written as ``<path>.tmp`` until :meth:`close`).
        batch_rows: rows per row group (the memory held before a group is written).
        metrics / source: as for :class:`JsonlSink`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        batch_rows: int = 100_000,
        metrics: Metrics | None = None,
        source: str = "log",
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(path, metrics, source)
        self._pa = pa
        self.batch_rows = batch_rows
        self.schema = pa.schema(
            [
                *((name, pa.string()) for name in PARQUET_COLUMNS[:5]),
                ("ts", pa.int64()),
                ("features", pa.string()),
            ]
        )
        self._writer = pq.ParquetWriter(self.tmp_path, self.schema, compression="zstd")
        self._columns: tuple[list[Any], ...] = tuple([] for _ in PARQUET_COLUMNS)

    def write(self, event: Event) -> None:
        self._check_open()
        c = self._columns
        c[0].append(event.event_id)
        c[1].append(event.user_id)
        c[2].append(event.item_id)
        c[3].append(event.action)
        c[4].append(event.condition)
        c[5].append(event.ts)
        c[6].append(
            None
            if event.features is None
            else orjson.dumps(dict(event.features), option=orjson.OPT_SORT_KEYS).decode()
        )
        self.count += 1
        if self._produced is not None:
            self._produced.inc()
        if len(c[0]) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._columns[0]:
            return
        table = self._pa.Table.from_arrays(
            [
                self._pa.array(col, type=f.type)
                for col, f in zip(self._columns, self.schema, strict=True)
            ],
            schema=self.schema,
        )
        self._writer.write_table(table)
        for col in self._columns:
            col.clear()

    def _finish(self) -> None:
        try:
            self._flush()
        finally:
            self._writer.close()


def open_sink(
    path: str | Path, *, metrics: Metrics | None = None, source: str = "log"
) -> JsonlSink | ParquetSink:
    """The file sink for ``path`` by its suffix: .jsonl/.ndjson[.gz] or .parquet."""
    name = Path(path).name
    if name.endswith(".parquet"):
        return ParquetSink(path, metrics=metrics, source=source)
    if name.endswith(JSONL_SUFFIXES):
        return JsonlSink(path, metrics=metrics, source=source)
    raise ValueError(
        f"{path}: unknown event-log format; use a name ending in {', '.join(LOG_SUFFIXES)}"
    )


class KafkaEventSink:
    """An :class:`~streams.sinks.events.EventSink` that produces events to a topic.

    Key = ``event_key(event)`` (the user id), value = ``encode(event)``. Delivered events
    count in ``events_produced{topic, source}``, failed ones in ``produce_errors{topic}``
    (the producer's metrics).

    Args:
        producer: a started :class:`Producer`, shared or owned (see ``owns_producer``).
        topic: where events go (normally ``KafkaConfig.topic_events``).
        source: the metric's source label (``generator``, ``import-movielens``, ...).
        owns_producer: :meth:`close` also closes the producer.
    """

    def __init__(
        self, producer: Producer, topic: str, *, source: str, owns_producer: bool = False
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.source = source
        self.owns_producer = owns_producer
        self.count = 0

    def write(self, event: Event) -> None:
        self.producer.send(self.topic, event_key(event), encode(event), source=self.source)
        self.count += 1

    def write_encoded(self, key: bytes | None, value: bytes) -> None:
        """One pre-encoded event (the generator's fast path)."""
        self.producer.send(self.topic, key, value, source=self.source)
        self.count += 1

    def write_many(self, pairs: Iterable[tuple[bytes | None, bytes]]) -> int:
        """Pre-encoded ``(key, value)`` pairs; returns how many were queued."""
        n = self.producer.send_many(self.topic, pairs, source=self.source)
        self.count += n
        return n

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for every queued event; raises ProduceError when some were not delivered."""
        self.producer.flush(timeout_s)

    def close(self) -> None:
        if self.owns_producer:
            self.producer.close()
        else:
            self.producer.flush()

    def __enter__(self) -> KafkaEventSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def event_output(
    out: str | Path | None = None,
    *,
    kafka: KafkaConfig | None = None,
    bootstrap: str | None = None,
    topic: str | None = None,
    metrics: Metrics | None = None,
    source: str,
) -> contextlib.AbstractContextManager[JsonlSink | ParquetSink | KafkaEventSink]:
    """The sink a run writes its events to, opened now, for a ``with`` block (enter it at
    once).

    Either the event log ``out`` (:func:`open_sink`: published when the block ends, removed
    when it raises) or ``topic`` (default ``kafka.topic_events``) on ``bootstrap``, through
    a producer of its own that is flushed and closed at the end: what was queued before an
    exception is still delivered, and the block's exception is the one raised.

    Args:
        source: the ``events_produced{source}`` label (``generator``, ``import-movielens``).
    Raises:
        ValueError: ``out`` has an unknown suffix; or neither ``out`` nor ``kafka`` and
            ``bootstrap`` are given.
        ProduceError: on leaving the block, events were not delivered.
    """
    if out is not None:
        log = open_sink(out, metrics=metrics, source=source)
        return _finished(log, finish=log.close, drop=log.abort)
    if kafka is None or bootstrap is None:
        raise ValueError("event_output: give a file (out) or a cluster (kafka and bootstrap)")
    from streams.kafka.producer import make_producer

    producer = make_producer(kafka, bootstrap, metrics=metrics)
    topic_sink = KafkaEventSink(
        producer, topic or kafka.topic_events, source=source, owns_producer=True
    )
    return _finished(topic_sink, finish=topic_sink.close, drop=topic_sink.close)


@contextlib.contextmanager
def _finished(
    sink: JsonlSink | ParquetSink | KafkaEventSink,
    *,
    finish: Callable[[], None],
    drop: Callable[[], None],
) -> Iterator[JsonlSink | ParquetSink | KafkaEventSink]:
    try:
        yield sink
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            drop()
        raise
    finish()
