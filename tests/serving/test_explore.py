"""Exploration (serving/explore.py): the configured share, deterministic per request id and
seed, a uniform order (or only the top k shuffled), counted."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from monitoring.metrics import Metrics
from serving.explore import Explorer
from serving.loop_config import ExploreConfig

IDS = [f"req-{i}" for i in range(6000)]


@pytest.mark.parametrize("share", [0.0, 0.05, 0.3, 1.0])
def test_the_share_of_exploring_requests(share: float) -> None:
    ex = Explorer(ExploreConfig(share=share))
    got = sum(ex.explores(r) for r in IDS) / len(IDS)
    assert abs(got - share) < 0.02
    if share in (0.0, 1.0):
        assert got == share


def test_decision_and_order_depend_on_request_id_and_seed_only() -> None:
    a, b = Explorer(ExploreConfig(share=0.5, seed=1)), Explorer(ExploreConfig(share=0.5, seed=1))
    other = Explorer(ExploreConfig(share=0.5, seed=2))
    items = list(range(20))
    assert [a.apply(r, items) for r in IDS[:200]] == [b.apply(r, items) for r in IDS[:200]]
    assert [a.explores(r) for r in IDS[:200]] != [other.explores(r) for r in IDS[:200]]


def test_an_explored_order_is_a_uniform_permutation() -> None:
    ex = Explorer(ExploreConfig(share=1.0))
    firsts: Counter[int] = Counter()
    for r in IDS:
        order, randomized = ex.apply(r, [0, 1, 2, 3])
        assert randomized
        assert sorted(order) == [0, 1, 2, 3]
        firsts[order[0]] += 1
    assert all(abs(c / len(IDS) - 0.25) < 0.03 for c in firsts.values())
    perms = {tuple(ex.apply(r, [0, 1, 2])[0]) for r in IDS[:300]}
    assert perms == set(itertools.permutations([0, 1, 2]))


def test_top_k_shuffles_only_the_head() -> None:
    ex = Explorer(ExploreConfig(share=1.0, top_k=3))
    items = list(range(10))
    moved = False
    for r in IDS[:100]:
        order, _ = ex.apply(r, items)
        assert order[3:] == items[3:]
        assert sorted(order[:3]) == [0, 1, 2]
        moved |= order[:3] != [0, 1, 2]
    assert moved
    perm = ex.order("req-1", 2)  # a list shorter than k
    assert perm is not None
    assert sorted(perm.tolist()) == [0, 1]


def test_explored_lists_are_counted(metrics: Metrics) -> None:
    ex = Explorer(ExploreConfig(share=0.5), metrics)
    served = [ex.apply(r, ["a", "b"]) for r in IDS[:1000]]
    explored = sum(flag for _, flag in served)
    assert (
        metrics.registry.get_sample_value("lumstream_serving_explored_requests_total") == explored
    )
    kept = [order for order, flag in served if not flag]
    assert all(order == ["a", "b"] for order in kept)
    assert np.isclose(explored / 1000, 0.5, atol=0.06)
