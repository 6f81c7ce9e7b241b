"""Drift math, pure numpy, for every layer: PSI, Jensen–Shannon, reference distributions.

A :class:`DriftReference` describes what a model's inputs and outputs looked like when it
was published (the ranker saves one in each version's manifest): per feature the bins and
the share of samples in each. A feature is one of four kinds (:class:`FeatureSpec`):

- ``quantile``: numbers, binned at the reference's own quantiles (deciles by default:
  every bin holds a tenth of the reference), e.g. the ranker's scores;
- ``edges``: numbers, binned at fixed edges, e.g. history lengths;
- ``category``: integer ids, the reference's ``top`` most frequent ids plus one bin for
  all others, e.g. the condition mix;
- ``flag``: booleans, two bins, e.g. "the user is unknown to the model".

:meth:`DriftReference.compare` bins the current samples (a :class:`SampleWindow`) the same
way and returns each feature's PSI against the reference.

**PSI** (population stability index) of reference shares ``p`` and current shares ``q``::

    PSI = sum_b (q_b - p_b) * ln(q_b / p_b)

with every share floored at :data:`FLOOR` so an empty bin counts but stays finite. Read it
as: below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a large one (the alert
thresholds of ``monitoring/rules``). Sampling noise alone gives about ``(bins - 1) *
(1/n_current + 1/n_reference)`` (0.002 for deciles of 5,000 against 20,000 samples).
**Jensen–Shannon** divergence (base 2, in [0, 1], symmetric, bounded) is the alternative
for categorical mixes with many rare bins.

Example:
    >>> ref = DriftReference.capture((FeatureSpec("score", "quantile"),),
    ...                              {"score": np.linspace(0, 1, 1000)}, captured_at_ms=0)
    >>> round(ref.compare({"score": np.linspace(0, 1, 1000)})["score"], 6)
    0.0
    >>> ref.compare({"score": np.linspace(0.5, 1, 1000)})["score"] > 0.25
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FLOOR = 1e-4  # the least share a bin counts with in PSI (an empty bin is not infinite)
KINDS = ("quantile", "edges", "category", "flag")


def shares(counts: np.ndarray) -> np.ndarray:
    """Counts (or weights) as shares summing to one; all zero stays all zero."""
    c = np.asarray(counts, np.float64)
    total = c.sum()
    return c / total if total > 0 else np.zeros_like(c)


def psi(reference: np.ndarray, current: np.ndarray, floor: float = FLOOR) -> float:
    """PSI between two distributions over the same bins (counts or shares).

    Example:
        >>> round(psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])), 3)
        0.879
    """
    p = np.maximum(shares(reference), floor)
    q = np.maximum(shares(current), floor)
    return float(((q - p) * np.log(q / p)).sum())


def js_divergence(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) between two distributions over the
    same bins (counts or shares).

    Example:
        >>> js_divergence(np.array([1, 0]), np.array([0, 1]))
        1.0
    """
    p, q = shares(reference), shares(current)
    m = (p + q) / 2.0

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return max(0.0, min(1.0, 0.5 * kl(p) + 0.5 * kl(q)))


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """The ``bins - 1`` interior quantile edges of ``values`` (deciles for 10), duplicates
    removed (a point mass makes fewer, wider bins)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return np.zeros(0)
    return np.unique(np.quantile(v, np.arange(1, bins) / bins))


@dataclass(frozen=True)
class FeatureSpec:
    """How one feature is binned.

    Args:
        name: the column of the samples.
        kind: ``quantile``, ``edges``, ``category`` or ``flag`` (see the module doc).
        bins: quantile bins (``quantile``).
        edges: fixed interior edges, ascending (``edges``): bin b holds
            ``edges[b-1] <= x < edges[b]``.
        top: most frequent ids kept (``category``); the rest share one bin.
    """

    name: str
    kind: str
    bins: int = 10
    edges: tuple[float, ...] = ()
    top: int = 20

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name}: kind {self.kind!r} is not one of {KINDS}")


@dataclass(frozen=True)
class FeatureReference:
    """One feature's reference: its bins and the reference's share in each.

    Args:
        kind: as :class:`FeatureSpec`.
        bins: interior edges (``quantile``, ``edges``), kept ids (``category``), or empty
            (``flag``).
        p: shares per bin (``category``: the kept ids, then "other"; ``flag``: false,
            true).
    """

    kind: str
    bins: tuple[float, ...]
    p: tuple[float, ...]

    def counts(self, values: np.ndarray) -> np.ndarray:
        """How many of ``values`` fall in each bin (non-finite numbers are left out)."""
        v = np.asarray(values)
        if self.kind == "flag":
            t = int(np.count_nonzero(v))
            return np.array([len(v) - t, t], np.float64)
        if self.kind == "category":
            keys = np.asarray(self.bins, np.int64)
            out = np.zeros(len(keys) + 1, np.float64)
            if not len(keys):
                out[-1] = float(len(v))
                return out
            order = np.argsort(keys)
            ids = v.astype(np.int64)
            pos = np.searchsorted(keys[order], ids).clip(max=len(keys) - 1)
            hit = keys[order][pos] == ids
            np.add.at(out, order[pos[hit]], 1.0)
            out[-1] = float((~hit).sum())
            return out
        x = v.astype(np.float64)
        x = x[np.isfinite(x)]
        idx = np.searchsorted(np.asarray(self.bins, np.float64), x, side="right")
        return np.bincount(idx, minlength=len(self.bins) + 1).astype(np.float64)

    def psi(self, values: np.ndarray) -> float:
        """PSI of ``values`` against this reference (NaN without values)."""
        c = self.counts(values)
        return psi(np.asarray(self.p), c) if c.sum() > 0 else float("nan")

    def js(self, values: np.ndarray) -> float:
        """Jensen–Shannon divergence of ``values`` against this reference (NaN without)."""
        c = self.counts(values)
        return js_divergence(np.asarray(self.p), c) if c.sum() > 0 else float("nan")

    @classmethod
    def capture(cls, spec: FeatureSpec, values: np.ndarray) -> FeatureReference:
        v = np.asarray(values)
        if spec.kind == "quantile":
            bins: tuple[float, ...] = tuple(float(e) for e in quantile_edges(v, spec.bins))
        elif spec.kind == "edges":
            bins = tuple(float(e) for e in spec.edges)
        elif spec.kind == "category":
            ids, n = np.unique(v.astype(np.int64), return_counts=True)
            keep = np.argsort(-n, kind="stable")[: spec.top]
            bins = tuple(int(i) for i in np.sort(ids[keep]))
        else:
            bins = ()
        draft = cls(spec.kind, bins, ())
        return cls(spec.kind, bins, tuple(float(s) for s in shares(draft.counts(v))))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "bins": list(self.bins), "p": list(self.p)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FeatureReference:
        kind = str(raw["kind"])
        if kind not in KINDS:
            raise ValueError(f"feature reference of unknown kind {kind!r}")
        bins = tuple(int(b) if kind == "category" else float(b) for b in raw["bins"])
        p = tuple(float(x) for x in raw["p"])
        expected = len(bins) + 1 if kind != "flag" else 2
        if len(p) != expected:
            raise ValueError(f"{kind} reference with {len(bins)} bins has {len(p)} shares")
        return cls(kind, bins, p)


@dataclass(frozen=True)
class DriftReference:
    """What the samples looked like when a model was published: per feature its bins and
    shares, and a few summary statistics.

    Args:
        samples: how many samples it was computed from.
        captured_at_ms: when (ms since the epoch).
        features: feature name -> reference.
        stats: summary numbers (the ranker: ``ctr``, ``mean_score``).
        source: where it was first captured (e.g. the version that first carried it).
    """

    samples: int
    captured_at_ms: int
    features: dict[str, FeatureReference]
    stats: dict[str, float] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def capture(
        cls,
        specs: Sequence[FeatureSpec],
        columns: Mapping[str, np.ndarray],
        *,
        captured_at_ms: int,
        stats: Mapping[str, float] | None = None,
        source: str = "",
    ) -> DriftReference:
        """The reference of ``columns`` (name -> values, all of one length) for the
        features of ``specs`` that ``columns`` holds."""
        feats = {
            s.name: FeatureReference.capture(s, columns[s.name]) for s in specs if s.name in columns
        }
        n = len(next(iter(columns.values()))) if columns else 0
        return cls(n, int(captured_at_ms), feats, dict(stats or {}), source)

    def compare(self, columns: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Feature name -> PSI of ``columns`` against this reference, for the features both
        have (NaN for a feature without current values)."""
        return {
            name: ref.psi(columns[name]) for name, ref in self.features.items() if name in columns
        }

    def age_s(self, now_ms: int) -> float:
        return (now_ms - self.captured_at_ms) / 1000.0

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "captured_at_ms": self.captured_at_ms,
            "source": self.source,
            "stats": dict(self.stats),
            "features": {k: v.to_json() for k, v in self.features.items()},
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DriftReference:
        """Parse :meth:`to_json`'s output.

        Raises:
            ValueError: not a drift reference (the message says what is wrong).
        """
        try:
            return cls(
                int(raw["samples"]),
                int(raw["captured_at_ms"]),
                {str(k): FeatureReference.from_json(v) for k, v in raw["features"].items()},
                {str(k): float(v) for k, v in raw.get("stats", {}).items()},
                str(raw.get("source", "")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a drift reference: {exc!r}") from None


class SampleWindow:
    """The last ``size`` samples of a few named columns, as a ring buffer.

    Args:
        size: samples kept.
        dtypes: column name -> numpy dtype.

    Example:
        >>> w = SampleWindow(3, {"x": np.float64})
        >>> w.add(x=np.array([1.0, 2.0, 3.0, 4.0]))
        >>> w.columns()["x"].tolist(), w.columns(last=2)["x"].tolist()
        ([2.0, 3.0, 4.0], [3.0, 4.0])
    """

    def __init__(self, size: int, dtypes: Mapping[str, Any]) -> None:
        if size < 1:
            raise ValueError(f"window size {size}: must be at least 1")
        self.size = size
        self._data = {k: np.zeros(size, dt) for k, dt in dtypes.items()}
        self._next = 0
        self._filled = 0

    def __len__(self) -> int:
        return self._filled

    def add(self, **arrays: np.ndarray) -> None:
        """Append one batch: every column, all of one length (only the last ``size`` rows
        of a larger batch are kept)."""
        if set(arrays) != set(self._data):
            raise ValueError(f"columns {sorted(arrays)}, expected {sorted(self._data)}")
        n = {len(a) for a in arrays.values()}
        if len(n) != 1:
            raise ValueError(f"columns of different lengths: {sorted(n)}")
        count = min(n.pop(), self.size)
        if not count:
            return
        idx = (self._next + np.arange(count)) % self.size
        for k, a in arrays.items():
            self._data[k][idx] = np.asarray(a)[-count:]
        self._next = int((self._next + count) % self.size)
        self._filled = min(self.size, self._filled + count)

    def columns(self, last: int | None = None) -> dict[str, np.ndarray]:
        """Copies of the newest ``last`` samples (default all kept), oldest first."""
        n = self._filled if last is None else min(last, self._filled)
        idx = (self._next - n + np.arange(n)) % self.size
        return {k: v[idx] for k, v in self._data.items()}
