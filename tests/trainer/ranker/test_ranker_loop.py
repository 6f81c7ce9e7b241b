"""trainer.ranker.loop: progressive metrics exported, backbone versions recorded per batch,
a vanished vector set kept in use, stop + resume learning every sample exactly once."""

from __future__ import annotations

import dataclasses
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

torch.set_num_threads(1)
V = truth_vectors()


def engine(metrics: Metrics | None = None) -> RankerEngine:
    return RankerEngine(CFG, EMB, V.layout.dim, V.layout.capacity, metrics=metrics)


def test_metrics_and_the_versions_store_grows(tmp_path: Path, metrics: Metrics) -> None:
    """Vectors of a newer backbone version are used as soon as the store has them (and
    they are valid for the samples' times); the change point is recorded."""
    vectors = truth_vectors()
    vectors.metrics = metrics
    cfg = dataclasses.replace(CFG, log_every=2)
    loop = StreamingTrainer(
        cfg,
        engine(metrics),
        MemorySampleSource.of_blocks(blocks()[:40]),
        vectors=vectors,
        metrics=metrics,
    )
    loop.run(max_batches=4)
    v2 = truth_vectors(version=2)  # the same vectors, from a second version
    vectors.add_version(2, watermark=0, items=v2.items[2].ids, item_vectors=v2.items[2].vectors)
    for user, recs in v2.records.items():
        vectors.add(2, np.array([user]), np.zeros(1, np.int64), np.stack(recs.vectors))
    stats = loop.run(max_batches=8)
    assert stats.backbone_versions == [[0, "v1"], [4, "v2"]]
    assert sample(metrics, "lumstream_vectors_version", consumer="ranker") == 2
    assert sample(metrics, "lumstream_ranker_samples_total", outcome="learned") == 8 * 128
    auc = sample(metrics, "lumstream_ranker_progressive", metric="auc")
    assert 0.0 < auc < 1.0
    assert stats.window["n"] == 8 * 128
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
