"""Drift math: PSI and Jensen–Shannon against plain references, references that survive a
JSON round trip, and the sample window."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitoring.drift import (
    DriftReference,
    FeatureReference,
    FeatureSpec,
    SampleWindow,
    js_divergence,
    psi,
    quantile_edges,
)


def psi_reference(p: list[float], q: list[float], floor: float = 1e-4) -> float:
    """PSI one bin at a time."""
    sp, sq = sum(p), sum(q)
    total = 0.0
    for a, b in zip(p, q, strict=True):
        pa, qb = max(a / sp, floor), max(b / sq, floor)
        total += (qb - pa) * math.log(qb / pa)
    return total


shares_st = st.lists(st.integers(0, 1000), min_size=2, max_size=12).filter(lambda c: sum(c) > 0)


@given(shares_st, shares_st)
@settings(max_examples=60, deadline=None)
def test_psi_matches_the_one_bin_at_a_time_reference(p: list[int], q: list[int]) -> None:
    n = min(len(p), len(q))
    p, q = p[:n], q[:n]
    if sum(p) == 0 or sum(q) == 0:
        return
    assert psi(np.array(p), np.array(q)) == pytest.approx(psi_reference(p, q), rel=1e-9)
    assert psi(np.array(p), np.array(p)) == pytest.approx(0.0, abs=1e-12)
    assert psi(np.array(p), np.array(q)) >= 0.0


def test_psi_reads_as_the_rules_assume() -> None:
    even = np.full(10, 0.1)
    assert psi(even, even * 3) == pytest.approx(0.0, abs=1e-12)  # counts or shares alike
    mild = even.copy()
    mild[:5], mild[5:] = 0.12, 0.08
    assert 0.01 < psi(even, mild) < 0.1  # a 20% tilt: stable
    strong = even.copy()
    strong[:5], strong[5:] = 0.17, 0.03
    assert psi(even, strong) > 0.25  # a large shift


def test_js_divergence_is_symmetric_and_bounded() -> None:
    p, q = np.array([5, 3, 2]), np.array([1, 1, 8])
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p))
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(np.array([1, 0]), np.array([0, 1])) == 1.0
    assert 0.0 < js_divergence(p, q) < 1.0


def test_quantile_reference_has_equal_bins_and_catches_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.beta(2, 20, 20_000)
    spec = FeatureSpec("score", "quantile", bins=10)
    fr = FeatureReference.capture(spec, ref)
    assert len(fr.bins) == 9
    assert np.allclose(fr.p, 0.1, atol=0.002)
    same = rng.beta(2, 20, 5_000)
    assert fr.psi(same) < 0.01  # sampling noise alone
    assert fr.psi(same * 1.5) > 0.25


def test_category_reference_keeps_the_top_ids_and_pools_the_rest() -> None:
    ids = np.array([7] * 50 + [3] * 30 + [9] * 15 + [1] * 5)
    fr = FeatureReference.capture(FeatureSpec("condition", "category", top=2), ids)
    assert fr.bins == (3, 7)
    assert fr.p == pytest.approx((0.3, 0.5, 0.2))
    assert fr.counts(np.array([3, 3, 7, 42])).tolist() == [2.0, 1.0, 1.0]
    assert fr.psi(ids) == pytest.approx(0.0, abs=1e-12)
    assert fr.psi(np.array([42] * 100)) > 1.0  # all new conditions


def test_edges_and_flag_references() -> None:
    edges = FeatureReference.capture(
        FeatureSpec("history_length", "edges", edges=(1, 2, 4)), np.array([0, 1, 2, 3, 4, 9])
    )
    assert edges.counts(np.array([0, 1, 3, 5, 100])).tolist() == [1.0, 1.0, 1.0, 2.0]
    flag = FeatureReference.capture(FeatureSpec("unknown_user", "flag"), np.array([0, 0, 0, 1]))
    assert flag.p == (0.75, 0.25)
    assert flag.psi(np.array([True] * 10)) > 1.0
    assert math.isnan(flag.psi(np.zeros(0, bool)))


def test_a_reference_survives_json_and_compares_by_feature() -> None:
    rng = np.random.default_rng(1)
    cols = {
        "score": rng.random(1000),
        "condition": rng.integers(0, 5, 1000),
        "unknown_user": rng.random(1000) < 0.1,
    }
    specs = (
        FeatureSpec("score", "quantile"),
        FeatureSpec("condition", "category", top=3),
        FeatureSpec("unknown_user", "flag"),
        FeatureSpec("absent", "flag"),
    )
    ref = DriftReference.capture(specs, cols, captured_at_ms=123, stats={"ctr": 0.1})
    assert set(ref.features) == {"score", "condition", "unknown_user"}
    back = DriftReference.from_json(json.loads(json.dumps(ref.to_json())))
    assert back == ref
    assert back.compare(cols) == pytest.approx(dict.fromkeys(ref.features, 0.0), abs=1e-12)
    assert ref.age_s(5123) == 5.0
    with pytest.raises(ValueError, match="not a drift reference"):
        DriftReference.from_json({"samples": 1})
    with pytest.raises(ValueError, match="kind"):
        FeatureSpec("x", "histogram")


def test_quantile_edges_of_a_point_mass_collapse() -> None:
    assert quantile_edges(np.full(100, 0.5), 10).tolist() == [0.5]
    assert quantile_edges(np.array([np.nan]), 10).tolist() == []


def test_the_window_keeps_the_newest_rows_in_order() -> None:
    w = SampleWindow(5, {"x": np.int64, "f": np.bool_})
    w.add(x=np.arange(3), f=np.array([True, False, True]))
    w.add(x=np.arange(3, 9), f=np.zeros(6, bool))
    assert len(w) == 5
    assert w.columns()["x"].tolist() == [4, 5, 6, 7, 8]
    assert w.columns(last=2)["x"].tolist() == [7, 8]
    with pytest.raises(ValueError, match="columns"):
        w.add(x=np.arange(2))
    with pytest.raises(ValueError, match="lengths"):
        w.add(x=np.arange(2), f=np.zeros(3, bool))
