"""Leave-last-out retrieval metrics: ranks with exclusions and ties, popularity baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.backbone import make_pairs, make_seq

from trainer.backbone.config import BackboneConfig
from trainer.backbone.eval import (
    evaluate,
    leave_last_out,
    metrics_from_ranks,
    popularity,
    ranks_of,
    unknown_target_share,
)
from trainer.backbone.train import train

torch.set_num_threads(1)


def test_ranks_exclude_history_and_break_ties_by_column() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])
    ranks = ranks_of(scores, torch.tensor([2, 2]), [np.array([0]), np.array([], np.int64)])
    assert ranks.tolist() == [2.0, 3.0]  # user 0: col 0 excluded, col 1 ties first
    miss = ranks_of(scores[:1], torch.tensor([-1]), [np.array([], np.int64)])
    assert miss.tolist() == [float("inf")]
    in_history = ranks_of(scores[:1], torch.tensor([0]), [np.array([0])])
    assert in_history.tolist() == [float("inf")]


def test_metrics_from_ranks() -> None:
    m = metrics_from_ranks(np.array([1.0, 3.0, 20.0, np.inf]), k=10)
    assert m["hr@10"] == 0.5
    assert m["ndcg@10"] == pytest.approx((1 + 0.5) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 20) / 4)
    assert m["users"] == 4


def test_leave_last_out_holds_out_the_last_event() -> None:
    pairs = [(1, make_seq([4, 5, 6], conds=[0, 1, 2])), (2, make_seq([7])), (3, make_seq([8, 9]))]
    train_pairs, held = leave_last_out(pairs, ("cond",))
    assert [u for u, _ in train_pairs] == [1, 3]
    assert held.items.tolist() == [6, 9]
    assert held.conds.tolist() == [[1002], [1000]]  # 9 % 3 = 0
    assert [len(s) for _, s in train_pairs] == [2, 1]
    assert held.ts.tolist() == [int(pairs[0][1]["ts"][-1]), int(pairs[2][1]["ts"][-1])]


def test_popularity_ranks_by_training_counts() -> None:
    train_pairs = [(1, make_seq([1, 1, 2])), (2, make_seq([1, 3]))]
    _, held = leave_last_out([(1, make_seq([1, 1, 2, 3])), (2, make_seq([1, 3, 2]))], ("cond",))
    m = popularity(train_pairs, held, k=1)
    # user 1 (history 1, 1, 2): 1 and 2 excluded, 3 ranks first; user 2: 1, 3 excluded -> 2
    assert m["hr@1"] == 1.0


def test_trained_lum_beats_popularity_on_condition_dependent_data() -> None:
    pairs = make_pairs(n_users=60, n_items=24, n_conds=4, max_len=14, min_len=6, seed=2)
    cfg = BackboneConfig(
        dim=16, heads=2, layers=1, max_len=14, epochs=12, batch_users=16, lr=3e-3, dropout=0.0
    )
    train_pairs, held = leave_last_out(pairs, cfg.condition_fields)
    result = train(cfg, train_pairs)
    lum = evaluate(result.model, held)
    pop = popularity(train_pairs, held)
    assert set(lum) == {"hr@10", "ndcg@10", "mrr", "users"}
    assert lum["users"] == pop["users"] == 60
    assert unknown_target_share(result.model, held) < 0.2
    assert lum["mrr"] > pop["mrr"]


def test_allowed_items_restrict_the_ranking() -> None:
    pairs = make_pairs(n_users=12, n_items=24, n_conds=4, max_len=10, min_len=4, seed=3)
    cfg = BackboneConfig(dim=8, heads=1, layers=1, max_len=10, epochs=1, dropout=0.0)
    _, held = leave_last_out(pairs, cfg.condition_fields)
    model = train(cfg, pairs).model  # every held-out item has a row
    seen = [set(s["item"].tolist()) for _, s in held.histories]
    only_target = [np.array([t]) for t in held.items]
    m = evaluate(model, held, allowed=only_target)
    fresh = sum(int(t) not in h for t, h in zip(held.items, seen, strict=True))
    assert fresh > 0
    assert m["hr@10"] == m["mrr"] == fresh / len(seen)  # rank 1 unless a history repeat
    none = evaluate(model, held, allowed=[np.array([], np.int64)] * len(seen))
    assert none["hr@10"] == 0.0
    everything = [np.array(model.vocabs.items.ids)] * len(seen)
    assert evaluate(model, held, allowed=everything) == evaluate(model, held)
