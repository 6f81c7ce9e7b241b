"""Decoding a batch of raw events into columns: a bulk fast path and the precise reference.

The stream worker's hot path. :func:`decode_batch` parses and type-checks each record in
C with a msgspec decoder built from the :class:`EventConfig` (types, lengths, allowed
actions, ts lower bound, no unknown fields), then checks what msgspec cannot express
column by column with C-level builtins, so a clean batch runs no Python-level loop per
event. If
any check fails it falls back to :func:`streams.events.decode` per record, which gives
each bad record its precise reason; both paths produce the same columns (tested).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import Meta

from streams.config import EventConfig
from streams.events import EventError, decode
from streams.ids import stable_ids

_TEXT = ("event_id", "user_id", "item_id", "condition")
_TS, _ACTION, _FEATURES = attrgetter("ts"), attrgetter("action"), attrgetter("features")
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


@dataclass(frozen=True)
class Rejected:
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
    value = text | int | float | bool
    features = Annotated[dict[text, value], Meta(max_length=cfg.max_features)]
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("event_id", text),
        ("user_id", text),
        ("item_id", text),
        ("action", Literal[cfg.actions]),
        ("condition", text),
        ("ts", Annotated[int, Meta(ge=cfg.min_ts_ms)]),
        ("features", features | None, None),
    ]
    struct = msgspec.defstruct("WireEvent", fields, forbid_unknown_fields=True)
    return msgspec.json.Decoder(struct)


def _bulk(values: Sequence[bytes], cfg: EventConfig, now_ms: int) -> EventColumns | None:
    """All events valid -> their columns; anything unusual -> None (use the reference)."""
    if max(map(len, values)) > cfg.max_event_bytes:
        return None
    try:  # one decode per record: joining records into one array would let crafted
        objs = list(map(_decoder(cfg).decode, values))  # fragments merge into valid events
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    event_id, user, item, cond = (list(map(attrgetter(f), objs)) for f in _TEXT)
    if any(any(map(str.isspace, col)) for col in (event_id, user, item, cond)):
        return None
    ts = np.fromiter(map(_TS, objs), np.int64, len(objs))
    if int(ts.max()) > now_ms + cfg.max_future_ms:
        return None
    features = list(map(_FEATURES, objs))
    cat_ids = np.zeros(len(objs), np.int64)
    if features.count(None) != len(features):
        vals = [v for f in features if f for v in f.values()]
        floats = [v for v in vals if type(v) is float]
        if floats and not all(map(math.isfinite, floats)):
            return None
        cats = [f.get("category") if f else None for f in features]
        given = [c for c in cats if c is not None]
        if given and (set(map(type, given)) != {str} or any(map(str.isspace, given))):
            return None
        if given:
            where = np.fromiter((c is not None for c in cats), bool, len(cats))
            cat_ids[where] = stable_ids(given)
    index_of = {a: i for i, a in enumerate(cfg.actions)}
    return EventColumns(
        index=np.arange(len(objs), dtype=np.int64),
        event_id=event_id,
        user=stable_ids(user),
        item=stable_ids(item),
        cond=stable_ids(cond),
        cat=cat_ids,
        action=np.fromiter(map(index_of.__getitem__, map(_ACTION, objs)), np.uint8, len(objs)),
        ts=ts,
    )


def _reference(
    values: Sequence[bytes], cfg: EventConfig, now_ms: int
) -> tuple[EventColumns, list[Rejected]]:
    rejected: list[Rejected] = []
    good = []
    for i, raw in enumerate(values):
        try:
            good.append((i, decode(raw, cfg, now_ms)))
        except EventError as exc:
            rejected.append(Rejected(i, exc.reason.value, exc.detail))
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


def decode_batch(
    values: Sequence[bytes], cfg: EventConfig, now_ms: int | None = None
) -> tuple[EventColumns, list[Rejected]]:
    """Raw event payloads -> (columns of the valid ones, rejected with reasons)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if values:
        cols = _bulk(values, cfg, now)
        if cols is not None:
            return cols, []
    return _reference(values, cfg, now)
