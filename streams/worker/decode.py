"""Decoding a batch of raw events into columns: a bulk fast path and the precise reference.

The stream worker's hot path. :func:`decode_batch` parses and type-checks each record in
C with a msgspec decoder built from the :class:`EventConfig` (types, lengths, allowed
actions, ts lower bound, no unknown fields), then checks what msgspec cannot express
column by column with C-level builtins, so a clean batch runs no Python-level loop per
event. If
any check fails it falls back to :func:`streams.contracts.events.decode` per record, which gives
each bad record its precise reason; both paths produce the same columns (tested).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import Meta

from streams.config import EventConfig
from streams.contracts.events import EventError, decode
from streams.contracts.ids import stable_ids

_TEXT = ("event_id", "user_id", "item_id", "condition")
_TS, _ACTION, _FEATURES = attrgetter("ts"), attrgetter("action"), attrgetter("features")
_FLOAT_MAX = sys.float_info.max
_TS_MAX = 2**62  # larger ints go to the reference (ts_out_of_range), never into int64 columns
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@dataclass
class EventColumns:
    """The valid events of a batch as columns (index = position in the input batch)."""

    index: np.ndarray  # (n,) int64 positions of these events in the batch
    event_id: list[str]
    user: np.ndarray  # (n,) int64 stable ids
    item: np.ndarray
    cond: np.ndarray
    cat: np.ndarray  # 0 when the event has no features.category
    action: np.ndarray  # (n,) uint8 index into EventConfig.actions
    ts: np.ndarray  # (n,) int64 ms


_I64 = np.empty(0, np.int64)
_EMPTY = EventColumns(_I64, [], _I64, _I64, _I64, _I64, np.empty(0, np.uint8), _I64)


@dataclass(frozen=True)
class BadRecord:
    index: int
    reason: str
    detail: str


def event_hash(event_id: str) -> int:
    """FNV-1a 64 of the UTF-8 bytes, then the length mixed in: the reference of
    :func:`event_hashes` (stable across processes and releases)."""
    h = 0xCBF29CE484222325
    data = event_id.encode()
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return ((h ^ len(data)) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF


def event_hashes(ids: Sequence[str]) -> np.ndarray:
    """(n,) uint64 :func:`event_hash` of every id, vectorised over the batch."""
    n = len(ids)
    if n == 0:
        return np.empty(0, np.uint64)
    joined = "".join(ids).encode()
    if joined.isascii():
        lens = np.fromiter(map(len, ids), np.int64, n)
    else:
        lens = np.fromiter((len(s.encode()) for s in ids), np.int64, n)
    buf = np.frombuffer(joined, np.uint8)
    starts = np.cumsum(lens) - lens
    h = np.full(n, _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(lens.max())):
            live = lens > j
            byte = np.zeros(n, np.uint64)
            byte[live] = buf[starts[live] + j]
            h = np.where(live, (h ^ byte) * _FNV_PRIME, h)
        return (h ^ lens.astype(np.uint64)) * _FNV_PRIME


@functools.cache
def _decoder(cfg: EventConfig) -> msgspec.json.Decoder[Any]:
    """A msgspec decoder that checks the contract's types and limits in C."""
    text = Annotated[str, Meta(min_length=1, max_length=cfg.max_id_chars)]
    finite = Annotated[float, Meta(ge=-_FLOAT_MAX, le=_FLOAT_MAX)]  # no inf from 1e999
    # int64 here (msgspec bounds are int64); the reference decides 2**63..2**64-1
    int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
    value = text | int64 | finite | bool
    features = Annotated[dict[text, value], Meta(max_length=cfg.max_features)]
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("event_id", text),
        ("user_id", text),
        ("item_id", text),
        ("action", Literal[cfg.actions]),
        ("condition", text),
        ("ts", Annotated[int, Meta(ge=cfg.min_ts_ms, le=_TS_MAX)]),
        ("features", features | None, None),
    ]
    struct = msgspec.defstruct("WireEvent", fields, forbid_unknown_fields=True)
    return msgspec.json.Decoder(struct)


@functools.cache
def _tolerant(cfg: EventConfig) -> Callable[[bytes], Any]:
    """``decode`` of the msgspec decoder, None instead of an exception."""
    decode_one = _decoder(cfg).decode
    errors = (msgspec.ValidationError, msgspec.DecodeError)

    def tolerant(raw: bytes) -> Any:
        try:
            return decode_one(raw)
        except errors:
            return None

    return tolerant


