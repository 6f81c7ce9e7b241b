"""Progressive-validation metrics: AUC, GAUC (per user), log-loss and calibration.

Fast paths are vectorised numpy (sorts and bincounts); beside each sits a plain reference
(:func:`auc_reference` compares every positive with every negative, :func:`gauc_reference`
loops over users) that the tests check them against. Ties count one half.
:func:`bootstrap_gain` puts an interval on the gain of one model over another (the
benchmarks' LUM gain), resampling users.

:class:`Window` keeps the last ``size`` scored samples (a ring buffer) and summarises them;
the streaming loop adds each batch's predictions *before* the model learns from it, so the
window measures the model on traffic it has not seen yet.

Example:
    >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-7


def _average_ranks(sorted_keys: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks of already sorted values, ties averaged; ``starts`` (bool) marks
    group starts so ranks restart in every group."""
    n = len(sorted_keys)
    new_block = np.ones(n, bool)
    new_block[1:] = sorted_keys[1:] != sorted_keys[:-1]
    if starts is not None:
        new_block |= starts
    block = np.cumsum(new_block) - 1
    first = np.flatnonzero(new_block)
    last = np.append(first[1:], n) - 1
    pos = np.arange(n, dtype=np.float64)
    if starts is not None:
        group_first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
        pos = pos - group_first
        first_pos, last_pos = pos[first], pos[last]
    else:
        first_pos, last_pos = first.astype(np.float64), last.astype(np.float64)
    return ((first_pos + last_pos) / 2.0 + 1.0)[block]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U); NaN when only one class is present."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels) > 0
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = _average_ranks(s[order])
    r_pos = float(ranks[y[order]].sum())
    return (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auc_reference(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC by comparing every (positive, negative) pair (O(n²); tests only)."""
    pos = [float(s) for s, y in zip(scores, labels, strict=True) if y > 0]
    neg = [float(s) for s, y in zip(scores, labels, strict=True) if y <= 0]
    if not pos or not neg:
        return float("nan")
    total = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return total / (len(pos) * len(neg))


def group_aucs(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group AUC: (group ids sorted, AUC of each group (NaN where one class is missing),
    samples per group)."""
    s = np.asarray(scores, np.float64)
    y = (np.asarray(labels) > 0).astype(np.float64)
    g = np.asarray(groups)
    if len(s) == 0:
        return g[:0], np.zeros(0), np.zeros(0)
    order = np.lexsort((s, g))
    gs, ss, ys = g[order], s[order], y[order]
    starts = np.ones(len(gs), bool)
    starts[1:] = gs[1:] != gs[:-1]
    gid = np.cumsum(starts) - 1
    ranks = _average_ranks(ss, starts)
    n = np.bincount(gid).astype(np.float64)
    n_pos = np.bincount(gid, weights=ys)
    r_pos = np.bincount(gid, weights=ranks * ys)
    n_neg = n - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        per = (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    per[(n_pos == 0) | (n_neg == 0)] = np.nan
    return gs[starts], per, n


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Impression-weighted mean of per-group AUCs over groups with both classes (NaN if
    none)."""
    _, per, n = group_aucs(scores, labels, groups)
    ok = ~np.isnan(per)
    if not ok.any():
        return float("nan")
    return float((per[ok] * n[ok]).sum() / n[ok].sum())


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC with per-sample weights (a sample of weight k counts as k copies); ``weights``
    (R, n) gives R AUCs at the cost of one sort. NaN where a class has no weight."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels) > 0
    w = np.atleast_2d(np.asarray(weights, np.float64))
    if len(s) == 0:
        return np.full(len(w), np.nan)
    order = np.argsort(s, kind="stable")
    ss, ys, ws = s[order], y[order], w[:, order]
    first = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])  # tie blocks of equal scores
    wp = np.add.reduceat(ws * ys, first, axis=1)  # (R, blocks) positive weight per block
    wn = np.add.reduceat(ws * ~ys, first, axis=1)
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each block
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (wp * (below + 0.5 * wn)).sum(axis=1) / den
    return np.where(den > 0, out, np.nan)


def bootstrap_gain(
    base: np.ndarray,
    other: np.ndarray,
    labels: np.ndarray,
    users: np.ndarray,
    reps: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """How sure a gain of ``other`` over ``base`` is: a paired bootstrap over users (users
    drawn with replacement, each with all its samples, the same draw for both models),
    since samples of one user are not independent.

    Args:
        base, other: (n,) scores of the same samples, or (S, n): one row per training seed,
            the gain then being the mean of the S per-seed gains (in every draw too).
        labels, users: (n,) of those samples.
        reps, seed: bootstrap draws and their seed.

    Returns:
        ``auc`` and ``gauc``, each {gain (on the data as it is), sd, lo, hi (2.5 and 97.5
        percentiles of the resampled gains)}.
    """
    y = np.asarray(labels)
    a_all, b_all = np.atleast_2d(base), np.atleast_2d(other)
    nan = {"gain": float("nan"), "sd": float("nan"), "lo": float("nan"), "hi": float("nan")}
    if len(y) == 0 or reps < 1:
        return {"auc": dict(nan), "gauc": dict(nan)}
    ids, gid = np.unique(np.asarray(users), return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=reps)  # (R, G)
    gains = np.zeros(2)
    draws = np.zeros((2, reps))
    for a, b in zip(a_all, b_all, strict=True):
        _, a_per, n = group_aucs(a, y, gid)
        _, b_per, _ = group_aucs(b, y, gid)
        ok = ~np.isnan(a_per)  # both classes present: the same users for both models
        wt = counts[:, ok] * n[ok]  # (R, ok groups) impressions of each drawn user
        with np.errstate(divide="ignore", invalid="ignore"):
            d_gauc = (wt * (b_per[ok] - a_per[ok])).sum(axis=1) / wt.sum(axis=1)
        w = counts[:, gid]
        draws += np.stack([weighted_auc(b, y, w) - weighted_auc(a, y, w), d_gauc])
        gains += [auc(b, y) - auc(a, y), gauc(b, y, gid) - gauc(a, y, gid)]
    gains, draws = gains / len(a_all), draws / len(a_all)
    out = {}
    for name, gain, d in zip(("auc", "gauc"), gains, draws, strict=True):
        d = d[~np.isnan(d)]  # draws without both classes (or without any such user)
        out[name] = {"gain": float(gain), **{k: nan[k] for k in ("sd", "lo", "hi")}}
        if len(d):
            lo, hi = np.percentile(d, [2.5, 97.5])
            out[name].update(sd=float(d.std()), lo=float(lo), hi=float(hi))
    return out


def gauc_reference(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """GAUC by looping over groups with :func:`auc_reference` (tests only)."""
    num = den = 0.0
    for g in sorted(set(np.asarray(groups).tolist())):
        sel = np.asarray(groups) == g
        a = auc_reference(np.asarray(scores)[sel], np.asarray(labels)[sel])
        if not math.isnan(a):
            num += a * int(sel.sum())
            den += int(sel.sum())
    return num / den if den else float("nan")


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy (probabilities clipped to [1e-7, 1 - 1e-7])."""
    if len(probs) == 0:
        return float("nan")
    p = np.clip(np.asarray(probs, np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def summary(probs: np.ndarray, labels: np.ndarray, users: np.ndarray) -> dict[str, float]:
    """auc, gauc, logloss, calibration (mean prediction / observed CTR), ctr, n."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, np.float64)
    ctr = float(y.mean()) if len(y) else float("nan")
    return {
        "auc": auc(p, y),
        "gauc": gauc(p, y, users),
        "logloss": log_loss(p, y),
        "calibration": float(p.mean()) / ctr if len(y) and ctr > 0 else float("nan"),
        "ctr": ctr,
        "n": float(len(y)),
    }


MIN_GAUC_USERS = 10


class MetricError(ValueError):
    """A metric of an evaluation part cannot be computed; the message names the cause and
    the fix."""


def check_part(
    labels: np.ndarray,
    users: np.ndarray,
    part: str,
    *,
    min_gauc_users: int = MIN_GAUC_USERS,
) -> list[str]:
    """Check that AUC and GAUC can be computed on one part (train or eval) of a split.

    Raises :class:`MetricError` when the part is empty or holds one class only (AUC would
    be NaN); returns warnings (GAUC over fewer than ``min_gauc_users`` users that have
    both classes: a noisy or NaN figure). Each message names the cause and the fix.

    Example:
        >>> try:
        ...     check_part(np.array([0, 0]), np.array([1, 2]), "eval")
        ... except MetricError as exc:
        ...     print(str(exc)[:57])
        eval part: 2 samples, no positive (label 1): AUC and GAUC
    """
    y = np.asarray(labels) > 0
    if len(y) == 0:
        raise MetricError(
            f"{part} part: no samples. Fix: move the split (--split) or import more data; "
            "an input out of event-time order or a label window longer than the log also "
            "leaves a part empty"
        )
    pos = int(y.sum())
    if pos == 0 or pos == len(y):
        missing = "no positive (label 1)" if pos == 0 else "no negative (label 0)"
        raise MetricError(
            f"{part} part: {len(y):,} samples, {missing}: AUC and GAUC are undefined. Fix: "
            + ("a larger part (move --split), or " if len(y) < 1000 else "")
            + (
                "a label window that covers the log's delays (--set worker.label_window_s=..., "
                "see the import's recommended window), an input in event-time order, or "
                "sampled negatives/positives for implicit feedback (lumstream import "
                "--negatives K)"
                if pos == 0
                else "impressions that were not followed by a positive: map the action of "
                "what was shown (e.g. view=impression) or sample negatives (lumstream "
                "import --negatives K)"
            )
        )
    g = np.asarray(users)
    _, gid = np.unique(g, return_inverse=True)
    n_pos = np.bincount(gid, weights=y.astype(np.float64))
    n = np.bincount(gid)
    both = int(((n_pos > 0) & (n_pos < n)).sum())
    if both < min_gauc_users:
        return [
            f"{part} part: only {both} user(s) with both classes (of {len(n):,}): GAUC "
            f"{'is undefined' if both == 0 else 'rests on too few users'}. Fix: more users "
            "per part (a later --split or more data) or more samples per user"
        ]
    return []


class Window:
    """The last ``size`` (probability, label, user) triples, as a ring buffer.

    Args:
        size: samples kept.

    Example:
        >>> w = Window(3)
        >>> w.add(np.array([0.2, 0.9, 0.6, 0.1]), np.array([0, 1, 1, 0]), np.array([1, 1, 2, 2]))
        >>> len(w), w.summary()["auc"]
        (3, 1.0)
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.probs = np.zeros(size, np.float64)
        self.labels = np.zeros(size, np.float64)
        self.users = np.zeros(size, np.int64)
        self._next = 0
        self._filled = 0

    def __len__(self) -> int:
        return self._filled

    def add(self, probs: np.ndarray, labels: np.ndarray, users: np.ndarray) -> None:
        """Append a batch (only its last ``size`` rows when it is larger than the window)."""
        probs, labels, users = probs[-self.size :], labels[-self.size :], users[-self.size :]
        idx = (self._next + np.arange(len(probs))) % self.size
        self.probs[idx], self.labels[idx], self.users[idx] = probs, labels, users
        self._next = int((self._next + len(probs)) % self.size)
        self._filled = min(self.size, self._filled + len(probs))

    def summary(self) -> dict[str, float]:
        """:func:`summary` of the samples in the window."""
        n = self._filled
        return summary(self.probs[:n], self.labels[:n], self.users[:n])
