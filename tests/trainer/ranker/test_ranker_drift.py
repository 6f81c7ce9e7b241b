"""Drift of the ranker's progressive stream: the reference a version carries (warm-up,
carried on, re-based), restored on resume, the gauges, the score histogram and the click
counter, and the staleness and freshness series of the trainer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.metrics import sample
from support.ranker import CFG, EMB, blocks, truth_vectors

from monitoring.config import DriftConfig
from monitoring.metrics import Metrics
from streams.contracts.samples import encode_block
from streams.kafka.consumer import Message
from trainer.ranker.checkpoint import Checkpointer, versions_dir
from trainer.ranker.drift import RankerDrift
from trainer.ranker.engine import RankerEngine, Scored
from trainer.ranker.loop import StreamingTrainer
from trainer.ranker.source import Assembler, MemorySampleSource

torch.set_num_threads(1)
V = truth_vectors()
SMALL = DriftConfig(window=500, reference_samples=1000, warmup_samples=1500, rebase_s=60.0)


def scored(n: int, seed: int, shift: float = 0.0, cond: int = 5) -> Scored:
    rng = np.random.default_rng(seed)
    probs = np.clip(rng.beta(2, 10, n) + shift, 0, 1)
    return Scored(
        probs,
        (rng.random(n) < probs).astype(np.float64),
        rng.integers(0, 50, n),
        np.zeros(n, np.int64),
        np.zeros(n, np.int64),
        np.arange(n),
        True,
        {
            "condition": rng.integers(cond, cond + 4, n),
            "history_length": rng.integers(0, 20, n),
            "new_condition": rng.random(n) < 0.2,
            "unknown_user": rng.random(n) < 0.05,
            "unknown_item": rng.random(n) < 0.05,
        },
    )


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


def test_a_reference_waits_for_the_warm_up_then_is_carried_then_rebased(metrics: Metrics) -> None:
    clock = Clock()
    drift = RankerDrift(SMALL, metrics, lum=False, clock_ms=clock)
    drift.observe(scored(1200, 0))
    assert drift.reference_for_version(samples_learned=1200) is None  # still warming up
    assert drift.export() == pytest.approx(
        {
            "new_condition_share": drift.current()["new_condition"].mean(),
            "unknown_user_share": drift.current()["unknown_user"].mean(),
            "unknown_item_share": drift.current()["unknown_item"].mean(),
        }
    )
    assert sample(metrics, "lumstream_ranker_score_psi") == 0.0  # no reference: no PSI yet
    assert sample(metrics, "lumstream_ranker_scores_count") is None  # the loop counts those
    assert sample(metrics, "lumstream_ranker_reference_timestamp_seconds") == 0.0  # rules: none
    first = drift.reference_for_version(samples_learned=2000)
    assert first is not None
    assert first.samples == 1000
    assert sample(metrics, "lumstream_ranker_reference_timestamp_seconds") == 1000.0
    assert sample(metrics, "lumstream_ranker_reference_ctr") == pytest.approx(first.stats["ctr"])
    clock.ms += 30_000
    drift.observe(scored(1000, 1, shift=0.3))
    assert drift.reference_for_version(samples_learned=3000) is first  # carried on
    rep = drift.export()
    assert rep["score_psi"] > 0.25
    assert sample(metrics, "lumstream_ranker_score_psi") == pytest.approx(rep["score_psi"])
    assert sample(metrics, "lumstream_ranker_feature_psi", feature="condition") == pytest.approx(
        rep["condition_psi"]
    )
    clock.ms += 31_000  # older than rebase_s: the next version takes a new one
    second = drift.reference_for_version(samples_learned=4000)
    assert second is not None
    assert second is not first
    assert drift.export()["score_psi"] < 0.05  # the shifted traffic is the baseline now


def test_a_batch_without_the_features_is_not_followed(metrics: Metrics) -> None:
    drift = RankerDrift(SMALL, metrics, lum=True)
    drift.observe(scored(300, 2))  # no LUM flags: not windowed
    assert len(drift.window) == 0


def test_a_bad_reference_in_a_checkpoint_is_skipped(metrics: Metrics) -> None:
    drift = RankerDrift(SMALL, metrics, lum=False)
    drift.restore({"samples": 1})
    assert drift.reference is None


def _loop(root: Path, metrics: Metrics, source: MemorySampleSource) -> StreamingTrainer:
    rcfg = dataclasses.replace(CFG, checkpoint_every_batches=20, checkpoint_every_s=0, log_every=5)
    return StreamingTrainer(
        rcfg,
        RankerEngine(rcfg, EMB, V.layout.dim, V.layout.capacity),
        source,
        vectors=V,
        checkpointer=Checkpointer(root / "ck", keep=10, metrics=metrics),
        versions_dir=root / "versions",
        metrics=metrics,
        keep_scores=True,
        drift=dataclasses.replace(SMALL, window=1000, reference_samples=2000, warmup_samples=3000),
    )


def test_versions_carry_the_reference_and_a_resumed_trainer_compares_with_it(
    tmp_path: Path, metrics: Metrics
) -> None:
    data = [encode_block(b) for b in blocks()]
    loop = _loop(tmp_path, metrics, MemorySampleSource(data))
    stats = loop.run(max_batches=60)
    assert stats.published
    vd = versions_dir(tmp_path / "versions")
    manifests = [vd.verify(p) for p in vd.paths()]
    refs = [m.get("drift_reference") for m in manifests]
    assert refs[-1] is not None
    assert refs[-1]["features"]["score"]["kind"] == "quantile"
    assert {"condition", "history_length", "lum_user_missing", "lum_item_missing"} <= set(
        refs[-1]["features"]
    )
    assert sample(metrics, "lumstream_ranker_score_psi") is not None
    assert sample(metrics, "lumstream_ranker_feature_share", feature="lum_user_missing") == 0.0
    assert sample(metrics, "lumstream_ranker_scores_count") == stats.samples
    positives = sum(int(s.labels.sum()) for s in loop.stats.scored)
    assert sample(metrics, "lumstream_ranker_clicks_total") == positives
    assert sample(metrics, "lumstream_ranker_scores_sum") == pytest.approx(
        sum(float(s.probs.sum()) for s in loop.stats.scored)
    )
    assert sample(metrics, "lumstream_ranker_version_timestamp_seconds") == pytest.approx(
        manifests[-1]["created_at_ms"] / 1000
    )
    resumed = _loop(tmp_path, Metrics(metrics.registry.__class__()), MemorySampleSource(data))
    assert resumed.resume()
    assert resumed.drift is not None
    assert resumed.drift.reference is not None
    assert json.dumps(resumed.drift.reference.to_json(), sort_keys=True) == json.dumps(
        refs[-1], sort_keys=True
    )


def test_arrival_times_give_lag_seconds_and_sample_to_version_freshness() -> None:
    asm = Assembler()
    values = [encode_block(b) for b in blocks()[:3]]
    asm.add([Message(0, i, v, i + 1, 1_000_000 + i) for i, v in enumerate(values)])
    assert asm.read_timestamps == {0: 1_000_002}
    taken = asm.take(asm.available())
    assert len(asm.taken_timestamps) == len(taken)
    assert set(asm.taken_timestamps.tolist()) == {1_000_000, 1_000_001, 1_000_002}
