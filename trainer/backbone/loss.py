"""InfoNCE over next-(condition-)item targets (LUM eq. 2).

The candidates of a step are the distinct target items of the whole (global) batch — the
in-batch negatives — plus optional extra negatives sampled by popularity. Similarities are
cosines of L2-normalised outputs and item embeddings divided by a temperature; with log-Q
correction each candidate's logit is lowered by the log of its sampling probability
(estimated by its share of training occurrences), which removes the popularity bias of
in-batch and sampled negatives.

Example:
    >>> import torch
    >>> q, e = torch.eye(3), torch.eye(3)
    >>> rows = torch.tensor([4, 7, 9])
    >>> float(info_nce(q, rows, rows, e, temperature=0.1)) < 1e-3
    True
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def candidate_rows(targets: Tensor, sampled: Tensor | None = None) -> Tensor:
    """Sorted distinct item rows: every target (>= 1) plus the sampled negatives."""
    rows = targets[targets > 0]
    if sampled is not None:
        rows = torch.cat([rows, sampled])
    return torch.unique(rows)  # sorted


def info_nce(
    queries: Tensor,
    targets: Tensor,
    candidates: Tensor,
    cand_emb: Tensor,
    temperature: float,
    log_q: Tensor | None = None,
    normaliser: float | None = None,
) -> Tensor:
    """Sum of -log softmax over candidates at each query's target, divided by ``normaliser``.

    Args:
        queries: (M, D) outputs at the tokens that carry a target.
        targets: (M,) their target item rows; each must be in ``candidates``.
        candidates: (C,) sorted distinct item rows.
        cand_emb: (C, D) their item embeddings.
        temperature: divides the cosine similarities.
        log_q: (C,) log sampling probability of each candidate (log-Q correction).
        normaliser: the loss is ``sum / normaliser`` (default M). Data-parallel training
            passes the global target count times ``1 / world`` so that averaging the
            replicas' gradients gives the gradient of the global mean.
    """
    q = F.normalize(queries, dim=-1) / temperature  # (M, D); scaling q, not the (M, C) logits
    e = F.normalize(cand_emb, dim=-1)  # (C, D)
    logits = q @ e.T  # (M, C)
    if log_q is not None:
        logits = logits - log_q.to(logits.dtype)
    labels = torch.searchsorted(candidates, targets)  # (M,)
    loss = F.cross_entropy(logits, labels, reduction="sum")
    return loss / (normaliser if normaliser is not None else max(len(targets), 1))


class NegativeSampler:
    """Samples extra negatives with probability ``count^alpha`` and gives log-Q values.

    Args:
        counts: (I,) training occurrences per item row (row 0, OOV, is never sampled).
        alpha: 0 = uniform over known items, 1 = by popularity.
        seed: the sampler's own generator seed (the same on every replica).
    """

    def __init__(self, counts: np.ndarray, alpha: float, seed: int) -> None:
        c = np.asarray(counts, np.float64).copy()
        c[0] = 0.0
        w = np.where(c > 0, c**alpha, 0.0)
        self.probs = torch.as_tensor(w / max(w.sum(), 1e-12))
        self.log_freq = torch.as_tensor(np.log(np.maximum(c, 1.0) / max(c.sum(), 1.0)))
        self.gen = torch.Generator().manual_seed(seed)

    def sample(self, k: int) -> Tensor:
        """``k`` item rows (with replacement)."""
        return torch.multinomial(self.probs, k, replacement=True, generator=self.gen)

    def log_q(self, rows: Tensor) -> Tensor:
        """Log of each row's share of training occurrences (the log-Q correction)."""
        return self.log_freq[rows.cpu()].to(rows.device)
