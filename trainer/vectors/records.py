"""The bytes of condition-query vectors: a user's recent records and a version's item table.

A user's value holds their newest vector records, oldest first (at most ``keep``):

    b"LCQ2" | u32 count | count x RECORD_DTYPE | the records' float32 rows, record after record

Each record is one computation of the user's condition-query vectors o_q (one row per
layout condition, ``rows`` of them) by backbone ``version``, from the user's events up to
``covered`` (ms, event time). ``valid_from`` is ``max(covered, the version's data
watermark)``: the record may be used for a sample or request at event time ``t`` only when
``valid_from < t`` — neither the events it summarises nor the data its model learned from
come after ``t`` (:func:`pick`).

A version's item table (e_i, LUM's item token embeddings) is:

    b"LIT1" | u32 n | u32 d | n x int64 item ids (sorted) | n x d float32

Example:
    >>> recs = append(None, version=1, covered=100, valid_from=150, computed_ms=9,
    ...               vectors=np.ones((2, 4), np.float32), keep=3)
    >>> recs = append(recs, 2, 300, 400, 10, np.zeros((3, 4), np.float32), keep=3)
    >>> pick(recs, 401), pick(recs, 400), pick(recs, 150)
    (1, 0, -1)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

RECORD_DTYPE = np.dtype(
    [
        ("version", "<i4"),  # backbone version number N of vN
        ("rows", "<u2"),  # layout conditions covered (a prefix of the layout)
        ("pad", "<u2"),
        ("covered", "<i8"),  # event time of the newest event the vectors summarise (ms)
        ("valid_from", "<i8"),  # max(covered, version watermark): usable strictly after
        ("computed_ms", "<i8"),  # wall clock when computed (ms)
        ("events", "<i8"),  # sequence events summarised (the store's count then)
    ]
)
_MAGIC = b"LCQ2"
_COUNT = struct.Struct("<4sI")
_ITEM_MAGIC = b"LIT1"
_ITEMS = struct.Struct("<4sII")


class VectorFormatError(ValueError):
    """Bytes that are not a vector record list or an item table."""


@dataclass(frozen=True)
class UserRecords:
    """A user's vector records, oldest first.

    Args:
        head: (K,) RECORD_DTYPE.
        vectors: K arrays of (rows_k, D) float32.
    """

    head: np.ndarray
    vectors: tuple[np.ndarray, ...]


def encode_records(recs: UserRecords) -> bytes:
    return b"".join(
        (
            _COUNT.pack(_MAGIC, len(recs.head)),
            recs.head.astype(RECORD_DTYPE, copy=False).tobytes(),
            *(v.astype("<f4", copy=False).tobytes() for v in recs.vectors),
        )
    )


def decode_records(raw: bytes, dim: int) -> UserRecords:
    if len(raw) < _COUNT.size:
        raise VectorFormatError(f"vector records of {len(raw)} bytes: shorter than a header")
    magic, count = _COUNT.unpack_from(raw)
    if magic != _MAGIC:
        raise VectorFormatError(f"not vector records (magic {magic!r})")
    pos = _COUNT.size + count * RECORD_DTYPE.itemsize
    if len(raw) < pos:
        raise VectorFormatError("vector records cut short in their headers")
    head = np.frombuffer(raw, RECORD_DTYPE, count, _COUNT.size)
    want = pos + int(head["rows"].astype(np.int64).sum()) * dim * 4
    if len(raw) != want:
        raise VectorFormatError(f"vector records are {len(raw)} bytes, headers say {want}")
    vectors = []
    for rows in head["rows"].tolist():
        vectors.append(np.frombuffer(raw, "<f4", rows * dim, pos).reshape(rows, dim))
        pos += rows * dim * 4
    return UserRecords(head, tuple(vectors))


def append(
    recs: UserRecords | None,
    version: int,
    covered: int,
    valid_from: int,
    computed_ms: int,
    vectors: np.ndarray,
    keep: int,
    events: int = 0,
    horizon_ms: int = 0,
) -> UserRecords:
    """``recs`` with one more record, thinned to ``keep`` by :func:`retained`."""
    row = np.array(
        [(version, len(vectors), 0, covered, valid_from, computed_ms, events)], RECORD_DTYPE
    )
    head = row if recs is None else np.concatenate([recs.head, row])
    vecs = (*(() if recs is None else recs.vectors), np.asarray(vectors, np.float32))
    idx = retained(head["valid_from"], keep, horizon_ms)
    return UserRecords(head[idx], tuple(vecs[i] for i in idx.tolist()))


def retained(valid_from: np.ndarray, keep: int, horizon_ms: int) -> np.ndarray:
    """Which records to keep (indices, in order) so that "as of t" keeps answering for every
    ``t`` after the oldest kept record, with at most ``keep`` records.

    The newest record always stays; so does the newest one older than the horizon
    (``horizon_ms`` before the newest), the anchor that answers for older times. Inside the
    horizon, while there are too many, the record closest in time to its newer neighbour
    goes: the kept ones spread over the horizon, so a consumer a little behind (a trainer
    whose samples wait for their label window) still finds vectors valid at its time, at
    most about ``horizon / keep`` staler than the freshest. ``horizon_ms`` 0 keeps the
    newest ``keep``.
    """
    n = len(valid_from)
    if n <= keep:
        return np.arange(n)
    order = np.argsort(valid_from, kind="stable")
    if horizon_ms <= 0:
        return np.sort(order[-keep:])
    vf = valid_from[order]
    cutoff = vf[-1] - horizon_ms
    old = np.flatnonzero(vf < cutoff)
    recent = list(np.flatnonzero(vf >= cutoff))
    anchor = [int(old[-1])] if len(old) else []
    budget = keep - len(anchor)
    while len(recent) > max(budget, 1):
        gaps = [vf[recent[k + 1]] - vf[recent[k]] for k in range(len(recent) - 1)]
        del recent[int(np.argmin(gaps))]  # never the newest: it has no newer neighbour
    return np.sort(order[np.array(anchor + recent, np.int64)])


def pick(recs: UserRecords, t: int) -> int:
    """The record to use at event time ``t``: among those valid before ``t`` (``valid_from
    < t``), the newest backbone version, then the newest computation; -1 when none."""
    ok = recs.head["valid_from"] < t
    if not ok.any():
        return -1
    key = recs.head["version"].astype(np.int64) * (1 << 42) + recs.head["covered"]
    return int(np.flatnonzero(ok)[np.argmax(key[ok])])


@dataclass(frozen=True)
class ItemTable:
    """A version's item vectors e_i, sorted by id; non-finite rows count as missing.

    Args:
        ids: (I,) int64 sorted.
        vectors: (I, D) float32.
    """

    ids: np.ndarray
    vectors: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, vectors: np.ndarray) -> ItemTable:
        order = np.argsort(np.asarray(ids, np.int64), kind="stable")
        return cls(np.asarray(ids, np.int64)[order], np.asarray(vectors, np.float32)[order])

    def lookup(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (B, D), found (B,)) of ``items``."""
        if len(self.ids) == 0:
            return np.zeros((len(items), self.vectors.shape[1]), np.float32), np.zeros(
                len(items), bool
            )
        pos = np.searchsorted(self.ids, items).clip(max=len(self.ids) - 1)
        found = (self.ids[pos] == items) & np.isfinite(self.vectors[pos]).all(axis=1)
        return np.where(found[:, None], self.vectors[pos], 0.0).astype(np.float32), found


def encode_items(table: ItemTable) -> bytes:
    n, d = table.vectors.shape
    return b"".join(
        (
            _ITEMS.pack(_ITEM_MAGIC, n, d),
            table.ids.astype("<i8", copy=False).tobytes(),
            table.vectors.astype("<f4", copy=False).tobytes(),
        )
    )


def decode_items(raw: bytes) -> ItemTable:
    if len(raw) < _ITEMS.size:
        raise VectorFormatError(f"item table of {len(raw)} bytes: shorter than its header")
    magic, n, d = _ITEMS.unpack_from(raw)
    if magic != _ITEM_MAGIC or len(raw) != _ITEMS.size + n * 8 + n * d * 4:
        raise VectorFormatError("not an item table, or its size does not match its header")
    ids = np.frombuffer(raw, "<i8", n, _ITEMS.size)
    vecs = np.frombuffer(raw, "<f4", n * d, _ITEMS.size + n * 8).reshape(n, d)
    return ItemTable(ids, vecs)
