"""Generic importer: any CSV / JSONL / Parquet log -> events, by a column mapping.

The mapping names the input column of each event field (``--map``)::

    user_id=uid,item_id=sku,ts=time[,action=kind,condition=page,event_id=id,category=cat,
    features.device=dev]

``user_id``, ``item_id`` and ``ts`` are required; ``action`` and ``condition`` fall back
to constant defaults; ``category`` fills ``features["category"]`` and ``features.NAME``
any other feature. Without an ``event_id`` column the id is ``g-`` + 16 hex digits of a
BLAKE2b hash of the event's content (user, item, action, condition, ts, features), so a
re-import of the same data gives the same ids whatever the file format.

Example:
    >>> m = ColumnMap.parse("user_id=uid,item_id=sku,ts=time,category=cat")
    >>> m.user_id, m.features
    ('uid', (('category', 'cat'),))
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from streams.contracts.events import Reason
from streams.importers.readers import RowSource, read_rows
from streams.importers.rows import ImportRun, ImportSetupError, RowError, RowReason, short

TS_UNITS = ("s", "ms", "iso")
_REQUIRED = ("user_id", "item_id", "ts")
_OPTIONAL = ("action", "condition", "event_id")


@dataclass(frozen=True)
class ColumnMap:
    """Input column per event field (see the module doc for the ``--map`` syntax).

    Args:
        user_id / item_id / ts: required columns.
        action / condition / event_id: optional columns (None: default or derived).
        features: (feature name, column) pairs; ``category=col`` is ``features.category``.
    """

    user_id: str
    item_id: str
    ts: str
    action: str | None = None
    condition: str | None = None
    event_id: str | None = None
    features: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> ColumnMap:
        """``field=column,...`` -> ColumnMap; ImportSetupError names what is wrong."""
        fields: dict[str, str] = {}
        features: dict[str, str] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            key, sep, column = (s.strip() for s in part.partition("="))
            if not sep or not key or not column:
                raise ImportSetupError(f"--map {part!r}: expected FIELD=COLUMN")
            if key == "category" or key.startswith("features."):
                name = key.removeprefix("features.")
                if not name or name in features:
                    raise ImportSetupError(f"--map {part!r}: empty or repeated feature name")
                features[name] = column
            elif key in _REQUIRED or key in _OPTIONAL:
                if key in fields:
                    raise ImportSetupError(f"--map: {key} is mapped twice")
                fields[key] = column
            else:
                raise ImportSetupError(
                    f"--map {part!r}: unknown field {key!r}; use "
                    f"{', '.join((*_REQUIRED, *_OPTIONAL))}, category or features.NAME"
                )
        missing = [f for f in _REQUIRED if f not in fields]
        if missing:
            raise ImportSetupError(
                f"--map: missing {', '.join(missing)} (required: {', '.join(_REQUIRED)})"
            )
        return cls(**fields, features=tuple(features.items()))

    def columns(self) -> list[str]:
        """Every input column the mapping reads, without repeats."""
        cols = [
            self.user_id,
            self.item_id,
            self.ts,
            self.action,
            self.condition,
            self.event_id,
            *(c for _, c in self.features),
        ]
        return list(dict.fromkeys(c for c in cols if c is not None))


def parse_action_map(text: str) -> dict[str, str]:
    """``'view=impression,cart=click'`` -> {input value: action}."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        raw, sep, action = (s.strip() for s in part.partition("="))
        if not sep or not raw or not action:
            raise ImportSetupError(f"--action-map {part!r}: expected VALUE=ACTION")
        out[raw] = action
    if not out:
        raise ImportSetupError("--action-map: no VALUE=ACTION pairs")
    return out


@dataclass(frozen=True)
class GenericOptions:
    """How to read one generic log.

    Args:
        columns: the column mapping.
        ts_unit: ``s`` (seconds, may be fractional), ``ms`` or ``iso`` (ISO 8601 text; no
            offset means UTC). Datetime values (Parquet timestamps) work with any unit.
        action_map: input action value -> action; None passes values through unchanged.
        drop_unmapped: skip (count as dropped) rows whose action is not in action_map,
            instead of reporting them as bad rows.
        action: the action when no action column is mapped.
        condition: the condition when no condition column is mapped or the cell is empty.
        fmt: ``csv``, ``jsonl`` or ``parquet``; None picks by file suffix.
        delimiter / encoding: for CSV (and the text of JSONL for encoding).
    """

    columns: ColumnMap
    ts_unit: str = "ms"
    action_map: Mapping[str, str] | None = None
    drop_unmapped: bool = False
    action: str | None = None
    condition: str = "default"
    fmt: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8"


def _empty(value: object) -> bool:
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and math.isnan(value))
    )


def _id_value(field: str, column: str, value: object) -> object:
    """An id cell: empty -> missing_value; integral float (Parquet/pandas) -> int."""
    if _empty(value):
        raise RowError(RowReason.MISSING_VALUE, f"{field}: column {column!r} is empty")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value.strip() if isinstance(value, str) else value


def _number(value: object) -> float | int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            return float(text)
    raise ValueError


def parse_ts(value: object, unit: str) -> int:
    """A timestamp cell -> ms since the epoch; RowError(bad_timestamp) when unusable."""
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return round(dt.timestamp() * 1000)
    if unit == "iso":
        if not isinstance(value, str):
            raise RowError(
                RowReason.BAD_TIMESTAMP,
                f"ts: expected ISO 8601 text, got {type(value).__name__} {short(value)}",
            )
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            raise RowError(RowReason.BAD_TIMESTAMP, f"ts: {short(value)} is not ISO 8601") from None
        return parse_ts(dt, unit)
    try:
        number = _number(value)
    except ValueError:
        hint = " (use --ts-unit iso for dates)" if isinstance(value, str) else ""
        raise RowError(
            RowReason.BAD_TIMESTAMP,
            f"ts: {short(value)} is not a number of {'seconds' if unit == 's' else 'ms'}{hint}",
        ) from None
    if isinstance(number, float) and not math.isfinite(number):
        raise RowError(RowReason.BAD_TIMESTAMP, f"ts: {short(value)} is not finite")
    if unit == "s":
        return number * 1000 if isinstance(number, int) else round(number * 1000)
    return number if isinstance(number, int) else round(number)


