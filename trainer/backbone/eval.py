"""Leave-last-out retrieval evaluation (the HSTU reference's protocol) and a popularity
baseline.

Each user's last event is held out; the model sees the rest (for ``lum`` plus the held-out
event's condition as the query, at its time) and ranks every item of the vocabulary. Items
of the user's history are excluded from the ranking; a target the model cannot rank (never
seen in training, or a repeat of a history item) counts as a miss. Ties are broken by row
order, so a constant score cannot look good. Metrics: HR@k, NDCG@k, MRR (full ranking).
:func:`evaluate_version` does all of it for a published version (``lumstream backbone
eval``).

Example:
    >>> ranks = np.array([1, 3, 20, np.inf])
    >>> {k: round(v, 3) for k, v in metrics_from_ranks(ranks, 10).items()}
    {'hr@10': 0.5, 'ndcg@10': 0.375, 'mrr': 0.346, 'users': 4}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from embeddings.vocab import OOV, Vocab
from streams.config import EventConfig
from trainer.backbone.data import Pairs, SequenceSource, action_indices, prepare
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.group_query import compute_vectors, item_embeddings
from trainer.backbone.versions import VersionInfo, load_model


@dataclass
class HeldOut:
    """The held-out last events.

    Args:
        histories: (user id, all events but the last) per user.
        items: (U,) held-out item ids.
        conds: (U, F) held-out condition ids (``cfg.condition_fields`` order).
        ts: (U,) held-out event times (ms), the query time.
    """

    histories: Pairs
    items: np.ndarray
    conds: np.ndarray
    ts: np.ndarray


def leave_last_out(pairs: Pairs, fields: tuple[str, ...]) -> tuple[Pairs, HeldOut]:
    """Split every user (at least 2 events) into a training history and the last event."""
    pairs = [(u, s) for u, s in pairs if len(s) >= 2]
    hist = [(u, s[:-1]) for u, s in pairs]
    last = np.array([s[-1] for _, s in pairs], dtype=pairs[0][1].dtype) if pairs else None
    if last is None:
        return [], HeldOut(
            [], np.zeros(0, np.int64), np.zeros((0, len(fields)), np.int64), np.zeros(0, np.int64)
        )
    conds = np.stack([last[f] for f in fields], axis=-1).astype(np.int64)
    return hist, HeldOut(hist, last["item"].astype(np.int64), conds, last["ts"].astype(np.int64))


def ranks_of(scores: torch.Tensor, target: torch.Tensor, exclude: list[np.ndarray]) -> np.ndarray:
    """1-based ranks of ``target`` columns in ``scores`` (U, I) after removing the
    ``exclude`` columns of each user; target column < 0 -> ``inf``."""
    scores = scores.clone()
    for u, cols in enumerate(exclude):
        scores[u, torch.as_tensor(cols, dtype=torch.long)] = float("-inf")
    ok = target >= 0
    t = target.clamp(min=0)
    ts = scores.gather(1, t.view(-1, 1))  # (U, 1)
    col = torch.arange(scores.shape[1]).view(1, -1)
    before = (scores > ts) | ((scores == ts) & (col < t.view(-1, 1)))
    rank = 1.0 + before.sum(1).double()
    rank[~ok | torch.isinf(ts.view(-1))] = float("inf")
    return rank.numpy()


def metrics_from_ranks(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """HR@k, NDCG@k and MRR of 1-based ranks (``inf`` = miss)."""
    n = max(len(ranks), 1)
    hit = ranks <= k
    return {
        f"hr@{k}": float(hit.sum() / n),
        f"ndcg@{k}": float((1.0 / np.log2(ranks[hit] + 1.0)).sum() / n),
        "mrr": float((1.0 / ranks).sum() / n),
        "users": len(ranks),
    }


@torch.no_grad()
def evaluate(
    model: LumBackbone,
    held: HeldOut,
    k: int = 10,
    batch_users: int = 256,
    allowed: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """Full-ranking retrieval metrics of ``model`` on ``held``.

    Args:
        allowed: per held-out user, the item ids that may be ranked (a candidate filter,
            e.g. the items of the held-out event's condition); None = every item.
    """
    _, emb = item_embeddings(model)  # (I - 1, D); column c is item row c + 1
    items = model.vocabs.items
    ranks = []
    for s in range(0, len(held.histories), batch_users):
        hist = held.histories[s : s + batch_users]
        _, vec = compute_vectors(
            model,
            hist,
            held.conds[s : s + batch_users, None, :],
            now_ms=held.ts[s : s + batch_users],
            batch_users=batch_users,
        )  # (U, 1, D)
        scores = vec[:, 0].cpu() @ emb.cpu().T  # (U, I - 1)
        target = torch.from_numpy(items.lookup(held.items[s : s + batch_users]) - 1)
        exclude = [items.lookup(h["item"]) - 1 for _, h in hist]
        if allowed is not None:
            exclude = [
                np.concatenate([e, _outside(items.lookup(a) - 1, scores.shape[1])])
                for e, a in zip(exclude, allowed[s : s + batch_users], strict=True)
            ]
        ranks.append(ranks_of(scores, target, [e[e >= 0] for e in exclude]))
    return metrics_from_ranks(np.concatenate(ranks) if ranks else np.zeros(0), k)


def _outside(cols: np.ndarray, n: int) -> np.ndarray:
    """The columns 0..n-1 not in ``cols``."""
    keep = np.zeros(n, bool)
    keep[cols[cols >= 0]] = True
    return np.flatnonzero(~keep)


def popularity(train: Pairs, held: HeldOut, k: int = 10) -> dict[str, float]:
    """The most-popular-items baseline on the same split, same exclusions."""
    vocab = Vocab.build(
        np.concatenate([s["item"] for _, s in train]) if train else np.zeros(0, np.int64)
    )
    scores = torch.from_numpy(vocab.counts.astype(np.float64))
    ranks = []
    for s in range(0, len(held.histories), 256):
        hist = held.histories[s : s + 256]
        target = torch.from_numpy(vocab.lookup(held.items[s : s + 256]) - 1)
        exclude = [vocab.lookup(h["item"]) - 1 for _, h in hist]
        ranks.append(ranks_of(scores.expand(len(hist), -1), target, [e[e >= 0] for e in exclude]))
    return metrics_from_ranks(np.concatenate(ranks) if ranks else np.zeros(0), k)


def unknown_target_share(model: LumBackbone, held: HeldOut) -> float:
    """Share of held-out items the model has no row for (always misses)."""
    return float((model.vocabs.items.lookup(held.items) == OOV).mean()) if len(held.items) else 0.0


@dataclass(frozen=True)
class VersionEval:
    """Leave-last-out retrieval of one published version next to the popularity baseline.

    Args:
        version: the version evaluated.
        objective: its training objective (``cfg.objective``).
        users: users evaluated (at least two events of the sequence actions).
        backbone / popularity: ``hr@k``, ``ndcg@k``, ``mrr`` and ``users`` of each.
    """

    version: VersionInfo
    objective: str
    users: int
    backbone: dict[str, float]
    popularity: dict[str, float]


def evaluate_version(
    version: VersionInfo, source: SequenceSource, events: EventConfig, k: int = 10
) -> VersionEval:
    """Load ``version``, hold out every user's last event of ``source`` and rank all items
    for it, with the model and with item popularity (full ranking, history excluded).

    Raises:
        VersionError: the version does not load (see ``versions.load_model``).
    """
    model = load_model(version.path)
    pairs, _ = prepare(source, action_indices(model.cfg.sequence_actions, events))
    history, held = leave_last_out(pairs, model.cfg.condition_fields)
    return VersionEval(
        version,
        model.cfg.objective,
        len(history),
        evaluate(model, held, k),
        popularity(history, held, k),
    )
