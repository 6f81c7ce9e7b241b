"""Sparse snapshots for multi-epoch sparse-reset (EST §5.5).

The sparse state θ_s is everything an id owns: the table rows, their fused optimizer state
(row-wise Adagrad momentum) and the id -> row mapping. :meth:`SparseSnapshot.capture` copies
the local shards of all of it at θ_s^(0) (the initial or inherited tables);
:meth:`SparseSnapshot.restore` writes it back at the start of every epoch, in place, leaving
dense parameters and the dense optimizer untouched. Each rank snapshots only its own shards,
so it costs one copy of the local tables in memory and no communication.

Example:
    >>> snap = SparseSnapshot.capture(access, mappers)  # doctest: +SKIP
    >>> ...train an epoch...  # doctest: +SKIP
    >>> snap.restore(access, mappers)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from embeddings.ids import IdMapper
from embeddings.tables import TableAccess

Key = tuple[str, int, int]  # (table, first row, first column) of a local shard


@dataclass
class SparseSnapshot:
    """Copies of the local sparse state.

    Args:
        weights: shard key -> weight copy.
        momentum: shard key -> optimizer state copy (absent: no state yet, i.e. zeros).
        mappers: table -> id mapper arrays.
    """

    weights: dict[Key, torch.Tensor]
    momentum: dict[Key, torch.Tensor]
    mappers: dict[str, dict[str, np.ndarray]]

    @classmethod
    def capture(
        cls, access: TableAccess, mappers: Mapping[str, IdMapper] | None = None
    ) -> SparseSnapshot:
        """Copy the local shards, their optimizer state and the mappers."""
        weights, momentum = {}, {}
        for s in access.all_shards():
            key = (s.table, s.row0, s.col0)
            weights[key] = s.weight.detach().clone()
            if s.momentum is not None:
                momentum[key] = s.momentum.detach().clone()
        maps = {t: {k: v.copy() for k, v in m.state().items()} for t, m in (mappers or {}).items()}
        return cls(weights, momentum, maps)

    @torch.no_grad()
    def restore(self, access: TableAccess, mappers: Mapping[str, IdMapper] | None = None) -> None:
        """Write the snapshot back in place (raises KeyError when the sharding changed)."""
        for s in access.all_shards():
            key = (s.table, s.row0, s.col0)
            s.weight.copy_(self.weights[key])
            if s.momentum is not None:
                if key in self.momentum:
                    s.momentum.copy_(self.momentum[key])
                else:
                    s.momentum.zero_()
        for t, m in (mappers or {}).items():
            m.load_state(self.mappers[t])

    @property
    def nbytes(self) -> int:
        tensors = [*self.weights.values(), *self.momentum.values()]
        arrays = [a for m in self.mappers.values() for a in m.values()]
        return sum(t.numel() * t.element_size() for t in tensors) + sum(a.nbytes for a in arrays)
