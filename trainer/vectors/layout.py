"""The condition layout: which query conditions the vectors hold, in which order.

Row ``k`` of every user's condition-query vectors is the vector for query condition ``k`` of
the layout. The layout is part of the contract with every consumer (a ranker learns one
weight per row): once a row means a condition it always does. A refresh may only append
conditions, up to a ``capacity`` fixed when the layout is created (the ranker is built
with that many rows; rows not yet used are zeros, so an appended condition is learned from
the moment its vectors arrive). A change that would reorder or drop a row, or change the
condition fields or the vector width, is refused with :class:`LayoutError`.

Example:
    >>> lay = ConditionLayout(("cond",), np.array([[7], [9]]), capacity=4, dim=8)
    >>> grown, added = lay.extended(np.array([[9], [5], [7]]))
    >>> grown.conditions[:, 0].tolist(), added
    ([7, 9, 5], 1)
    >>> grown.index(np.array([[5], [3]])).tolist()
    [2, -1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class LayoutError(ValueError):
    """A refresh whose conditions cannot keep the layout's contract."""


@dataclass(frozen=True)
class ConditionLayout:
    """Ordered query conditions, append-only.

    Args:
        fields: the sample columns that form a condition (``cond``, ``cat``; F of them).
        conditions: (N, F) int64 stable ids, row k = query condition k.
        capacity: the most conditions the layout (and a ranker built for it) can hold.
        dim: the vectors' width D.
    """

    fields: tuple[str, ...]
    conditions: np.ndarray
    capacity: int
    dim: int

    def __post_init__(self) -> None:
        c = np.asarray(self.conditions, np.int64).reshape(-1, len(self.fields))
        object.__setattr__(self, "conditions", c)
        if len(c) > self.capacity:
            raise LayoutError(f"{len(c)} conditions exceed the capacity {self.capacity}")
        if len({tuple(r) for r in c.tolist()}) != len(c):
            raise LayoutError("duplicate query conditions in a layout")

    def __len__(self) -> int:
        return int(self.conditions.shape[0])

    def index(self, conds: np.ndarray) -> np.ndarray:
        """(B, F) condition ids -> (B,) row of each in the layout, -1 when absent."""
        conds = np.asarray(conds, np.int64).reshape(-1, len(self.fields))
        rows = {tuple(r): k for k, r in enumerate(self.conditions.tolist())}
        return np.fromiter((rows.get(tuple(c), -1) for c in conds.tolist()), np.int64, len(conds))

    def extended(self, proposed: np.ndarray) -> tuple[ConditionLayout, int]:
        """This layout with the conditions of ``proposed`` it lacks appended, in their
        order, while capacity lasts; (new layout, how many were appended). Conditions
        that do not fit are left out (the caller counts them); existing rows never move."""
        proposed = np.asarray(proposed, np.int64).reshape(-1, len(self.fields))
        have = {tuple(r) for r in self.conditions.tolist()}
        new: list[list[int]] = []
        for row in proposed.tolist():
            if tuple(row) not in have and len(self) + len(new) < self.capacity:
                have.add(tuple(row))
                new.append(row)
        if not new:
            return self, 0
        grown = np.concatenate([self.conditions, np.array(new, np.int64)])
        return ConditionLayout(self.fields, grown, self.capacity, self.dim), len(new)

    def check_compatible(self, fields: Sequence[str], dim: int) -> None:
        """Raise LayoutError when a model's condition fields or width differ."""
        if tuple(fields) != self.fields:
            raise LayoutError(
                f"condition fields {tuple(fields)} differ from the layout's {self.fields}"
            )
        if dim != self.dim:
            raise LayoutError(f"vector width {dim} differs from the layout's {self.dim}")

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": list(self.fields),
            "conditions": self.conditions.tolist(),
            "capacity": self.capacity,
            "dim": self.dim,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ConditionLayout:
        fields = tuple(obj["fields"])
        conds = np.array(obj["conditions"], np.int64).reshape(-1, len(fields))
        return cls(fields, conds, int(obj["capacity"]), int(obj["dim"]))
