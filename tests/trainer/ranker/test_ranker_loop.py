"""trainer.ranker.loop: progressive metrics exported, backbone versions recorded per batch,
a vanished vector set kept in use, stop + resume learning every sample exactly once."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import torch
from support.metrics import sample
from support.ranker import CFG, EMB, blocks, samples, truth_vectors

from monitoring.metrics import Metrics
from trainer.ranker.checkpoint import Checkpointer
from trainer.ranker.engine import RankerEngine
from trainer.ranker.loop import StreamingTrainer
from trainer.ranker.source import MemorySampleSource
from trainer.vectors.sets import VectorsWatcher

torch.set_num_threads(1)
V = truth_vectors()


def engine(metrics: Metrics | None = None) -> RankerEngine:
    return RankerEngine(CFG, EMB, V.dim, V.n_conditions, metrics=metrics)


def test_metrics_versions_and_a_vanishing_backbone(tmp_path: Path, metrics: Metrics) -> None:
    V.save(tmp_path / "v1")
    watcher = VectorsWatcher(tmp_path, poll_s=0, metrics=metrics)
    cfg = dataclasses.replace(CFG, log_every=2)
    loop = StreamingTrainer(
        cfg,
        engine(metrics),
        MemorySampleSource.of_blocks(blocks()[:40]),
        vectors=watcher,
        metrics=metrics,
    )
    loop.run(max_batches=4)
    v2 = truth_vectors(version="v2")
    v2.save(tmp_path / "v2")
    loop.run(max_batches=8)
    shutil.rmtree(tmp_path / "v2")
    stats = loop.run(max_batches=12)
    assert stats.backbone_versions == [[0, "v1"], [4, "v2"]]
    assert loop.vectors is not None
    assert loop.vectors.version == "v2"
    assert sample(metrics, "lumstream_ranker_backbone_missing_total") == 1
    assert sample(metrics, "lumstream_ranker_backbone_version") == 2
    assert sample(metrics, "lumstream_ranker_samples_total", outcome="learned") == 12 * 128
    auc = sample(metrics, "lumstream_ranker_progressive", metric="auc")
    assert 0.0 < auc < 1.0
    assert stats.window["n"] == 12 * 128
    assert sample(metrics, "lumstream_ranker_ids_used", table="item") > 0


def test_stop_and_resume_learn_every_sample_once(tmp_path: Path) -> None:
    bl = blocks()[:30]
    total = sum(len(b) for b in bl)
    cfg = dataclasses.replace(CFG, checkpoint_every_batches=3, checkpoint_every_s=0)
    first = StreamingTrainer(
        cfg,
        engine(),
        MemorySampleSource.of_blocks(bl),
        vectors=V,
        checkpointer=Checkpointer(tmp_path / "ck"),
    )
    first.run(max_batches=7)
    second = StreamingTrainer(
        cfg,
        engine(),
        MemorySampleSource.of_blocks(bl),
        vectors=V,
        checkpointer=Checkpointer(tmp_path / "ck"),
    )
    assert second.resume()
    assert second.engine.samples_learned == 7 * 128
    second.run()
    assert second.engine.samples_learned == total
    whole = StreamingTrainer(cfg, engine(), MemorySampleSource.of_blocks(bl), vectors=V)
    whole.run()
    probe = samples().slice(total, total + 256)
    np.testing.assert_array_equal(
        second.engine.score(probe, V).probs, whole.engine.score(probe, V).probs
    )
