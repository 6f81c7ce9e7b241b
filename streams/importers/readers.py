"""Row readers for the generic importer: CSV, JSONL and Parquet -> (line, row dict).

Each reader yields ``(line, row)`` with ``row`` a dict of the requested columns, or
``(line, RowError)`` for a row that cannot be read, and carries on with the next row.
``line`` is the 1-based physical line (CSV: the record's last line, JSONL: the line) or
the 1-based row number (Parquet). A requested column that the CSV header or the Parquet
schema lacks is an :class:`ImportSetupError` before any row is read.

Example:
    >>> detect_format(Path("clicks.csv.gz")), detect_format(Path("log.ndjson"))
    ('csv', 'jsonl')
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from streams.contracts.eventlog import decompressing
from streams.contracts.events import EventError, loads
from streams.importers.rows import ImportSetupError, RowError, RowReason

FORMATS = ("csv", "jsonl", "parquet")
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}

Row = dict[str, object]
RowGen = Generator[tuple[int, Row | RowError], None, None]


@dataclass
class RowSource:
    """The rows of one file (a generator: close it when stopping early), their number
    when known without reading the file, and the format."""

    rows: RowGen
    total: int | None
    fmt: str


def detect_format(path: Path) -> str:
    """``csv``, ``jsonl`` or ``parquet`` from the suffix (a trailing ``.gz`` is skipped)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise ImportSetupError(
            f"{path}: cannot tell the format from the name; use --format {'|'.join(FORMATS)}"
        )
    return fmt


def _open_text(path: Path, encoding: str) -> IO[str]:
    # utf-8-sig drops a byte-order mark; undecodable bytes become lone surrogates, which
    # the event contract rejects as non_utf8 in the cells that are used.
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding, errors="surrogateescape", newline="")
    return path.open(encoding=encoding, errors="surrogateescape", newline="")


def _csv_rows(path: Path, columns: list[str], delimiter: str, encoding: str) -> RowGen:
    """Read and check the header now; the returned generator reads the rows."""
    fh = _open_text(path, encoding)
    try:
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            header = []
        except csv.Error as exc:
            raise ImportSetupError(f"{path}:1: unreadable header: {exc}") from None
        index: dict[str, int] = {}
        for i, name in enumerate(header):
            index.setdefault(name, i)
        missing = [c for c in columns if c not in index]
        if missing:
            raise ImportSetupError(
                f"{path}: no column {missing[0]!r} in the header "
                f"({', '.join(header) or 'empty file'})"
            )
    except BaseException:
        fh.close()
        raise
    return _csv_body(path, fh, reader, [(c, index[c]) for c in columns], len(header))


def _csv_body(
    path: Path, fh: IO[str], reader: Any, wanted: list[tuple[str, int]], width: int
) -> RowGen:
    with fh, decompressing(path, lambda: reader.line_num):
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, RowError(RowReason.MALFORMED_ROW, f"CSV: {exc}")
                continue
            if not fields:
                continue  # blank line
            if len(fields) != width:
                yield (
                    reader.line_num,
                    RowError(
                        RowReason.WRONG_COLUMN_COUNT,
                        f"expected {width} fields as in the header, got {len(fields)}",
                    ),
                )
                continue
            yield reader.line_num, {c: fields[i] for c, i in wanted}


def _jsonl_rows(path: Path, columns: list[str]) -> RowGen:
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    with opener(path, "rb") as fh, decompressing(path, lambda: lineno):
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = loads(line)
            except EventError as exc:
                yield lineno, RowError(exc.reason, exc.detail)
                continue
            if not isinstance(obj, dict):
                yield (
                    lineno,
                    RowError(
                        RowReason.MALFORMED_ROW, f"expected a JSON object, got {type(obj).__name__}"
                    ),
                )
                continue
            yield lineno, {c: obj.get(c) for c in columns}


def _parquet_rows(path: Path, columns: list[str]) -> RowGen:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:
        row = 0
        for batch in pf.iter_batches(batch_size=65_536, columns=columns):
            for values in batch.to_pylist():
                row += 1
                yield row, values


def read_rows(
    path: Path,
    columns: list[str],
    *,
    fmt: str | None = None,
    delimiter: str = ",",
    encoding: str = "utf-8",
) -> RowSource:
    """The rows of ``path`` restricted to ``columns``.

    Args:
        path: the input file.
        columns: the columns to read (all must exist in a CSV header or Parquet schema).
        fmt: ``csv``, ``jsonl`` or ``parquet``; None: by suffix (``.tsv`` reads tabs).
        delimiter: CSV field separator.
        encoding: CSV text encoding (JSONL is always UTF-8).
    Raises:
        ImportSetupError: missing file, unknown format, missing column.
    """
    if not path.is_file():
        raise ImportSetupError(f"{path}: no such file")
    fmt = fmt or detect_format(path)
    if fmt == "csv":
        if path.name.lower().removesuffix(".gz").endswith(".tsv") and delimiter == ",":
            delimiter = "\t"
        return RowSource(_csv_rows(path, columns, delimiter, encoding), None, fmt)
    if fmt == "jsonl":
        return RowSource(_jsonl_rows(path, columns), None, fmt)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.read_metadata(path)
            names = meta.schema.to_arrow_schema().names
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for non-Parquet
            raise ImportSetupError(f"{path}: not a readable Parquet file: {exc}") from None
        missing = [c for c in columns if c not in names]
        if missing:
            raise ImportSetupError(
                f"{path}: no column {missing[0]!r} in the schema ({', '.join(names)})"
            )
        return RowSource(_parquet_rows(path, columns), meta.num_rows, fmt)
    raise ImportSetupError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
