"""Step 2, knowledge querying: condition-query vectors o_q and item embeddings e_i.

Group query (LUM §4.2): a user's N query condition tokens are appended after one shared
prefix {c1, i1, ..., cL, iL} and computed in one pass; the mask lets each query token see
the prefix and itself but not the other queries, and all of them sit at the position after
the prefix, so each o_q equals the output of querying that condition alone
(:func:`compute_vectors_one_at_a_time`, the reference). Users are packed several per row.

Vectors and item embeddings are L2-normalised: ``o_q · e_i`` is the similarity the
backbone was trained with (times the temperature).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from embeddings.vocab import OOV
from monitoring.metrics import Metrics
from streams.contracts.ids import stable_id
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.packing import collate_packed, collate_padded
from trainer.backbone.tokens import TokenBatch, UserTokens

log = logging.getLogger(__name__)


def query_condition_ids(model: LumBackbone) -> np.ndarray:
    """The (N, F) condition ids to query: ``cfg.query_conditions`` (fields separated by
    ``|``) or, when empty, the version's most frequent condition tuples."""
    cfg = model.cfg
    if not cfg.query_conditions:
        return model.vocabs.combos.copy()
    f = len(cfg.condition_fields)
    out = []
    for text in cfg.query_conditions:
        parts = text.split("|")
        if len(parts) != f:
            raise ValueError(
                f"query condition {text!r}: expected {f} '|'-separated values "
                f"({', '.join(cfg.condition_fields)})"
            )
        out.append([stable_id(p) for p in parts])
    return np.array(out, np.int64)


def condition_rows(
    model: LumBackbone, cond_ids: np.ndarray, metrics: Metrics | None = None
) -> np.ndarray:
    """(..., F) condition ids -> rows; unknown ones map to the OOV row, counted and logged."""
    rows = np.stack([v.lookup(cond_ids[..., k]) for k, v in enumerate(model.vocabs.conds)], -1)
    unknown = int((rows == OOV).any(axis=-1).sum())
    if unknown:
        log.warning(
            "group query: %d query condition(s) unknown to this version; they use "
            "the OOV condition row",
            unknown,
        )
        if metrics is not None:
            metrics.backbone_unknown_conditions.inc(unknown)
    return rows


def _shape_conditions(query_conditions: np.ndarray, n_users: int, n_fields: int) -> np.ndarray:
    q = np.asarray(query_conditions, np.int64)
    if q.ndim == 1:  # (N,) one field
        q = q[:, None]
    if q.ndim == 2:  # (N, F) shared by all users
        q = np.broadcast_to(q, (n_users, *q.shape))
    if q.ndim != 3 or q.shape[0] != n_users or q.shape[2] != n_fields:
        raise ValueError(
            f"query_conditions of shape {np.shape(query_conditions)}: expected "
            f"(N,), (N, {n_fields}) or ({n_users}, N, {n_fields})"
        )
    return q


def _now(now_ms: int | np.ndarray | None, n: int) -> list[int | None]:
    if now_ms is None:
        return [None] * n
    return [int(x) for x in np.broadcast_to(np.asarray(now_ms, np.int64), (n,))]


def _gather(model: LumBackbone, batch: TokenBatch, n_users: int, n_q: int) -> torch.Tensor:
    """Outputs at query tokens (lum) or each user's last token (next_item): (U_b, N, D)."""
    out = model.encode(batch)  # (B, T, D)
    if model.cfg.objective == "lum":
        pick = batch.query
    else:
        nxt = torch.cat([batch.owner[:, 1:], torch.full_like(batch.owner[:, :1], -1)], dim=1)
        pick = (batch.owner >= 0) & (batch.owner != nxt)
    owner = batch.owner[pick]
    vecs = out[pick][torch.argsort(owner, stable=True)]  # (U_b * n_pick, D)
    vecs = vecs.view(n_users, -1, vecs.shape[-1])
    if vecs.shape[1] == 1 and n_q > 1:
        vecs = vecs.expand(n_users, n_q, vecs.shape[-1])
    return F.normalize(vecs, dim=-1)


