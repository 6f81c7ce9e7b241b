"""Which samples of one source partition a trainer has already taken, gaps included.

The worker numbers samples per source partition (``seq``, contiguous from 0) and its
producer keeps a key's order under retries, but not gap-free: when an earlier block's
delivery times out and a later one lands, the worker re-applies the batch and re-sends
both, so the earlier block arrives *after* the later one. A plain high-water mark would
drop it as a duplicate. ``SeenSeqs`` keeps the high-water mark plus the holes below it:
a re-sent sample that fills a hole is new, one that does not is a duplicate.

A hole that starts at 0 is the part of the partition before the first sample this
trainer saw (a topic whose start was deleted by retention, or a replay of a time range);
it is kept, so a late re-send into it is still learned, but it is not counted as missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

MAX_HOLES = 4096  # per partition; beyond it the oldest holes are forgotten (and counted)


class SeenSeqs:
    """Every ``seq`` up to ``top`` except those in ``holes`` (inclusive, disjoint, sorted).

    Args:
        top: the highest seq seen (-1: none).
        holes: ranges below ``top`` not seen yet.
    """

    def __init__(self, top: int = -1, holes: Iterable[tuple[int, int]] = ()) -> None:
        self.top = int(top)
        self.holes: list[tuple[int, int]] = sorted((int(a), int(b)) for a, b in holes)
        self.forgotten = 0  # seqs of holes dropped beyond MAX_HOLES

    def unseen(self, seqs: np.ndarray) -> np.ndarray:
        """Mask of ``seqs`` not seen yet."""
        new = seqs > self.top
        if self.holes and not new.all():
            lo = np.fromiter((h[0] for h in self.holes), np.int64, len(self.holes))
            hi = np.fromiter((h[1] for h in self.holes), np.int64, len(self.holes))
            i = np.searchsorted(lo, seqs, side="right") - 1
            j = np.maximum(i, 0)
            new |= (i >= 0) & (seqs <= hi[j])
        return np.asarray(new, dtype=bool)

    def add(self, seqs: np.ndarray) -> None:
        """Mark ``seqs`` as seen (any order; seen ones are ignored)."""
        if not len(seqs):
            return
        s = np.unique(seqs[self.unseen(seqs)])
        if not len(s):
            return
        breaks = np.flatnonzero(np.diff(s) > 1)
        starts = s[np.r_[0, breaks + 1]].tolist()
        ends = s[np.r_[breaks, len(s) - 1]].tolist()
        for a, b in zip(starts, ends, strict=True):
            if a > self.top:
                if a > self.top + 1:
                    self.holes.append((self.top + 1, a - 1))
                self.top = b
            else:
                self._fill(a, b)
        if len(self.holes) > MAX_HOLES:
            drop = self.holes[: len(self.holes) - MAX_HOLES]
            self.forgotten += sum(b - a + 1 for a, b in drop)
            del self.holes[: len(drop)]

    def _fill(self, a: int, b: int) -> None:
        """Remove [a, b] (inside holes, as ``unseen`` guarantees) from the holes."""
        kept: list[tuple[int, int]] = []
        for lo, hi in self.holes:
            if hi < a or lo > b:
                kept.append((lo, hi))
                continue
            if lo < a:
                kept.append((lo, a - 1))
            if hi > b:
                kept.append((b + 1, hi))
        self.holes = kept

    def missing(self) -> int:
        """Seqs in holes after the first seq seen: samples sent around ones that arrived."""
        return sum(b - a + 1 for a, b in self.holes if a > 0)

    def copy(self) -> SeenSeqs:
        out = SeenSeqs(self.top, self.holes)
        out.forgotten = self.forgotten
        return out

    def to_json(self) -> dict[str, Any]:
        return {"top": self.top, "holes": [list(h) for h in self.holes]}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeenSeqs) and self.top == other.top and self.holes == other.holes

    def __repr__(self) -> str:
        return f"SeenSeqs(top={self.top}, holes={self.holes})"
