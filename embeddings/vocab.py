"""Dense row indices for int64 ids, with min-count admission and one OOV row.

Ids from :func:`streams.contracts.ids.stable_id` are sparse 63-bit integers; an embedding
table needs dense rows. A :class:`Vocab` assigns row 0 to out-of-vocabulary ids and rows 1..n to the
admitted ids. Rows are stable: :meth:`Vocab.extend` appends new ids after the old ones, so
a warm-started model keeps its trained rows. It serialises to plain int64 arrays
(safetensors or ``np.save(allow_pickle=False)``), never pickle.

Example:
    >>> import numpy as np
    >>> v = Vocab.build(np.array([5, 5, 9, 7, 5, 9]), min_count=2)
    >>> v.ids.tolist(), v.lookup(np.array([9, 7, 5, 123])).tolist()
    ([5, 9], [2, 0, 1, 0])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OOV = 0


class Vocab:
    """Id -> row mapping; row 0 is the OOV row.

    Args:
        ids: the admitted ids in row order (row ``k + 1`` holds ``ids[k]``), distinct.
        counts: occurrences seen per admitted id (same order); used for popularity and
            sampling. Defaults to ones.
    """

    def __init__(self, ids: np.ndarray, counts: np.ndarray | None = None) -> None:
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.ids.ndim != 1:
            raise ValueError(f"vocab ids must be 1-D, got shape {self.ids.shape}")
        self.counts = (
            np.ones(len(self.ids), np.int64)
            if counts is None
            else np.ascontiguousarray(counts, dtype=np.int64)
        )
        if self.counts.shape != self.ids.shape:
            raise ValueError(
                f"vocab counts shape {self.counts.shape} != ids shape {self.ids.shape}"
            )
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]
        if len(self._sorted) > 1 and bool((self._sorted[1:] == self._sorted[:-1]).any()):
            raise ValueError("vocab ids must be distinct")

    @classmethod
    def build(cls, ids: np.ndarray, min_count: int = 1) -> Vocab:
        """Admit every id seen at least ``min_count`` times, most frequent first
        (ties by id), so the order is deterministic."""
        uniq, counts = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
        keep = counts >= min_count
        uniq, counts = uniq[keep], counts[keep]
        order = np.lexsort((uniq, -counts))
        return cls(uniq[order], counts[order])

    def extend(self, ids: np.ndarray, min_count: int = 1) -> Vocab:
        """A vocab with the same rows for known ids, new admitted ids appended, and the
        counts of known ids increased by their occurrences in ``ids``."""
        fresh = Vocab.build(ids, min_count=1)
        rows = self.lookup(fresh.ids)
        counts = self.counts.copy()
        known = rows != OOV
        counts[rows[known] - 1] += fresh.counts[known]
        new = ~known & (fresh.counts >= min_count)
        return Vocab(
            np.concatenate([self.ids, fresh.ids[new]]), np.concatenate([counts, fresh.counts[new]])
        )

    def __len__(self) -> int:
        """Rows including the OOV row (the embedding table size)."""
        return len(self.ids) + 1

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocab)
            and np.array_equal(self.ids, other.ids)
            and np.array_equal(self.counts, other.counts)
        )

    __hash__ = None  # type: ignore[assignment]

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (any shape), ``OOV`` (0) for ids not admitted."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self._sorted) == 0:
            return np.zeros(ids.shape, np.int64)
        pos = np.searchsorted(self._sorted, ids).clip(max=len(self._sorted) - 1)
        hit = self._sorted[pos] == ids
        return np.where(hit, self._order[pos] + 1, OOV).astype(np.int64)

    def id_of(self, rows: np.ndarray) -> np.ndarray:
        """Ids of ``rows`` (rows >= 1)."""
        rows = np.asarray(rows, dtype=np.int64)
        if (rows < 1).any() or (rows >= len(self)).any():
            raise IndexError(f"rows must lie in [1, {len(self) - 1}]")
        return self.ids[rows - 1]

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays for a safetensors file: ``{prefix}.ids`` and ``{prefix}.counts``."""
        return {f"{prefix}.ids": self.ids, f"{prefix}.counts": self.counts}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], prefix: str) -> Vocab:
        """Inverse of :meth:`state`; raises ``KeyError`` naming a missing array."""
        for key in (f"{prefix}.ids", f"{prefix}.counts"):
            if key not in state:
                raise KeyError(f"vocab array {key!r} missing")
        return cls(np.asarray(state[f"{prefix}.ids"]), np.asarray(state[f"{prefix}.counts"]))

    def save(self, path: str | Path) -> None:
        """Write a ``.npz`` of plain int64 arrays (no pickle)."""
        with open(path, "wb") as fh:
            np.savez(fh, ids=self.ids, counts=self.counts)

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a file written by :meth:`save`, refusing pickled content."""
        with np.load(path, allow_pickle=False) as data:
            return cls(data["ids"], data["counts"])
