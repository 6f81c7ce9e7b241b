"""Softmax losses over next-(condition-)item targets (LUM eq. 2), chosen by ``backbone.loss``.

- ``full`` (:func:`full_softmax`): every target against the whole item vocabulary — the
  exact cross-entropy SASRec and HSTU train with. Cost per step: one (M, I) logit matrix
  (M targets, I items), i.e. ``4 * M * I`` bytes of activations plus the same again for
  its gradient: 3,200 targets x 10k items is 128 MB; it stops fitting somewhere around
  a million items.
- ``sampled`` (:func:`sampled_softmax`): every target against K negatives sampled once per
  step and shared by all positions (``count^alpha``), each negative's logit lowered by
  ``log(K q)`` (log-Q correction) so that the sampled loss estimates the full one; cost
  ``M * K`` instead of ``M * I``.
- ``in_batch`` (:func:`info_nce`, the original LUM loss): the distinct targets of the batch
  are the negatives (plus optional sampled ones).

Similarity is ``cosine / temperature`` (default) or the raw dot product (SASRec).

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
    *,
    similarity: str = "cosine",
    weights: Tensor | None = None,
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
    logits = _scores(queries, cand_emb, similarity, temperature)  # (M, C)
    if log_q is not None:
        logits = logits - log_q.to(logits.dtype)
    labels = torch.searchsorted(candidates, targets)  # (M,)
    loss = F.cross_entropy(logits, labels, reduction="none")
    return _reduce(loss, weights, normaliser)


def _scores(queries: Tensor, emb: Tensor, similarity: str, temperature: float) -> Tensor:
    """(M, D) x (C, D) -> (M, C) logits: cosine / temperature or the dot product."""
    if similarity == "dot":
        return queries @ emb.T
    q = F.normalize(queries, dim=-1) / temperature  # scaling q, not the (M, C) logits
    return q @ F.normalize(emb, dim=-1).T


def _reduce(loss: Tensor, weights: Tensor | None, normaliser: float | None) -> Tensor:
    if weights is not None:
        loss = loss * weights
    norm = normaliser if normaliser is not None else max(len(loss), 1)
    return loss.sum() / norm


def full_softmax(
    queries: Tensor,
    targets: Tensor,
    all_emb: Tensor,
    *,
    similarity: str = "cosine",
    temperature: float = 0.05,
    weights: Tensor | None = None,
    normaliser: float | None = None,
) -> Tensor:
    """Cross-entropy of every query over all items: ``sum(w * -log softmax) / normaliser``.

    Args:
        queries: (M, D) outputs at the tokens that carry a target.
        targets: (M,) target item rows (>= 1).
        all_emb: (I - 1, D) embeddings of item rows 1..I-1 (row 0, OOV, is no candidate).
        similarity / temperature: see :func:`_scores`.
        weights: (M,) per-target loss weights (default 1).
        normaliser: divides the weighted sum (default M).
    """
    logits = _scores(queries, all_emb, similarity, temperature)  # (M, I - 1)
    loss = F.cross_entropy(logits, targets - 1, reduction="none")
    return _reduce(loss, weights, normaliser)


def sampled_softmax(
    queries: Tensor,
    targets: Tensor,
    target_emb: Tensor,
    negatives: Tensor,
    neg_emb: Tensor,
    *,
    neg_log_q: Tensor | None = None,
    similarity: str = "cosine",
    temperature: float = 0.05,
    weights: Tensor | None = None,
    normaliser: float | None = None,
) -> Tensor:
    """Cross-entropy of each target against K shared sampled negatives.

    Args:
        queries: (M, D); targets: (M,) target rows; target_emb: (M, D) their embeddings.
        negatives: (K,) sampled rows; neg_emb: (K, D).
        neg_log_q: (K,) ``log(K * q(n))`` of each negative (log-Q correction); None = none.
        similarity / temperature / weights / normaliser: as in :func:`full_softmax`.

    A negative equal to the query's own target is masked out.
    """
    if similarity == "dot":
        pos = (queries * target_emb).sum(-1, keepdim=True)  # (M, 1)
    else:
        q = F.normalize(queries, dim=-1) / temperature
        pos = (q * F.normalize(target_emb, dim=-1)).sum(-1, keepdim=True)
    neg = _scores(queries, neg_emb, similarity, temperature)  # (M, K)
    if neg_log_q is not None:
        neg = neg - neg_log_q.to(neg.dtype)
    neg = neg.masked_fill(negatives.view(1, -1) == targets.view(-1, 1), float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    loss = -F.log_softmax(logits, dim=1)[:, 0]
    return _reduce(loss, weights, normaliser)


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

    def log_p(self, rows: Tensor) -> Tensor:
        """Log of each row's sampling probability (the sampled softmax's log-Q)."""
        return torch.log(self.probs[rows.cpu()].clamp(min=1e-30)).float().to(rows.device)

    def log_q(self, rows: Tensor) -> Tensor:
        """Log of each row's share of training occurrences (the log-Q correction)."""
        return self.log_freq[rows.cpu()].to(rows.device)
