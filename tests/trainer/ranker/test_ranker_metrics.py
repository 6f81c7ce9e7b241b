"""trainer.ranker.metrics: vectorised AUC/GAUC against the pairwise references, log-loss,
calibration, the sliding window, weighted AUC and the paired user bootstrap of a gain."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.ranker.metrics import (
    Window,
    auc,
    auc_reference,
    bootstrap_gain,
    gauc,
    gauc_reference,
    log_loss,
    summary,
    weighted_auc,
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
    # integer weights = that many copies of each sample
    w = np.array([1 + r[2] % 3 for r in rows], np.int64)
    assert same(
        float(weighted_auc(s, y, w[None, :])[0]),
        auc_reference(np.repeat(s, w), np.repeat(y, w)),
    )


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


def _two_models(
    n_users: int, per_user: int, edge: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores of a base model and of one that knows the label a little better."""
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(n_users), per_user)
    y = rng.random(len(users)) < 0.4
    base = rng.normal(size=len(users)) + 0.5 * y
    return base, base + edge * y + 0.3 * rng.normal(size=len(users)), y.astype(np.int64), users


def test_bootstrap_gain_of_a_model_over_itself_is_exactly_zero() -> None:
    base, _, y, users = _two_models(30, 20, 0.0)
    out = bootstrap_gain(base, base.copy(), y, users, reps=50)
    for m in ("auc", "gauc"):
        assert out[m] == {"gain": 0.0, "sd": 0.0, "lo": 0.0, "hi": 0.0}


def test_bootstrap_gain_interval_holds_the_gain_and_separates_a_real_one() -> None:
    base, better, y, users = _two_models(200, 30, 1.0)
    out = bootstrap_gain(base, better, y, users, reps=200, seed=1)
    assert out["auc"]["gain"] == auc(better, y) - auc(base, y)
    assert out["gauc"]["gain"] == gauc(better, y, users) - gauc(base, y, users)
    for m in ("auc", "gauc"):
        assert 0 < out[m]["lo"] < out[m]["gain"] < out[m]["hi"]
        assert out[m]["sd"] > 0
    # the same draw for the same seed; fewer users -> a wider interval
    assert bootstrap_gain(base, better, y, users, reps=200, seed=1) == out
    few = users < 20
    small = bootstrap_gain(base[few], better[few], y[few], users[few], reps=200, seed=1)
    assert small["gauc"]["sd"] > 2 * out["gauc"]["sd"]


def test_bootstrap_resamples_users_not_samples() -> None:
    """One user carries the whole gain: the interval must reach zero, since a draw may
    leave that user out, however many samples it has."""
    rng = np.random.default_rng(5)
    users = np.repeat(np.arange(10), 100)
    y = (rng.random(len(users)) < 0.5).astype(np.int64)
    base = rng.normal(size=len(users))
    other = base + np.where(users == 0, 3.0 * y, 0.0)
    out = bootstrap_gain(base, other, y, users, reps=300)
    assert out["gauc"]["gain"] > 0.02
    assert out["gauc"]["lo"] <= 1e-12


def test_bootstrap_gain_over_seeds_is_the_mean_of_the_per_seed_gains() -> None:
    base, better, y, users = _two_models(50, 20, 1.0)
    worse = base - 0.5 * y
    one = bootstrap_gain(base, better, y, users, reps=100)
    two = bootstrap_gain(base, worse, y, users, reps=100)
    both = bootstrap_gain(np.stack([base, base]), np.stack([better, worse]), y, users, reps=100)
    for m in ("auc", "gauc"):
        assert abs(both[m]["gain"] - (one[m]["gain"] + two[m]["gain"]) / 2) < 1e-12
        assert one[m]["lo"] > 0 > two[m]["hi"]


def _resampled_gains(
    base: np.ndarray, other: np.ndarray, y: np.ndarray, users: np.ndarray, reps: int, seed: int
) -> np.ndarray:
    """(reps, 2) AUC and GAUC gains on the materialised resamples: the same user draw as
    :func:`bootstrap_gain`, each drawn copy of a user its own group."""
    ids, gid = np.unique(users, return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=reps)
    out = []
    for c in counts:
        rows = [np.flatnonzero(gid == g) for g in np.repeat(np.arange(len(ids)), c)]
        sel = np.concatenate(rows)
        grp = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
        gains = [
            [
                auc(o[sel], y[sel]) - auc(b[sel], y[sel]),
                gauc(o[sel], y[sel], grp) - gauc(b[sel], y[sel], grp),
            ]
            for b, o in zip(np.atleast_2d(base), np.atleast_2d(other), strict=True)
        ]
        out.append(np.mean(gains, axis=0))
    return np.array(out)


def test_bootstrap_gain_equals_the_gains_on_the_materialised_resamples() -> None:
    """Uneven users (1 to 40 samples, some with one class), coarse scores (ties) and two
    seeds: sd and the percentiles equal those of the resampled data's own AUC/GAUC."""
    rng = np.random.default_rng(11)
    sizes = rng.integers(1, 40, size=25)
    users = np.repeat(rng.permutation(1000)[:25], sizes)
    y = (rng.random(len(users)) < 0.35).astype(np.int64)
    base = np.round(rng.normal(size=(2, len(users))) + 0.4 * y, 1)
    other = np.round(base + rng.normal(size=base.shape) * 0.5 + 0.3 * y, 1)
    got = bootstrap_gain(base, other, y, users, reps=60, seed=4)
    want = _resampled_gains(base, other, y, users, 60, 4)
    for k, m in enumerate(("auc", "gauc")):
        d = want[:, k][~np.isnan(want[:, k])]
        assert abs(got[m]["sd"] - d.std()) < 1e-12
        assert abs(got[m]["lo"] - np.percentile(d, 2.5)) < 1e-12
        assert abs(got[m]["hi"] - np.percentile(d, 97.5)) < 1e-12


def test_bootstrap_gain_of_nothing_is_nan() -> None:
    empty = np.zeros(0)
    out = bootstrap_gain(empty, empty, empty, empty.astype(np.int64))
    assert all(math.isnan(v) for d in out.values() for v in d.values())