def _fast(
    values: Sequence[bytes], cfg: EventConfig, now_ms: np.ndarray
) -> tuple[EventColumns, list[int]]:
    """Columns of the records that pass every check in C or column-wise, and the
    positions of the rest (for the reference). A clean batch runs no per-record loop."""
    n = len(values)
    # One decode per record: joining records into one JSON array would let crafted
    # fragments merge into valid-looking events.
    objs: list[Any] = list(map(_tolerant(cfg), values))
    suspect = {i for i, o in enumerate(objs) if o is None} if None in objs else set()
    if suspect:
        keep = [i for i in range(n) if i not in suspect]
        objs = [objs[i] for i in keep]
    else:
        keep = list(range(n))
    sizes = np.fromiter(map(len, values), np.int64, n)
    bad = np.zeros(len(objs), bool)
    event_id, user, item, cond = (list(map(attrgetter(f), objs)) for f in _TEXT)
    for col in (event_id, user, item, cond):
        if any(map(str.isspace, col)):
            bad |= np.fromiter(map(str.isspace, col), bool, len(col))
    ts = np.fromiter(map(_TS, objs), np.int64, len(objs))
    kept = np.asarray(keep, np.int64)
    bad |= sizes[kept] > cfg.max_event_bytes
    bad |= ts > now_ms[kept] + cfg.max_future_ms
    features = list(map(_FEATURES, objs))
    cats: list[Any] = [None] * len(objs)
    if features.count(None) != len(features):
        cats = [f.get("category") if f else None for f in features]
        given = [c for c in cats if c is not None]
        if given and (set(map(type, given)) != {str} or any(map(str.isspace, given))):
            bad |= np.fromiter(
                (c is not None and (type(c) is not str or c.isspace()) for c in cats),
                bool,
                len(cats),
            )
    if bad.any():
        suspect.update(kept[bad].tolist())
        good = ~bad
        flags = good.tolist()
        objs = list(compress(objs, flags))
        event_id, user, item, cond = (
            list(compress(col, flags)) for col in (event_id, user, item, cond)
        )
        cats = list(compress(cats, flags))
        ts, kept = ts[good], kept[good]
    cat_ids = np.zeros(len(objs), np.int64)
    given = [c for c in cats if c is not None]
    if given:
        where = np.fromiter((c is not None for c in cats), bool, len(cats))
        cat_ids[where] = stable_ids(given)
    index_of = {a: i for i, a in enumerate(cfg.actions)}
    cols = EventColumns(
        index=kept,
        event_id=event_id,
        user=stable_ids(user),
        item=stable_ids(item),
        cond=stable_ids(cond),
        cat=cat_ids,
        action=np.fromiter(map(index_of.__getitem__, map(_ACTION, objs)), np.uint8, len(objs)),
        ts=ts,
    )
    return cols, sorted(suspect)


def _reference(
    values: Sequence[bytes], positions: list[int], cfg: EventConfig, now_ms: np.ndarray
) -> tuple[EventColumns, list[BadRecord]]:
    """The precise path, record by record (streams.contracts.events.decode) for ``positions``."""
    rejected: list[BadRecord] = []
    good = []
    for i in positions:
        try:
            good.append((i, decode(values[i], cfg, int(now_ms[i]))))
        except EventError as exc:
            rejected.append(BadRecord(i, exc.reason.value, exc.detail))
    index_of = {a: k for k, a in enumerate(cfg.actions)}
    evs = [e for _, e in good]
    cats = [e.features.get("category") if e.features else None for e in evs]
    cat_ids = np.zeros(len(evs), np.int64)
    where = [k for k, c in enumerate(cats) if c is not None]
    if where:
        cat_ids[where] = stable_ids([str(cats[k]) for k in where])
    cols = EventColumns(
        index=np.fromiter((i for i, _ in good), np.int64, len(good)),
        event_id=[e.event_id for e in evs],
        user=stable_ids([e.user_id for e in evs]),
        item=stable_ids([e.item_id for e in evs]),
        cond=stable_ids([e.condition for e in evs]),
        cat=cat_ids,
        action=np.fromiter((index_of[e.action] for e in evs), np.uint8, len(evs)),
        ts=np.fromiter((e.ts for e in evs), np.int64, len(evs)),
    )
    return cols, rejected


def _merge(a: EventColumns, b: EventColumns) -> EventColumns:
    """Both column sets in input order (by ``index``)."""
    order = np.argsort(np.concatenate((a.index, b.index)), kind="stable")
    ids = a.event_id + b.event_id
    return EventColumns(
        index=np.concatenate((a.index, b.index))[order],
        event_id=[ids[i] for i in order.tolist()],
        **{
            name: np.concatenate((getattr(a, name), getattr(b, name)))[order]
            for name in ("user", "item", "cond", "cat", "action", "ts")
        },
    )


def decode_batch(
    values: Sequence[bytes],
    cfg: EventConfig,
    now_ms: int | Sequence[int] | np.ndarray | None = None,
) -> tuple[EventColumns, list[BadRecord]]:
    """Raw event payloads -> (columns of the valid ones in input order, the rejected).

    Args:
        now_ms: the time the future bound on ``ts`` counts from: one value, or one per
            record (the processor passes the earlier of each record's Kafka timestamp and
            its clock); default the wall clock.
    """
    n = len(values)
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    now = np.full(n, now_ms, np.int64) if isinstance(now_ms, int) else np.asarray(now_ms, np.int64)
    cols, suspect = _fast(values, cfg, now) if n else (_EMPTY, [])
    if not suspect:
        return cols, []
    ref, rejected = _reference(values, suspect, cfg, now)
    return _merge(cols, ref), rejected
