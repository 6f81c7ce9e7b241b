"""Tiny synthetic sequences for the backbone tests (no files, no generator)."""

from __future__ import annotations

import numpy as np
import torch

from streams.contracts.records import SEQ_DTYPE


def make_seq(
    items: list[int],
    conds: list[int] | None = None,
    t0: int = 1_700_000_000_000,
    step_ms: int = 60_000,
) -> np.ndarray:
    """One user's sequence: condition k -> cond id 1000 + k and category 2000 + k."""
    conds = conds if conds is not None else [i % 3 for i in items]
    seq = np.zeros(len(items), SEQ_DTYPE)
    seq["item"] = items
    seq["cond"] = np.asarray(conds, np.int64) + 1000
    seq["cat"] = np.asarray(conds, np.int64) + 2000
    seq["ts"] = t0 + step_ms * np.arange(len(items)) ** 2
    seq["action"] = np.arange(len(items)) % 2
    return seq


def make_pairs(
    n_users: int = 24,
    n_items: int = 40,
    n_conds: int = 4,
    max_len: int = 14,
    min_len: int = 2,
    seed: int = 0,
) -> list[tuple[int, np.ndarray]]:
    """Users whose item depends on the condition (items c * k .. c * k + k - 1)."""
    rng = np.random.default_rng(seed)
    per = n_items // n_conds
    out = []
    for u in range(n_users):
        n = int(rng.integers(min_len, max_len + 1))
        conds = rng.integers(0, n_conds, n)
        items = conds * per + rng.integers(0, per, n)
        out.append(
            (
                100 + u,
                make_seq(items.tolist(), conds.tolist(), step_ms=int(rng.integers(1_000, 100_000))),
            )
        )
    return out


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
