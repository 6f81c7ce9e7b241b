"""Event sources for replay and backfill, chosen by name: event-log files or a Kafka range.

    open_source("events.jsonl")               # one log (.jsonl/.ndjson[.gz], .parquet)
    open_source("logs/")                      # every event log in a directory, by name
    open_source("logs/2026-01-*.jsonl.gz")    # a glob, by name
    open_source("file:events.parquet")        # the same, scheme spelt out
    open_source("kafka:lum.events", kafka=cfg, bootstrap=b, from_ts=t0, to_ts=t1)

A source yields ``(key, value, origin)`` in a fixed order, so a run can stop anywhere and a
later run resume after the same record: files one after another in name order, lines or
rows in file order; a Kafka range as in :mod:`streams.kafka_source`. ``value`` is the raw
wire-format event, untouched (a bad one is dead-lettered downstream, never here); ``key``
is the Kafka key, for files the event's user id (:func:`user_key`), as the importers and
the generator key them. Every source can say how far a reader got
(:meth:`SourceReader.position`, JSON) and start a reader there.

Example:
    >>> src = open_source("events.jsonl")  # doctest: +SKIP
    >>> with src.open(None) as reader:  # doctest: +SKIP
    ...     for key, value, origin in reader: ...
"""

from __future__ import annotations

import glob
import gzip
import hashlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

import orjson

from streams.deadletter import SourceRef
from streams.sinks import iter_event_log

if TYPE_CHECKING:
    from streams.config import KafkaConfig

Origin = tuple[int, int]  # (file index, line or row) or (partition, offset)
LOG_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".parquet")
_FINGERPRINT_BYTES = 1 << 20  # hashed at each end of a file for its identity


class ReplayError(RuntimeError):
    """A replay that cannot start or go on; the message says why and what to do."""


def user_key(value: bytes) -> bytes | None:
    """The Kafka key of a raw event: its ``user_id`` as ``streams.events.event_key`` gives
    it (an integer id as its decimal string); None when the bytes do not say. (orjson
    parses a whole event in about as long as a substring search takes in Python.)"""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    user = obj.get("user_id")
    if isinstance(user, str):
        return user.encode()
    if isinstance(user, int) and not isinstance(user, bool):
        return str(user).encode()
    return None