def _check_utf8(name: str, value: object) -> None:
    """Undecodable input bytes arrive as lone surrogates: a ``non_utf8`` row error."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RowError(Reason.NON_UTF8, f"{name}: not valid UTF-8 in the input") from None


def _content_id(obj: Mapping[str, Any]) -> str:
    """``g-<hash>`` of the event's content (the same row gives the same id in any format).

    Raises:
        RowError: a cell holds bytes that are not UTF-8 (they arrive as lone surrogates):
            ``non_utf8``, naming the field, as the event contract would.
    """
    for name in ("user_id", "item_id", "condition"):
        _check_utf8(name, obj[name])
    for key_, value in (obj.get("features") or {}).items():
        _check_utf8(f"features.{key_}", key_)
        _check_utf8(f"features.{key_}", value)
    key = [
        str(obj["user_id"]),
        str(obj["item_id"]),
        obj["action"],
        str(obj["condition"]),
        str(obj["ts"]),
        sorted((obj.get("features") or {}).items()),
    ]
    digest = hashlib.blake2b(orjson.dumps(key, default=str), digest_size=8).hexdigest()
    return f"g-{digest}"


def row_to_event(row: Mapping[str, object], opts: GenericOptions) -> dict[str, Any] | None:
    """One input row -> an event dict (validated later), or None to drop the row."""
    m = opts.columns
    if m.action is not None:
        raw_action = row.get(m.action)
        if _empty(raw_action):
            raise RowError(RowReason.MISSING_VALUE, f"action: column {m.action!r} is empty")
    else:
        raw_action = opts.action
    action = raw_action.strip() if isinstance(raw_action, str) else raw_action
    if opts.action_map is not None:
        action = opts.action_map.get(str(raw_action).strip())
        if action is None:
            if opts.drop_unmapped:
                return None
            raise RowError(
                RowReason.UNMAPPED_ACTION,
                f"action: {short(raw_action)} is not in --action-map "
                f"({', '.join(opts.action_map)})",
            )
    condition = row.get(m.condition) if m.condition is not None else None
    obj: dict[str, Any] = {
        "user_id": _id_value("user_id", m.user_id, row.get(m.user_id)),
        "item_id": _id_value("item_id", m.item_id, row.get(m.item_id)),
        "action": action,
        "condition": opts.condition
        if _empty(condition)
        else _id_value("condition", str(m.condition), condition),
        "ts": parse_ts(_id_value("ts", m.ts, row.get(m.ts)), opts.ts_unit),
    }
    features = {
        name: (v.strip() if isinstance(v, str) else v)
        for name, col in m.features
        if not _empty(v := row.get(col))
    }
    if features:
        obj["features"] = features
    if m.event_id is not None:
        obj["event_id"] = _id_value("event_id", m.event_id, row.get(m.event_id))
    else:
        obj["event_id"] = _content_id(obj)
    return obj


def import_generic(path: Path, opts: GenericOptions, run: ImportRun) -> None:
    """Import one log file into ``run``'s sink, in event-time order (stable; input order
    when ``run`` was told the input is presorted): :meth:`ImportRun.flush` at the end.

    Args:
        path: a .csv/.tsv, .jsonl/.ndjson (optionally .gz) or .parquet file.
        opts: mapping and parsing options.
        run: validates, counts and writes.
    Raises:
        ImportSetupError: unreadable file, unknown format, or a mapped column that the
            file's header or schema lacks.
    """
    if opts.ts_unit not in TS_UNITS:
        raise ImportSetupError(f"--ts-unit {opts.ts_unit!r}: use one of {', '.join(TS_UNITS)}")
    if opts.columns.action is None and opts.action is None:
        raise ImportSetupError(
            "no action: map an action column (--map action=COL) or give a constant with --action"
        )
    if opts.action_map is None and opts.columns.action is None:
        assert opts.action is not None
        if opts.action not in run.cfg.actions:
            raise ImportSetupError(
                f"--action {opts.action!r} is not one of "
                f"{', '.join(run.cfg.actions)} (events.actions)"
            )
    if opts.action_map is not None:
        unknown = sorted(set(opts.action_map.values()) - set(run.cfg.actions))
        if unknown:
            raise ImportSetupError(
                f"--action-map maps to {unknown[0]!r}, which is not one of "
                f"{', '.join(run.cfg.actions)} (events.actions)"
            )
    file = str(path)
    source = read_rows(
        path, opts.columns.columns(), fmt=opts.fmt, delimiter=opts.delimiter, encoding=opts.encoding
    )
    run.stats.source = f"{source.fmt}: {path}"
    with contextlib.closing(source.rows):
        _import_rows(file, source, opts, run)
    run.flush()


def _import_rows(file: str, source: RowSource, opts: GenericOptions, run: ImportRun) -> None:
    bar = run.progress(source.rows, desc=f"reading {Path(file).name}", total=source.total)
    for line, row in bar:
        try:
            if isinstance(row, RowError):
                raise row
            obj = row_to_event(row, opts)
        except RowError as exc:
            run.bad(file, line, exc.reason, exc.detail)
            continue
        if obj is None:
            run.drop(file)
            continue
        events = run.check(file, line, [obj])
        if events is not None:
            run.write(events)