@torch.no_grad()
def compute_vectors(
    model: LumBackbone,
    sequences: Sequence[tuple[int, np.ndarray]],
    query_conditions: np.ndarray,
    *,
    now_ms: int | np.ndarray | None = None,
    batch_users: int = 64,
    metrics: Metrics | None = None,
) -> tuple[np.ndarray, torch.Tensor]:
    """Condition-query vectors of every (user, condition) by group query.

    Args:
        model: a trained backbone (put in eval mode here).
        sequences: (user id, SEQ_DTYPE array) pairs; empty sequences are skipped and counted.
        query_conditions: condition ids (``stable_id`` values): (N,) or (N, F) for the same
            conditions for every user, (U, N, F) per user. Unknown ones use the OOV row.
            A ``next_item`` model has no condition tokens: its one vector is repeated N times.
        now_ms: query time (scalar or per user) for the gap bucket of the query tokens.
        batch_users: users per forward pass (packed into rows).
        metrics: counts skipped sequences, unknown conditions and vectors written.
    Returns:
        (user ids (U,), o_q (U, N, D) float, L2-normalised).
    """
    model.eval()
    keep = [i for i, (_, s) in enumerate(sequences) if len(s)]
    if len(keep) < len(sequences):
        skipped = len(sequences) - len(keep)
        log.info("group query: skipped %d empty sequence(s)", skipped)
        if metrics is not None:
            metrics.backbone_sequences_skipped.labels(reason="empty").inc(skipped)
    n_fields = len(model.cfg.condition_fields)
    conds = _shape_conditions(query_conditions, len(sequences), n_fields)[keep]
    rows = condition_rows(model, conds, metrics)  # (U, N, F)
    nows = _now(now_ms, len(sequences))
    device = next(model.parameters()).device
    parts: list[torch.Tensor] = []
    for start in range(0, len(keep), batch_users):
        chunk = keep[start : start + batch_users]
        toks = [
            model.tokenizer.encode_query(sequences[i][1], rows[start + j], nows[i])
            for j, i in enumerate(chunk)
        ]
        with record_function("backbone.group_query"):
            batch = collate_packed(toks).to(device)
            parts.append(_gather(model, batch, len(chunk), rows.shape[1]))
    d = model.cfg.dim
    vecs = torch.cat(parts) if parts else torch.zeros(0, rows.shape[1], d, device=device)
    users = np.array([sequences[i][0] for i in keep], np.int64)
    return users, vecs


@torch.no_grad()
def compute_vectors_one_at_a_time(
    model: LumBackbone,
    sequences: Sequence[tuple[int, np.ndarray]],
    query_conditions: np.ndarray,
    *,
    now_ms: int | np.ndarray | None = None,
    batch_users: int = 64,
) -> tuple[np.ndarray, torch.Tensor]:
    """The reference: one pass per (user batch, condition), padded rows, causal mask."""
    model.eval()
    keep = [i for i, (_, s) in enumerate(sequences) if len(s)]
    n_fields = len(model.cfg.condition_fields)
    conds = _shape_conditions(query_conditions, len(sequences), n_fields)[keep]
    rows = condition_rows(model, conds)
    nows = _now(now_ms, len(sequences))
    device = next(model.parameters()).device
    per_cond = []
    for n in range(rows.shape[1]):
        parts = []
        for start in range(0, len(keep), batch_users):
            chunk = keep[start : start + batch_users]
            toks: list[UserTokens] = [
                model.tokenizer.encode_query(sequences[i][1], rows[start + j, n : n + 1], nows[i])
                for j, i in enumerate(chunk)
            ]
            parts.append(_gather(model, collate_padded(toks).to(device), len(chunk), 1))
        per_cond.append(
            torch.cat(parts) if parts else torch.zeros(0, 1, model.cfg.dim, device=device)
        )
    users = np.array([sequences[i][0] for i in keep], np.int64)
    return users, torch.cat(per_cond, dim=1)


@torch.no_grad()
def item_embeddings(model: LumBackbone, batch: int = 65_536) -> tuple[np.ndarray, torch.Tensor]:
    """e_i of every item of the version: (item ids (I,), (I, D)), L2-normalised unless the
    backbone scores by dot product (``similarity = dot``: the norm is part of the score)."""
    model.eval()
    device = next(model.parameters()).device
    n = len(model.vocabs.items)
    rows = torch.arange(1, n, device=device)
    dot = model.cfg.similarity == "dot"
    embs = [
        model.item_embeddings(rows[i : i + batch])
        if dot
        else F.normalize(model.item_embeddings(rows[i : i + batch]), dim=-1)
        for i in range(0, n - 1, batch)
    ]
    emb = torch.cat(embs) if embs else torch.zeros(0, model.cfg.dim, device=device)
    return model.vocabs.items.ids.copy(), emb
