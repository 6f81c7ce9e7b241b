"""Event-log files: the on-disk form of lum.events, and reading them back.

Formats, chosen by suffix:

- ``.jsonl`` / ``.ndjson`` (``.gz`` for gzip): one canonical wire-format event per line
  (``streams.contracts.events.encode``), exactly the bytes that go to lum.events.
- ``.parquet``: columns event_id, user_id, item_id, action, condition (string), ts (int64,
  ms), features (string: the features object as canonical JSON, null when absent).

The writers are the file sinks of :mod:`streams.sinks.events`.
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson


class CorruptFile(OSError):
    """A compressed file that ends early or does not decompress; says where reading stopped."""


@contextlib.contextmanager
def decompressing(path: Path, where: Callable[[], int]) -> Iterator[None]:
    """Turn a truncated or corrupt gzip stream met while reading ``path`` into
    :class:`CorruptFile` naming the last line read (``where()``), instead of an
    ``EOFError`` or ``zlib.error`` traceback."""
    try:
        yield
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise CorruptFile(
            f"{path}: truncated or corrupt compressed data after line {where()} ({exc}); "
            "the lines before it were read"
        ) from None


PARQUET_COLUMNS = ("event_id", "user_id", "item_id", "action", "condition", "ts", "features")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
LOG_SUFFIXES = (*JSONL_SUFFIXES, ".parquet")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    with opener(path, "rb") as fh, decompressing(path, lambda: lineno):
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
    ``streams.contracts.events.decode``, which also rejects a corrupt line or row with its reason.
    """
    path = Path(path)
    if path.name.endswith(".parquet"):
        return _iter_parquet(path)
    return _iter_jsonl(path)
