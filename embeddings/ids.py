"""Unbounded int64 ids -> rows of a fixed-size table: multi-probe hashing with owners,
admission by frequency, expiry by event time; every outcome counted.

Row 0 is the shared **new-id row**. Every id has ``probes`` candidate rows (hashes of the id
with different salts). An id *owns* at most one row; a lookup checks its candidates for
ownership (a hit). An unknown id is counted in a count-min sketch; once it has been seen
``admit_count`` times it is admitted into the first free candidate row, in rounds: in round
``p`` every pending id (ascending id order) tries its ``p``-th candidate and the smallest id
wins a contested row. An id whose candidates are all owned is a **collision**: it keeps
using row 0 (no live id is ever evicted by a newcomer, so a hot id never loses its row to a
cold one). With ``expire_after_ms`` > 0 the rows of ids unseen (in event time) for longer
are freed at the start of the next learning lookup (an **eviction**); their rows are handed
out again later and re-initialised by the caller (``fresh`` rows).

The table never grows: memory is ``rows * 16`` bytes plus the sketch. The mapping is a pure
function of the sequence of (ids, ts) batches, so every rank of a distributed trainer that
maps the same global batch holds the same mapper.

:class:`ReferenceIdMapper` is the same rules written one id at a time with dicts; the tests
check the two against each other.

Example:
    >>> m = IdMapper(rows=16, admit_count=2, probes=2)
    >>> m.map(np.array([7, 8, 7]), np.array([1, 1, 1])).rows.tolist()  # 7 seen twice: admitted
    [15, 0, 15]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NEW_ROW = 0
FREE = -1
RESERVED = -2  # owner of row 0
SKETCH_DEPTH = 2
OUTCOMES = ("hit", "new", "admitted", "collision", "evicted")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of each element (uint64 in, uint64 out, wrapping)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x).astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _salts(seed: int, n: int, offset: int) -> np.ndarray:
    return splitmix64(np.arange(offset, offset + n, dtype=np.uint64) + np.uint64(seed << 8))


@dataclass
class MapResult:
    """What one :meth:`IdMapper.map` call did.

    Args:
        rows: (n,) row of every input id.
        fresh: rows handed to a newly admitted id in this call (re-initialise them).
        counts: outcome -> how many ids (occurrences for hit/new/collision, distinct ids for
            admitted, rows for evicted).
    """

    rows: np.ndarray
    fresh: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


class IdMapper:
    """Fixed-size id -> row mapping with admission, expiry and collision counting.

    Args:
        rows: table rows including the new-id row 0 (at least 2).
        admit_count: occurrences before an id gets a row of its own.
        expire_after_ms: event-time ms an id may go unseen before losing its row; 0 = never.
        probes: candidate rows per id.
        sketch_width: counters per sketch row.
        seed: salt of the hashes (the same seed gives the same mapping everywhere).
    """

    def __init__(
        self,
        rows: int,
        admit_count: int = 1,
        expire_after_ms: int = 0,
        probes: int = 4,
        sketch_width: int = 1 << 18,
        seed: int = 0,
    ) -> None:
        if rows < 2:
            raise ValueError(f"an id table needs at least 2 rows, got {rows}")
        self.n_rows, self.admit_count, self.expire_after_ms = rows, admit_count, expire_after_ms
        self.probes, self.sketch_width, self.seed = probes, sketch_width, seed
        self._probe_salts = _salts(seed, probes, 0)
        self._sketch_salts = _salts(seed, SKETCH_DEPTH, 64)
        self.owner = np.full(rows, FREE, np.int64)
        self.owner[NEW_ROW] = RESERVED
        self.last_seen = np.zeros(rows, np.int64)
        self.sketch = np.zeros((SKETCH_DEPTH, sketch_width), np.int64)

    # -- hashing ---------------------------------------------------------------------------
    def candidates(self, ids: np.ndarray) -> np.ndarray:
        """(n, probes) candidate rows in [1, rows) of non-negative ids."""
        h = splitmix64(ids.astype(np.uint64)[:, None] ^ self._probe_salts[None, :])
        return (h % np.uint64(self.n_rows - 1)).astype(np.int64) + 1

    def _sketch_cols(self, ids: np.ndarray) -> np.ndarray:
        h = splitmix64(ids.astype(np.uint64)[None, :] ^ self._sketch_salts[:, None])
        return (h % np.uint64(self.sketch_width)).astype(np.int64)  # (depth, n)

    # -- mapping ---------------------------------------------------------------------------
    def map(self, ids: np.ndarray, ts: np.ndarray, learn: bool = True) -> MapResult:
        """Rows of ``ids`` seen at event times ``ts``; with ``learn`` also count, admit,
        refresh and expire (without it the state is untouched).

        Negative ids are invalid: they get row 0 and count as ``new``.
        """
        ids = np.asarray(ids, np.int64)
        ts = np.asarray(ts, np.int64)
        counts = dict.fromkeys(OUTCOMES, 0)
        rows = np.zeros(len(ids), np.int64)
        if learn and self.expire_after_ms > 0 and len(ts):
            counts["evicted"] = self._expire(int(ts.max()))
        valid = ids >= 0
        uniq, inv = np.unique(ids[valid], return_inverse=True)
        if len(uniq) == 0:
            counts["new"] = len(ids)
            return MapResult(rows, np.zeros(0, np.int64), counts)
        cand = self.candidates(uniq)  # (U, P)
        own = self.owner[cand] == uniq[:, None]
        found = own.any(axis=1)
        urow = np.where(found, cand[np.arange(len(uniq)), own.argmax(axis=1)], NEW_ROW)
        uts = np.full(len(uniq), np.iinfo(np.int64).min, np.int64)
        np.maximum.at(uts, inv, ts[valid])
        fresh = np.zeros(0, np.int64)
        if learn:
            self.last_seen[urow[found]] = np.maximum(self.last_seen[urow[found]], uts[found])
            new = np.flatnonzero(~found)
            if len(new):
                occ = np.bincount(inv, minlength=len(uniq))[new]
                cols = self._sketch_cols(uniq[new])
                for d in range(SKETCH_DEPTH):
                    np.add.at(self.sketch[d], cols[d], occ)
                est = self.sketch[np.arange(SKETCH_DEPTH)[:, None], cols].min(axis=0)
                pending = new[est >= self.admit_count]
                placed = self._admit(pending, uniq, cand, uts, urow)
                fresh = urow[placed]
                counts["admitted"] = len(placed)
                counts["collision"] = int(np.isin(inv, np.setdiff1d(pending, placed)).sum())
        rows[valid] = urow[inv]
        counts["hit"] = int(found[inv].sum())
        counts["new"] = len(ids) - counts["hit"] - counts["collision"]
        return MapResult(rows, np.sort(fresh), counts)

    def _admit(
        self,
        pending: np.ndarray,
        uniq: np.ndarray,
        cand: np.ndarray,
        uts: np.ndarray,
        urow: np.ndarray,
    ) -> np.ndarray:
        """Place ``pending`` (indices into ``uniq``, ascending) round by round; returns the
        placed ones and writes their rows into ``urow``."""
        placed: list[np.ndarray] = []
        for p in range(self.probes):
            if len(pending) == 0:
                break
            c = cand[pending, p]
            free = self.owner[c] == FREE
            rows_free, first = np.unique(c[free], return_index=True)
            winners = pending[free][first]
            self.owner[rows_free] = uniq[winners]
            self.last_seen[rows_free] = uts[winners]
            urow[winners] = rows_free
            placed.append(winners)
            pending = np.setdiff1d(pending, winners, assume_unique=True)
        return np.sort(np.concatenate(placed)) if placed else np.zeros(0, np.int64)

    def _expire(self, now_ms: int) -> int:
        stale = (self.owner >= 0) & (self.last_seen < now_ms - self.expire_after_ms)
        self.owner[stale] = FREE
        return int(stale.sum())

    # -- introspection and state -------------------------------------------------------------
    @property
    def used(self) -> int:
        """Rows owned by an id."""
        return int((self.owner >= 0).sum())

    def state(self) -> dict[str, np.ndarray]:
        """The arrays that define the mapping (for checkpoints and versions)."""
        return {"owner": self.owner, "last_seen": self.last_seen, "sketch": self.sketch}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`state`; raises ValueError on a shape mismatch."""
        for name in ("owner", "last_seen", "sketch"):
            have, got = getattr(self, name), np.asarray(state[name])
            if have.shape != got.shape:
                raise ValueError(f"id mapper {name}: shape {got.shape}, expected {have.shape}")
            have[...] = got

    def copy(self) -> IdMapper:
        out = IdMapper(
            self.n_rows,
            self.admit_count,
            self.expire_after_ms,
            self.probes,
            self.sketch_width,
            self.seed,
        )
        out.load_state(self.state())
        return out


