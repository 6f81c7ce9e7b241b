"""Drift of the ranker's progressive stream, computed where the data is: in the trainer.

Every scored batch (rank 0) adds its scores, labels and features to a window
(:class:`~monitoring.drift.SampleWindow`), to the score histogram and to the click counter.
Every export compares the newest ``drift.window`` samples with the **reference** of the
newest version and sets the gauges:

- ``lumstream_ranker_score_psi``: the scores against the reference's deciles;
- ``lumstream_ranker_feature_psi{feature}``: the condition mix (the reference's top
  conditions + other), the history length (bins 0, 1, 2-3, 4-7, ... 64+), and the shares
  of unknown users and items (no row of their own in the model's tables yet) and of
  samples without a LUM user or item vector;
- ``lumstream_ranker_feature_share{feature}``: those four shares themselves;
- ``lumstream_ranker_reference_ctr`` and ``_timestamp_seconds``: what the reference holds.

The label side needs no window here: the loop counts ``lumstream_ranker_scores_sum``
(predicted clicks), ``_count`` (samples) and ``lumstream_ranker_clicks_total`` (observed
clicks), so Prometheus computes the click rate and the calibration over any window long
enough for the label join (monitoring/rules/ranker.yml).

**References.** Each checkpoint and each published version carries one (the manifest's
``drift_reference``, :class:`~monitoring.drift.DriftReference`): the reference of the
version before, until that one is ``drift.rebase_s`` old; then a new one is captured from
the newest ``drift.reference_samples`` samples. None is captured before the model has
learned ``drift.warmup_samples`` samples (a model learning from scratch has no stable
scores yet) or while fewer samples than a window are at hand; until a reference exists no
PSI is exported (an absent series fires no alert). A restarted trainer takes the reference
of the checkpoint it resumes from.

Example:
    >>> drift = RankerDrift(DriftConfig(window=100, reference_samples=100,
    ...                                 warmup_samples=0), lum=False)  # doctest: +SKIP
    >>> drift.observe(scored)  # doctest: +SKIP
    >>> drift.reference_for_version(samples_learned=10_000)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from monitoring.config import DriftConfig
from monitoring.drift import DriftReference, FeatureSpec, SampleWindow
from monitoring.metrics import Metrics
from trainer.ranker.engine import Scored

log = logging.getLogger(__name__)

HISTORY_EDGES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # 0, 1, 2-3, 4-7, ..., 64+
FLAGS = ("new_condition", "unknown_user", "unknown_item")
LUM_FLAGS = ("lum_user_missing", "lum_item_missing")


def feature_specs(cfg: DriftConfig, lum: bool) -> tuple[FeatureSpec, ...]:
    """The features followed: score deciles, condition mix, history length, the flags."""
    flags = FLAGS + (LUM_FLAGS if lum else ())
    return (
        FeatureSpec("score", "quantile", bins=10),
        FeatureSpec("condition", "category", top=cfg.top_conditions),
        FeatureSpec("history_length", "edges", edges=HISTORY_EDGES),
        *(FeatureSpec(f, "flag") for f in flags),
    )


class RankerDrift:
    """The drift monitor of one trainer (rank 0).

    Args:
        cfg: window sizes, warm-up and re-basing.
        metrics: where the gauges, the score histogram and the click counter go.
        lum: the model has LUM features (follow the missing-vector shares too).
        clock_ms: wall-clock ms (tests pass a fake).
    """

    def __init__(
        self,
        cfg: DriftConfig,
        metrics: Metrics | None = None,
        *,
        lum: bool,
        clock_ms: Any = None,
    ) -> None:
        self.cfg, self.metrics = cfg, metrics
        self.specs = feature_specs(cfg, lum)
        self.flags = [s.name for s in self.specs if s.kind == "flag"]
        dtypes: dict[str, Any] = {"score": np.float64, "label": np.float64}
        dtypes |= {"condition": np.int64, "history_length": np.int64}
        dtypes |= dict.fromkeys(self.flags, np.bool_)
        self.window = SampleWindow(max(cfg.window, cfg.reference_samples), dtypes)
        self.reference: DriftReference | None = None
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)

    def observe(self, scored: Scored) -> None:
        """Add a scored batch (before the model learns from it)."""
        if not len(scored):
            return
        cols: dict[str, np.ndarray] = {"score": scored.probs, "label": scored.labels}
        for name in ("condition", "history_length", *self.flags):
            got = scored.features.get(name)
            if got is None or len(got) != len(scored):
                return  # a batch without the features (e.g. scored elsewhere): not followed
            cols[name] = got
        self.window.add(**cols)

    def current(self) -> dict[str, np.ndarray]:
        """The newest ``drift.window`` samples."""
        return self.window.columns(last=self.cfg.window)

    def report(self) -> dict[str, float]:
        """``score_psi``, ``<feature>_psi`` and ``<flag>_share`` of the current window
        (the PSIs only with a reference and a full window)."""
        cols = self.current()
        n = len(cols["score"])
        out: dict[str, float] = {}
        if n:
            for f in self.flags:
                out[f"{f}_share"] = float(cols[f].mean())
        if self.reference is not None and n >= self.cfg.window:
            for name, value in self.reference.compare(cols).items():
                out[f"{name}_psi"] = value
        return out

    def export(self) -> dict[str, float]:
        """Set the gauges from :meth:`report` (and return it)."""
        rep = self.report()
        m = self.metrics
        if m is not None:
            for f in self.flags:
                if f"{f}_share" in rep:
                    m.ranker_feature_share.labels(feature=f).set(rep[f"{f}_share"])
            for spec in self.specs:
                value = rep.get(f"{spec.name}_psi")
                if value is None or not np.isfinite(value):
                    continue
                if spec.name == "score":
                    m.ranker_score_psi.set(value)
                else:
                    m.ranker_feature_psi.labels(feature=spec.name).set(value)
        return rep

    def reference_for_version(self, samples_learned: int) -> DriftReference | None:
        """The reference a checkpoint or version published now carries (see the module
        doc), which becomes the one compared with."""
        now = int(self._clock_ms())
        ref = self.reference
        if ref is not None and ref.age_s(now) < self.cfg.rebase_s:
            return ref
        if samples_learned < self.cfg.warmup_samples or len(self.window) < self.window.size:
            return ref  # keep the old one (or none) until a new one can be taken
        cols = self.window.columns(last=self.cfg.reference_samples)
        stats = {
            "ctr": float(cols["label"].mean()),
            "mean_score": float(cols["score"].mean()),
            "samples_learned": float(samples_learned),
        }
        self._use(DriftReference.capture(self.specs, cols, captured_at_ms=now, stats=stats))
        log.info(
            "ranker drift: new reference from %d samples (ctr %.4f, mean score %.4f)",
            len(cols["score"]),
            stats["ctr"],
            stats["mean_score"],
        )
        return self.reference

    def restore(self, raw: dict[str, Any] | None) -> None:
        """Take the reference of a checkpoint being resumed (a bad one is logged, skipped)."""
        if not raw:
            return
        try:
            self._use(DriftReference.from_json(raw))
        except ValueError as exc:
            log.warning(
                "ranker drift: checkpoint reference not usable (%s); a new one follows", exc
            )

    def _use(self, ref: DriftReference) -> None:
        self.reference = ref
        if self.metrics is not None:
            self.metrics.ranker_reference_time.set(ref.captured_at_ms / 1000.0)
            if "ctr" in ref.stats:
                self.metrics.ranker_reference_ctr.set(ref.stats["ctr"])
