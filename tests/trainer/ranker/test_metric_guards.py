"""check_part: a split part whose AUC or GAUC cannot be computed is named, with the fix."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.ranker.metrics import MetricError, check_part, gauc


def test_empty_part_is_an_error() -> None:
    with pytest.raises(MetricError, match=r"eval part: no samples\. Fix: move the split"):
        check_part(np.zeros(0), np.zeros(0, np.int64), "eval")


@pytest.mark.parametrize(
    ("label", "missing", "fix"),
    [(0, "no positive", "a label window that covers"), (1, "no negative", "sample negatives")],
)
def test_one_class_part_is_an_error(label: int, missing: str, fix: str) -> None:
    y = np.full(50, label)
    with pytest.raises(MetricError, match=rf"train part: 50 samples, {missing}.*Fix: .*{fix}"):
        check_part(y, np.arange(50), "train")


def test_too_few_users_for_gauc_is_a_warning() -> None:
    # every user has one class only except two: GAUC rests on two users
    y = np.array([0, 1, 0, 1] + [1] * 20 + [0] * 20)
    users = np.array([1, 1, 2, 2, *range(10, 50)])
    warnings = check_part(y, users, "eval")
    assert len(warnings) == 1
    assert "only 2 user(s) with both classes (of 42)" in warnings[0]
    assert np.isfinite(gauc(np.linspace(0, 1, len(y)), y, users))
    y_none = np.array([1] * 20 + [0] * 20)
    assert "GAUC is undefined" in check_part(y_none, np.arange(40), "eval")[0]


def test_a_healthy_part_passes() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), 10)
    assert check_part(rng.integers(0, 2, len(users)), users, "eval") == []
