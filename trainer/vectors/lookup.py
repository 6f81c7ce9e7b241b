"""The one question every consumer asks: the LUM inputs of these users and items, as of
these event times.

:class:`VectorSource` is the protocol (the ranker's trainer and the ranking service use it);
:class:`~trainer.vectors.store.VectorReader` answers it from the vector store and
:class:`MemoryVectors` from memory (tests, benchmarks), both through :func:`assemble`, so
the point-in-time rule lives in one place: a sample or request at event time ``t`` gets,
per user, the record of the newest backbone version whose data watermark and whose
per-user computation both end before ``t`` (:func:`trainer.vectors.records.pick`), and
the item vectors of that same version. A user without such a record, an unknown item or
condition, and non-finite values are reported as missing (the ranker then uses its
learned defaults); every outcome is counted per consumer.

Example:
    >>> mem = MemoryVectors(ConditionLayout(("cond",), np.array([[7]]), capacity=2, dim=2))
    >>> mem.add_version(1, watermark=100, items=np.array([5]), item_vectors=np.ones((1, 2)))
    >>> mem.add(1, np.array([42]), np.array([90]), np.ones((1, 1, 2)))
    >>> got = mem.lookup(np.array([42, 42]), np.array([5, 5]), np.array([[7], [7]]),
    ...                  np.array([101, 100]))
    >>> got.user_found.tolist(), got.item_found.tolist(), got.cond_index.tolist()
    ([True, False], [True, False], [0, 0])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from monitoring.metrics import Metrics
from trainer.vectors.layout import ConditionLayout
from trainer.vectors.records import ItemTable, UserRecords, append, pick


@dataclass(frozen=True)
class LumLookup:
    """LUM inputs of a batch.

    Args:
        user: (B, C, D) float32 o_q, C = the layout's capacity (rows beyond the layout,
            and rows of a missing user, are zeros).
        user_found: (B,) a valid record was found.
        item: (B, D) float32 e_i of the record's version.
        item_found: (B,).
        cond_index: (B,) row of the sample's condition in the layout, -1 when absent.
        version: (B,) int32 backbone version of the record used, -1 when none.
        covered: (B,) int64 event time up to which the record summarises the user.
    """

    user: np.ndarray
    user_found: np.ndarray
    item: np.ndarray
    item_found: np.ndarray
    cond_index: np.ndarray
    version: np.ndarray
    covered: np.ndarray


def missing(batch: int, capacity: int, dim: int) -> LumLookup:
    """Everything missing (no layout yet, or LUM features off)."""
    return LumLookup(
        np.zeros((batch, capacity, dim), np.float32),
        np.zeros(batch, bool),
        np.zeros((batch, dim), np.float32),
        np.zeros(batch, bool),
        np.full(batch, -1, np.int64),
        np.full(batch, -1, np.int32),
        np.zeros(batch, np.int64),
    )


class VectorSource(Protocol):
    """Where a consumer gets its LUM inputs (see the module doc)."""

    @property
    def layout(self) -> ConditionLayout | None: ...

    def lookup(
        self, users: np.ndarray, items: np.ndarray, conds: np.ndarray, ts: np.ndarray
    ) -> LumLookup:
        """The inputs for (user, item, condition (B, F), event time ms) rows."""
        ...

    def refresh(self) -> None:
        """See what was written since the last call (a no-op where nothing changes)."""
        ...


def assemble(
    layout: ConditionLayout,
    records: Mapping[int, UserRecords],
    items_of: Callable[[int], ItemTable | None],
    users: np.ndarray,
    items: np.ndarray,
    conds: np.ndarray,
    ts: np.ndarray,
    *,
    metrics: Metrics | None = None,
    consumer: str = "ranker",
) -> LumLookup:
    """The point-in-time lookup over already fetched ``records`` (user -> records)."""
    b = len(users)
    out = missing(b, layout.capacity, layout.dim)
    cond_index = layout.index(conds) if b else np.zeros(0, np.int64)
    outcome = np.full(b, "missing", object)
    by_version: dict[int, list[int]] = {}
    computed = 0  # the newest computation among the records used
    picked: dict[tuple[int, int], tuple[int, bool]] = {}  # rows of one user and time repeat
    for i, (u, t) in enumerate(zip(users.tolist(), ts.tolist(), strict=True)):
        recs = records.get(u)
        if recs is None:
            continue
        got = picked.get((u, t))
        if got is None:
            k = pick(recs, t)
            got = picked[(u, t)] = (k, k >= 0 and bool(np.isfinite(recs.vectors[k]).all()))
        k, finite = got
        if k < 0:
            outcome[i] = "none_before"
            continue
        vec = recs.vectors[k]
        if not finite:
            outcome[i] = "non_finite"
            continue
        out.user[i, : len(vec)] = vec
        out.user_found[i] = True
        out.version[i] = int(recs.head["version"][k])
        out.covered[i] = int(recs.head["covered"][k])
        computed = max(computed, int(recs.head["computed_ms"][k]))
        outcome[i] = "found"
        by_version.setdefault(int(out.version[i]), []).append(i)
    for version, rows in by_version.items():
        table = items_of(version)
        if table is None:
            continue
        idx = np.array(rows, np.int64)
        out.item[idx], out.item_found[idx] = table.lookup(items[idx])
    out.cond_index[:] = cond_index
    if metrics is not None and b:
        found = out.user_found
        counts = [("user", name, int((outcome == name).sum())) for name in _OUTCOMES]
        counts += [
            ("item", "found", int(out.item_found.sum())),
            ("item", "missing", int((found & ~out.item_found).sum())),
            ("condition", "missing", int((cond_index < 0).sum())),
        ]
        for part, name, n in counts:
            if n:
                metrics.vector_lookups.labels(consumer=consumer, part=part, outcome=name).inc(n)
        if found.any():
            ages = (ts[found] - out.covered[found]) / 1000.0
            for a in ages[:: max(1, len(ages) // 64)].tolist():
                metrics.vector_age.labels(consumer=consumer).observe(max(a, 0.0))
            covered = float(np.median(out.covered[found])) / 1000.0
            metrics.vector_covered_time.labels(consumer=consumer).set(covered)
            metrics.vector_version_used.labels(consumer=consumer).set(int(out.version.max()))
            metrics.vector_computed_time.labels(consumer=consumer).set(computed / 1000.0)
    return out


_OUTCOMES = ("found", "missing", "none_before", "non_finite")


class MemoryVectors:
    """Vector records held in memory, with the store's semantics (tests, benchmarks).

    Args:
        layout: the condition layout.
        keep / horizon_ms: records kept per user and the time they spread over.
        metrics / consumer: count lookups like the store's reader.
    """

    def __init__(
        self,
        layout: ConditionLayout,
        keep: int = 16,
        metrics: Metrics | None = None,
        consumer: str = "ranker",
        horizon_ms: int = 900_000,
    ) -> None:
        self._layout, self.keep, self.metrics, self.consumer = layout, keep, metrics, consumer
        self.horizon_ms = horizon_ms
        self.records: dict[int, UserRecords] = {}
        self.items: dict[int, ItemTable] = {}
        self.watermarks: dict[int, int] = {}

    @property
    def layout(self) -> ConditionLayout:
        return self._layout

    def add_version(
        self, version: int, *, watermark: int, items: np.ndarray, item_vectors: np.ndarray
    ) -> None:
        """A backbone version: its data watermark and its item vectors."""
        self.watermarks[version] = int(watermark)
        self.items[version] = ItemTable.of(items, item_vectors)

    def add(
        self,
        version: int,
        users: np.ndarray,
        covered: np.ndarray,
        vectors: np.ndarray,
        computed_ms: int | None = None,
    ) -> None:
        """Records of ``users`` by ``version`` covering their events up to ``covered``;
        ``vectors`` (U, N, D) with N <= the layout's length."""
        wm = self.watermarks[version]
        now = time.time_ns() // 1_000_000 if computed_ms is None else computed_ms
        for u, c, v in zip(users.tolist(), covered.tolist(), vectors, strict=True):
            self.records[u] = append(
                self.records.get(u), version, c, max(c, wm), now, v, self.keep, 0, self.horizon_ms
            )

    def lookup(
        self, users: np.ndarray, items: np.ndarray, conds: np.ndarray, ts: np.ndarray
    ) -> LumLookup:
        return assemble(
            self._layout,
            self.records,
            self.items.get,
            np.asarray(users, np.int64),
            np.asarray(items, np.int64),
            np.asarray(conds, np.int64),
            np.asarray(ts, np.int64),
            metrics=self.metrics,
            consumer=self.consumer,
        )

    def refresh(self) -> None:
        return None
