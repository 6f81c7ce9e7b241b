"""trainer.ranker.checkpoint: exact resume, truncated/corrupt checkpoints fall back to the
previous one, published versions load weights-only and score like the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.metrics import sample
from support.ranker import CFG, EMB, samples, truth_vectors

from monitoring.metrics import Metrics
from trainer.ranker.batch import BatchBuilder
from trainer.ranker.checkpoint import (
    Checkpointer,
    CheckpointError,
    announce,
    load_ranker,
    publish_version,
)
from trainer.ranker.engine import RankerEngine
from trainer.ranker.model import model_inputs

torch.set_num_threads(1)
V = truth_vectors()


def engine(metrics: Metrics | None = None) -> RankerEngine:
    return RankerEngine(CFG, EMB, V.layout.dim, V.layout.capacity, metrics=metrics)


def train(eng: RankerEngine, start: int, stop: int) -> list[np.ndarray]:
    s = samples()
    return [eng.step(s.slice(i, i + 128), V).probs for i in range(start, stop, 128)]


def test_restore_continues_exactly(tmp_path: Path, metrics: Metrics) -> None:
    a = engine(metrics)
    train(a, 0, 1024)
    ck = Checkpointer(tmp_path, keep=2, metrics=metrics)
    ck.save(a, {"hwm": {"0": 5}, "positions": {"0": 9}})
    b = engine()
    meta = ck.restore(b)
    assert meta is not None
    assert meta["hwm"] == {"0": 5}
    assert meta["samples_learned"] == 1024
    assert (b.steps, b.samples_learned) == (a.steps, a.samples_learned)
    for pa, pb in zip(train(a, 1024, 1536), train(b, 1024, 1536), strict=True):
        np.testing.assert_array_equal(pa, pb)
    for m in a.mappers:
        assert np.array_equal(a.mappers[m].owner, b.mappers[m].owner)
    assert sample(metrics, "lumstream_ranker_checkpoints_total", outcome="saved") == 1


def test_truncated_or_corrupt_checkpoints_fall_back(tmp_path: Path, metrics: Metrics) -> None:
    a = engine()
    ck = Checkpointer(tmp_path, keep=5, metrics=metrics)
    train(a, 0, 256)
    first = ck.save(a, {})
    train(a, 256, 512)
    second = ck.save(a, {})
    data = max(second.glob("*.distcp"), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:-100])  # truncated by a full disk
    b = engine()
    assert ck.restore(b)["steps"] == 2
    assert b.steps == 2
    assert sample(metrics, "lumstream_ranker_checkpoints_total", outcome="load_failed") == 1
    (first / "stream.json").write_text("{not json")
    assert ck.restore(engine()) is None  # nothing valid: start fresh
    assert ck.list() == [second, first]


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path)
    ck.save(engine(), {})
    other = RankerEngine(CFG, EMB, V.layout.dim + 1, V.layout.capacity)
    with pytest.raises(CheckpointError, match="config"):
        ck.restore(other)


def test_published_version_scores_like_the_trainer(tmp_path: Path) -> None:
    a = engine()
    train(a, 0, 640)
    paths = [publish_version(tmp_path, a, {"backbone": "v1"}, keep=2) for _ in range(3)]
    assert [p.name for p in paths] == ["r1", "r2", "r3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r2", "r3"]
    loaded = load_ranker(paths[-1])
    assert loaded.manifest["backbone"] == "v1"
    assert loaded.manifest["samples_learned"] == 640
    s = samples().slice(640, 768)
    want = a.score(s, V).probs
    b = BatchBuilder(CFG, loaded.mappers, V.layout.dim, V.layout.capacity)
    batch = b.local(b.map(b.clean(s), learn=False), 0, 1, V)
    with torch.no_grad():
        got = torch.sigmoid(loaded.model(*model_inputs(batch))).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    weights = paths[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="truncated"):
        load_ranker(paths[-1])


def test_announce_sends_the_version(tmp_path: Path) -> None:
    sent: list[tuple[bytes, bytes]] = []
    announce(lambda k, v: sent.append((k, v)), tmp_path / "r4", {"backbone": "v2"})
    ((key, value),) = sent
    msg = json.loads(value)
    assert key == b"ranker"
    assert msg["name"] == "r4"
    assert msg["backbone"] == "v2"
