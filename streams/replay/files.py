"""Event-log files as a replay source: files by name, then lines (JSONL) or rows (Parquet).

Example:
    >>> src = EventLogSource(expand_paths("logs/"))  # doctest: +SKIP
    >>> with src.open(None) as reader:  # doctest: +SKIP
    ...     for key, value, origin in reader: ...
"""

from __future__ import annotations

import glob
import gzip
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson

from streams.contracts.deadletters import SourceRef
from streams.contracts.eventlog import LOG_SUFFIXES, iter_event_log
from streams.replay.base import Origin, ReplayError, user_key

_FINGERPRINT_BYTES = 1 << 20  # hashed at each end of a file for its identity


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


class EventLogSource:
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

    def open(self, position: Mapping[str, Any] | None) -> EventLogReader:
        return EventLogReader(self, position)

    def origin(self, where: Origin) -> SourceRef:
        """``file:<path>`` as the topic, partition 0, the 1-based line or row as offset."""
        return SourceRef(f"file:{self.files[where[0]]}", 0, where[1])


def _describe(identity: Mapping[str, Any]) -> str:
    if identity.get("kind") == "file":
        files = identity.get("files") or []
        return ", ".join(f"{f.get('name')} ({f.get('size')} B)" for f in files)
    return orjson.dumps(dict(identity), default=str).decode()


class EventLogReader:
    """A pass over a :class:`EventLogSource` (see there for positions)."""

    def __init__(self, source: EventLogSource, position: Mapping[str, Any] | None) -> None:
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
