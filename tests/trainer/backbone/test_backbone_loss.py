"""InfoNCE: against the formula written out, log-Q correction, the negative sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.backbone.loss import (
    NegativeSampler,
    candidate_rows,
    full_softmax,
    info_nce,
    sampled_softmax,
)

torch.set_num_threads(1)


def test_candidates_are_sorted_distinct_targets_and_samples() -> None:
    rows = candidate_rows(torch.tensor([5, 0, 3, 5]), torch.tensor([9, 3]))
    assert rows.tolist() == [3, 5, 9]


def test_info_nce_matches_the_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    cand = torch.tensor([2, 4, 7])
    emb = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    targets = torch.tensor([4, 2, 7, 4])
    tau = 0.2
    expect = 0.0
    for i in range(4):
        sims = [float(torch.cosine_similarity(q[i], emb[j], dim=0)) / tau for j in range(3)]
        pos = sims[cand.tolist().index(int(targets[i]))]
        expect -= pos - math.log(sum(math.exp(s) for s in sims))
    got = info_nce(q, targets, cand, emb, tau)
    assert math.isclose(float(got), expect / 4, rel_tol=1e-12)
    assert math.isclose(
        float(info_nce(q, targets, cand, emb, tau, normaliser=2.0)), expect / 2, rel_tol=1e-12
    )


def test_log_q_correction_lowers_popular_candidates() -> None:
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    cand, target = torch.tensor([1, 2]), torch.tensor([1])
    plain = float(info_nce(q, target, cand, emb, 1.0))
    assert math.isclose(plain, math.log(2))
    log_q = torch.log(torch.tensor([0.9, 0.1], dtype=torch.float64))  # the target is popular
    assert float(info_nce(q, target, cand, emb, 1.0, log_q)) > plain


def test_sampler_follows_count_power_and_never_draws_oov() -> None:
    counts = np.array([1000, 0, 1, 9])  # row 0 is OOV, row 1 never seen
    s = NegativeSampler(counts, alpha=1.0, seed=3)
    draws = s.sample(20_000)
    assert set(draws.tolist()) <= {2, 3}
    assert abs(float((draws == 3).double().mean()) - 0.9) < 0.02
    assert torch.allclose(
        s.log_q(torch.tensor([2, 3])), torch.log(torch.tensor([0.1, 0.9], dtype=torch.float64))
    )
    again = NegativeSampler(counts, alpha=1.0, seed=3).sample(50)
    assert again.tolist() == draws[:50].tolist()  # same seed, same draws on every replica


def _full_by_hand(q: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, sim: str) -> float:
    total = 0.0
    for i in range(len(q)):
        if sim == "dot":
            s = [float(q[i] @ emb[j]) for j in range(len(emb))]
        else:
            s = [float(torch.cosine_similarity(q[i], emb[j], dim=0)) / 0.5 for j in range(len(emb))]
        total -= s[int(t[i]) - 1] - math.log(sum(math.exp(x) for x in s))
    return total / len(q)


@pytest.mark.parametrize("sim", ["cosine", "dot"])
def test_full_softmax_matches_the_formula(sim: str) -> None:
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    emb = torch.randn(7, 4, generator=gen, dtype=torch.float64)  # item rows 1..7
    t = torch.tensor([1, 7, 3, 3, 5])
    got = full_softmax(q, t, emb, similarity=sim, temperature=0.5)
    assert math.isclose(float(got), _full_by_hand(q, t, emb, sim), rel_tol=1e-10)
    w = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    one = full_softmax(q, t, emb, similarity=sim, temperature=0.5, weights=w, normaliser=1.0)
    assert math.isclose(float(one), _full_by_hand(q[:1], t[:1], emb, sim), rel_tol=1e-10)


def test_sampled_softmax_masks_the_target_and_matches_the_formula() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # rows 1..3
    t = torch.tensor([1, 2])
    neg = torch.tensor([2, 3, 1])
    lq = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    got = sampled_softmax(q, t, emb[t - 1], neg, emb[neg - 1], neg_log_q=lq, similarity="dot")
    # user 0: target 1 (score 1); negatives 2 (0 - .1), 3 (1 - .2); negative 1 is its target
    l0 = -(1 - math.log(math.exp(1) + math.exp(-0.1) + math.exp(0.8)))
    # user 1: target 2 (score 1); negatives 3 (1 - .2), 1 (0 - .3); negative 2 is its target
    l1 = -(1 - math.log(math.exp(1) + math.exp(0.8) + math.exp(-0.3)))
    assert math.isclose(float(got), (l0 + l1) / 2, rel_tol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_sampled_softmax_with_log_q_estimates_the_full_softmax(alpha: float) -> None:
    gen = torch.Generator().manual_seed(2)
    n_items, k = 60, 4000
    counts = np.concatenate([[0], np.arange(1, n_items + 1) ** 2])  # skewed popularity
    sampler = NegativeSampler(counts, alpha=alpha, seed=4)
    q = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    emb = torch.randn(n_items, 6, generator=gen, dtype=torch.float64)
    t = torch.arange(1, 9) * 7
    full = float(full_softmax(q, t, emb, similarity="dot"))
    neg = sampler.sample(k)
    kw = {"similarity": "dot"}
    corrected = sampled_softmax(
        q, t, emb[t - 1], neg, emb[neg - 1], neg_log_q=sampler.log_p(neg) + math.log(k), **kw
    )
    plain = sampled_softmax(q, t, emb[t - 1], neg, emb[neg - 1], **kw)
    assert abs(float(corrected) - full) < 0.05 * full
    assert abs(float(plain) - full) > 0.5  # without log-Q: off by about log(k)
