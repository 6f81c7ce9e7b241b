"""Where events go: the :class:`EventSink` protocol, event-log files, and their reader.

File sinks are atomic: they write ``<path>.tmp`` and rename it to ``path`` on
:meth:`close`; :meth:`abort` (or leaving a ``with`` block by an exception) removes the
temporary file, so a half-written log never looks complete. The Kafka sink
(``streams.kafka.KafkaEventSink``) implements the same protocol.

Formats, chosen by suffix (:func:`open_sink`, :func:`iter_event_log`):

- ``.jsonl`` / ``.ndjson`` (``.gz`` for gzip): one canonical wire-format event per line
  (``streams.events.encode``), exactly the bytes that go to lum.events.
- ``.parquet``: columns event_id, user_id, item_id, action, condition (string), ts (int64,
  ms), features (string: the features object as canonical JSON, null when absent); rows in
  row groups of ``batch_rows``.

Example:
    >>> import tempfile, pathlib
    >>> from streams.events import Event
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "events.jsonl"
    >>> with JsonlSink(path) as sink:
    ...     sink.write(Event("e1", "7", "42", "click", "Comedy", 1700000000000))
    >>> next(iter_event_log(path))[0]
    1
"""

from __future__ import annotations

import abc
import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Protocol, Self

import orjson

from streams.events import Event, encode

if TYPE_CHECKING:
    from monitoring.metrics import Metrics

PARQUET_COLUMNS = ("event_id", "user_id", "item_id", "action", "condition", "ts", "features")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")


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
    if name.endswith(_JSONL_SUFFIXES):
        return JsonlSink(path, metrics=metrics, source=source)
    raise ValueError(
        f"{path}: unknown event-log format; use a name ending in "
        f"{', '.join((*_JSONL_SUFFIXES, '.parquet'))}"
    )


def _iter_jsonl(path: Path) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield lineno, line


def _iter_parquet(path: Path) -> Iterator[tuple[int, bytes]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:
        schema = pf.schema_arrow
        missing = [c for c in PARQUET_COLUMNS[:6] if c not in schema.names]
        if missing:
            raise ValueError(f"{path}: not an event log: missing column(s) {', '.join(missing)}")
        if "features" in schema.names and schema.field("features").type != pa.string():
            raise ValueError(
                f"{path}: column features must hold JSON strings, "
                f"not {schema.field('features').type}"
            )
        keys = sorted(c for c in PARQUET_COLUMNS if c in schema.names)  # encode()'s key order
        fi = keys.index("features") if "features" in keys else -1
        dumps, fragment = orjson.dumps, orjson.Fragment
        row = 0
        for batch in pf.iter_batches(batch_size=65_536, columns=keys):
            data = batch.to_pydict()
            for values in zip(*(data[k] for k in keys), strict=True):
                row += 1
                obj = {k: v for k, v in zip(keys, values, strict=True) if v is not None}
                if fi >= 0 and values[fi] is not None:
                    obj["features"] = fragment(values[fi])  # already JSON: embed as is
                yield row, dumps(obj)


def iter_event_log(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line or row number, raw event bytes) of a JSONL(.gz) or Parquet event log.

    Line numbers are 1-based physical lines (blank lines are skipped, not yielded);
    Parquet rows are numbered from 1. The bytes are wire-format events for
    ``streams.events.decode``, which also rejects a corrupt line or row with its reason.
    """
    path = Path(path)
    if path.name.endswith(".parquet"):
        return _iter_parquet(path)
    return _iter_jsonl(path)