def parse_time(text: str) -> int:
    """``--from-ts``/``--to-ts``: ms since the epoch, or ISO 8601 (no offset = UTC)."""
    text = text.strip()
    try:
        return int(text.replace("_", ""))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(
            f"{text!r} is neither ms since the epoch nor ISO 8601 (2026-01-31T12:00:00Z)"
        ) from None
    return round((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


class SourceReader(Protocol):
    """One pass over a source from a position; iterate once, then close."""

    def __iter__(self) -> Iterator[tuple[bytes | None, bytes, Origin]]: ...

    def position(self) -> dict[str, Any]:
        """Where a reader opened later resumes: just after the last record yielded."""
        ...

    def done(self) -> int:
        """Progress units behind the reader (the source's ``unit``), from the very start."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class EventSource(Protocol):
    """Where replayed events come from (files, a Kafka topic range)."""

    name: str  # for messages: "events.jsonl", "kafka:lum.events"
    unit: str  # progress unit: "lines" or "records"

    def key(self) -> str:
        """A stable name of what was asked for (names the default checkpoint file)."""
        ...

    def identity(self) -> dict[str, Any]:
        """JSON that a resumed run must match; stored with checkpoints and stores."""
        ...

    def adopt(self, stored: Mapping[str, Any]) -> None:
        """Check that ``stored`` (an earlier :meth:`identity`) is this source and take over
        what it pinned (a Kafka range's offsets); ReplayError when it is another source."""
        ...

    def total(self) -> int:
        """Progress units in the whole source (may read the source once to count)."""
        ...

    def open(self, position: Mapping[str, Any] | None) -> SourceReader:
        """A reader from ``position`` (an earlier reader's :meth:`~SourceReader.position`),
        or from the start when None."""
        ...

    def origin(self, where: Origin) -> SourceRef:
        """The dead-letter source reference of a record."""
        ...


# -- event-log files ---------------------------------------------------------------------
def _is_log(path: Path) -> bool:
    return path.is_file() and path.name.endswith(LOG_SUFFIXES)


def expand_paths(spec: str) -> list[Path]:
    """A file, a directory (its event logs, not recursive) or a glob, sorted by name."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if _is_log(p)), key=lambda p: p.name)
        where = f"directory {spec}"
    elif glob.has_magic(spec):
        files = sorted((p for p in map(Path, glob.glob(spec)) if _is_log(p)), key=str)
        where = f"pattern {spec}"
    elif path.is_file():
        if not path.name.endswith(LOG_SUFFIXES):
            raise ReplayError(f"{spec}: not an event log; names end in {', '.join(LOG_SUFFIXES)}")
        return [path.resolve()]
    else:
        raise ReplayError(f"{spec}: no such file or directory")
    if not files:
        raise ReplayError(f"{where}: no event logs ({', '.join(LOG_SUFFIXES)})")
    return [p.resolve() for p in files]


def fingerprint(path: Path) -> dict[str, Any]:
    """Name, size and a hash of the first and last MiB: the file's identity for resuming
    (O(1) to compute; a log appended to or rewritten is another source)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        digest.update(fh.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            fh.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            digest.update(fh.read())
    return {"name": path.name, "size": size, "sha256_ends": digest.hexdigest()}


def count_units(path: Path) -> int:
    """Lines of a JSONL log (a last line without newline counts), rows of a Parquet one."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as pf:
            return int(pf.metadata.num_rows)
    opener = gzip.open if path.name.endswith(".gz") else open
    lines, last = 0, b"\n"
    with opener(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


class FileSource:
    """Event logs read in order: files by name, then lines (JSONL) or rows (Parquet).

    Positions are ``{"file": i, "line": n}`` (the last record done: line or row ``n`` of
    the ``i``-th file); progress counts lines/rows. Resuming re-reads the skipped part of
    the current file without decoding it (Parquet rows are rebuilt, so that is slower).

    Args:
        files: the logs, in replay order (see :func:`expand_paths`).
    """

    unit = "lines"

    def __init__(self, files: list[Path]) -> None:
        if not files:
            raise ReplayError("no event logs to replay")
        self.files = files
        self.name = files[0].name if len(files) == 1 else f"{len(files)} logs in {files[0].parent}"
        self._counts: list[int] | None = None
        self._identity: dict[str, Any] | None = None

    def key(self) -> str:
        return "file:" + "|".join(str(p) for p in self.files)

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = {"kind": "file", "files": [fingerprint(p) for p in self.files]}
        return self._identity

    def adopt(self, stored: Mapping[str, Any]) -> None:
        if dict(stored) != self.identity():
            raise ReplayError(
                f"the event logs differ from the ones this run started with "
                f"(names, sizes or contents): {_describe(stored)} != {_describe(self.identity())}"
            )

    def counts(self) -> list[int]:
        if self._counts is None:
            self._counts = [count_units(p) for p in self.files]
        return self._counts

    def total(self) -> int:
        return sum(self.counts())

    def open(self, position: Mapping[str, Any] | None) -> FileReader:
        return FileReader(self, position)

    def origin(self, where: Origin) -> SourceRef:
        """``file:<path>`` as the topic, partition 0, the 1-based line or row as offset."""
        return SourceRef(f"file:{self.files[where[0]]}", 0, where[1])


def _describe(identity: Mapping[str, Any]) -> str:
    if identity.get("kind") == "file":
        files = identity.get("files") or []
        return ", ".join(f"{f.get('name')} ({f.get('size')} B)" for f in files)
    return orjson.dumps(dict(identity), default=str).decode()


class FileReader:
    """A pass over a :class:`FileSource` (see there for positions)."""

    def __init__(self, source: FileSource, position: Mapping[str, Any] | None) -> None:
        self.source = source
        self._file = int(position["file"]) if position else 0
        self._line = int(position["line"]) if position else 0
        self._lines_before: int | None = None  # units in files before the current one
        self._it: Iterator[tuple[int, bytes]] | None = None

    def __iter__(self) -> Iterator[tuple[bytes | None, bytes, Origin]]:
        files = self.source.files
        while self._file < len(files):
            skip = self._line
            self._it = iter_event_log(files[self._file])
            for line, value in self._it:
                if line <= skip:
                    continue
                self._line = line
                yield user_key(value), value, (self._file, line)
            self._it = None
            self._file += 1
            self._line = 0
            self._lines_before = None

    def position(self) -> dict[str, Any]:
        return {"file": self._file, "line": self._line}

    def done(self) -> int:
        counts = self.source.counts()
        if self._lines_before is None:
            self._lines_before = sum(counts[: self._file])
        return self._lines_before + (
            min(self._line, counts[self._file]) if self._file < len(counts) else 0
        )

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()  # the generator closes its file

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- choosing a source by name -----------------------------------------------------------
def open_source(
    spec: str,
    *,
    kafka: KafkaConfig | None = None,
    bootstrap: str | None = None,
    from_ts: int | None = None,
    to_ts: int | None = None,
) -> EventSource:
    """The source named by ``spec``: ``kafka:TOPIC``, ``file:PATH`` or a plain path/glob.

    Args:
        spec: see the module doc.
        kafka / bootstrap: the cluster, for ``kafka:`` sources.
        from_ts / to_ts: the time range (ms) of a ``kafka:`` source; files refuse them
            (filter a log by time with the importers instead).
    """
    scheme, sep, rest = spec.partition(":")
    if sep and scheme == "kafka":
        if not rest:
            raise ReplayError("kafka: source needs a topic, e.g. kafka:lum.events")
        if kafka is None or bootstrap is None:
            raise ReplayError(f"{spec}: a Kafka source needs a cluster")
        from streams.kafka_source import KafkaSource

        return KafkaSource(kafka, bootstrap, rest, from_ts, to_ts)
    if from_ts is not None or to_ts is not None:
        raise ReplayError("--from-ts/--to-ts select a time range of a kafka:TOPIC source only")
    path = rest if sep and scheme == "file" else spec
    return FileSource(expand_paths(path))
