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
import dataclasses
import gzip
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from streams.config import WorkerConfig


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


# -- metadata ------------------------------------------------------------------------------------
META_SUFFIX = ".meta.json"
META_FORMAT = 1


def meta_path(path: str | Path) -> Path:
    """The metadata file of an event log: ``<log>.meta.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + META_SUFFIX)


def read_meta(path: str | Path) -> dict[str, object] | None:
    """An event log's metadata (written by ``lumstream import``), or None when it has none.

    Keys: ``format``, ``importer``, ``recommended_label_window_s`` (float or None: the
    window the log's impression -> positive delays need), ``label_delays``, ``disorder``
    (how far the input was from event-time order), ``negatives`` (sampled impressions,
    or None).

    Raises:
        ValueError: the file exists but is not a metadata object of a known format.
    """
    p = meta_path(path)
    if not p.is_file():
        return None
    try:
        meta = orjson.loads(p.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{p}: not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise ValueError(f"{p}: not an event-log metadata file of format {META_FORMAT}")
    return meta


def recommended_window_s(path: str | Path) -> float | None:
    """The label window recorded for an event log by its import (None: none recorded)."""
    meta = read_meta(path)
    value = meta.get("recommended_label_window_s") if meta else None
    return float(value) if isinstance(value, int | float) else None


def window_for_log(worker: WorkerConfig, path: str | Path | None) -> tuple[WorkerConfig, str]:
    """The worker settings to replay the event log ``path`` with, and where the label window
    came from: the log's recommended window when ``worker.label_window_s`` is left at its
    default and the log records one (``"<meta file>"``), else the setting (``"settings"``).
    """
    default = WorkerConfig().label_window_s
    rec = recommended_window_s(path) if path is not None else None
    if rec is None or worker.label_window_s != default:
        return worker, "settings"
    return dataclasses.replace(worker, label_window_s=rec), str(meta_path(path))  # type: ignore[arg-type]
