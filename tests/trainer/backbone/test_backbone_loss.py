"""InfoNCE: against the formula written out, log-Q correction, the negative sampler."""

from __future__ import annotations

import math

import numpy as np
import torch

from trainer.backbone.loss import ImpressionSampler, candidate_rows, info_nce

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
    s = ImpressionSampler(counts, alpha=1.0, seed=3)
    draws = s.sample(20_000)
    assert set(draws.tolist()) <= {2, 3}
    assert abs(float((draws == 3).double().mean()) - 0.9) < 0.02
    assert torch.allclose(
        s.log_q(torch.tensor([2, 3])), torch.log(torch.tensor([0.1, 0.9], dtype=torch.float64))
    )
    again = ImpressionSampler(counts, alpha=1.0, seed=3).sample(50)
    assert again.tolist() == draws[:50].tolist()  # same seed, same draws on every replica
