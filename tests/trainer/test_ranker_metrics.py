"""trainer.ranker.metrics: vectorised AUC/GAUC against the pairwise references, log-loss,
calibration and the sliding window."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.ranker.metrics import (
    Window,
    auc,
    auc_reference,
    gauc,
    gauc_reference,
    log_loss,
    summary,
)

ROWS = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 1), st.integers(0, 3)), min_size=0, max_size=40
)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12


@settings(max_examples=150, deadline=None)
@given(ROWS)
def test_auc_and_gauc_match_the_references(rows: list[tuple[int, int, int]]) -> None:
    s = np.array([r[0] / 4 for r in rows], np.float64)  # coarse scores: many ties
    y = np.array([r[1] for r in rows])
    g = np.array([r[2] for r in rows])
    assert same(auc(s, y), auc_reference(s, y))
    assert same(gauc(s, y, g), gauc_reference(s, y, g))


def test_known_values() -> None:
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert math.isnan(auc(np.array([0.1]), np.array([1])))
    # user 1 perfect (4 impressions), user 2 reversed (2), user 3 one class: left out
    s = np.array([0.1, 0.2, 0.8, 0.9, 0.9, 0.1, 0.5])
    y = np.array([0, 0, 1, 1, 0, 1, 1])
    g = np.array([1, 1, 1, 1, 2, 2, 3])
    assert abs(gauc(s, y, g) - 4 / 6) < 1e-12
    assert abs(log_loss(np.array([0.5, 0.5]), np.array([0, 1])) - math.log(2)) < 1e-12


def test_calibration_is_mean_prediction_over_ctr() -> None:
    out = summary(np.array([0.2, 0.2, 0.2, 0.2]), np.array([0, 0, 0, 1]), np.arange(4))
    assert abs(out["calibration"] - 0.8) < 1e-12
    assert out["ctr"] == 0.25
    assert out["n"] == 4


def test_window_keeps_the_last_samples() -> None:
    w = Window(4)
    w.add(np.array([0.9, 0.1]), np.array([0, 1]), np.array([1, 1]))  # bad predictions
    w.add(np.array([0.8, 0.2, 0.7, 0.3]), np.array([1, 0, 1, 0]), np.array([1, 1, 2, 2]))
    assert len(w) == 4
    assert w.summary()["auc"] == 1.0
    big = Window(3)
    big.add(np.arange(10) / 10, np.arange(10) % 2, np.zeros(10, np.int64))
    assert len(big) == 3
    assert sorted(big.probs.tolist()) == [0.7, 0.8, 0.9]