class ReferenceIdMapper:
    """The rules of :class:`IdMapper` one id at a time, with dicts and exact counts (tests).

    Args: as :class:`IdMapper` (exact counts instead of a sketch).
    """

    def __init__(
        self,
        rows: int,
        admit_count: int = 1,
        expire_after_ms: int = 0,
        probes: int = 4,
        seed: int = 0,
    ) -> None:
        self._hash = IdMapper(rows, admit_count, expire_after_ms, probes, 64, seed)
        self.admit_count, self.expire_after_ms, self.probes = admit_count, expire_after_ms, probes
        self.row_of: dict[int, int] = {}
        self.owner: dict[int, int] = {}
        self.last_seen: dict[int, int] = {}
        self.seen: dict[int, int] = {}

    def map(self, ids: list[int], ts: list[int]) -> tuple[list[int], dict[str, int]]:
        counts = dict.fromkeys(OUTCOMES, 0)
        if self.expire_after_ms > 0 and ts:
            now = max(ts)
            for row, owner in list(self.owner.items()):
                if self.last_seen[row] < now - self.expire_after_ms:
                    del self.owner[row], self.row_of[owner]
                    counts["evicted"] += 1
        latest: dict[int, int] = {}
        occurrences: dict[int, int] = {}
        for i, t in zip(ids, ts, strict=True):
            if i >= 0:
                latest[i] = max(latest.get(i, t), t)
                occurrences[i] = occurrences.get(i, 0) + 1
        known = {i for i in latest if i in self.row_of}
        for i in known:
            row = self.row_of[i]
            self.last_seen[row] = max(self.last_seen[row], latest[i])
        pending = []
        for i in sorted(set(latest) - known):
            self.seen[i] = self.seen.get(i, 0) + occurrences[i]
            if self.seen[i] >= self.admit_count:
                pending.append(i)
        cand = {i: self._hash.candidates(np.array([i]))[0].tolist() for i in pending}
        for p in range(self.probes):
            for i in list(pending):
                row = cand[i][p]
                if row not in self.owner:
                    self.owner[row], self.row_of[i], self.last_seen[row] = i, row, latest[i]
                    pending.remove(i)
                    counts["admitted"] += 1
        out = [self.row_of.get(i, NEW_ROW) if i >= 0 else NEW_ROW for i in ids]
        counts["hit"] = sum(1 for i in ids if i in known)
        counts["collision"] = sum(1 for i in ids if i in pending)
        counts["new"] = len(ids) - counts["hit"] - counts["collision"]
        return out, counts
