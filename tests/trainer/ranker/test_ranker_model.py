"""trainer.ranker.model/engine: LUM feature switches, learned defaults for missing vectors,
fused TorchRec tables against the plain reference, progressive scoring, NaN safety."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from support.metrics import sample
from support.ranker import CFG, EMB, samples, truth_vectors

from embeddings.tables import PlainEmbeddingCollection
from monitoring.metrics import Metrics
from trainer.ranker.batch import BatchBuilder
from trainer.ranker.engine import RankerEngine, make_mappers
from trainer.ranker.model import RankerModel, model_inputs
from trainer.vectors.lookup import MemoryVectors

torch.set_num_threads(1)


def batch_of(cfg, n: int = 64, vectors: MemoryVectors | None = None):
    v = vectors or truth_vectors()
    b = BatchBuilder(cfg, make_mappers(EMB), v.layout.dim, v.layout.capacity)
    s = samples().slice(0, n)
    return b.local(b.map(b.clean(s), learn=True), 0, 1, v)


@pytest.mark.parametrize("lum", ["off", "direct", "full"])
def test_forward_for_every_lum_setting(lum: str) -> None:
    cfg = dataclasses.replace(CFG, lum_features=lum)
    model = RankerModel(cfg, EMB, PlainEmbeddingCollection(EMB), 8, 4)
    out = model(*model_inputs(batch_of(cfg)))
    assert out.shape == (64,)
    assert torch.isfinite(out).all()
    has_lum = any(n.startswith("o_proj") for n, _ in model.named_parameters())
    assert has_lum == (lum != "off")


def test_missing_vectors_use_the_learned_default() -> None:
    cfg = dataclasses.replace(CFG, lum_features="full")
    model = RankerModel(cfg, EMB, PlainEmbeddingCollection(EMB), 8, 4)
    batch = batch_of(cfg)
    batch.lum_user_found[:] = False
    batch.lum_item_found[:] = False
    base = model(*model_inputs(batch))
    batch.lum_user.normal_()  # whatever sits behind a missing flag is ignored
    batch.lum_item.normal_()
    torch.testing.assert_close(model(*model_inputs(batch)), base)
    with torch.no_grad():
        model.o_default += 1.0
    assert not torch.allclose(model(*model_inputs(batch)), base)


def test_fused_engine_matches_the_plain_reference() -> None:
    cfg = dataclasses.replace(CFG, lum_features="full")
    v = truth_vectors()
    fused = RankerEngine(cfg, EMB, v.layout.dim, v.layout.capacity)
    plain = RankerEngine(cfg, EMB, v.layout.dim, v.layout.capacity, fused=False)
    s = samples()
    for i in range(0, 6 * 128, 128):
        a, b = fused.step(s.slice(i, i + 128), v), plain.step(s.slice(i, i + 128), v)
        np.testing.assert_allclose(a.probs, b.probs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        fused.access.full_table("item").numpy(), plain.access.full_table("item").numpy(), atol=1e-5
    )


def test_each_batch_is_scored_before_it_is_learned() -> None:
    v = truth_vectors()
    emb = dataclasses.replace(EMB, admit_count=10**6)  # no admissions: same rows either way
    eng = RankerEngine(CFG, emb, v.layout.dim, v.layout.capacity, fused=False)
    s = samples().slice(0, 128)
    scored = eng.step(s, v)
    assert scored.learned
    assert eng.samples_learned == len(scored)
    assert not np.allclose(scored.probs, eng.score(s, v).probs)  # it learned after scoring
    fresh = RankerEngine(CFG, emb, v.layout.dim, v.layout.capacity, fused=False)
    np.testing.assert_allclose(fresh.score(s, v).probs, scored.probs, atol=1e-6)


def test_nan_vectors_and_poisoned_weights_never_stop_training(metrics: Metrics) -> None:
    bad = truth_vectors()
    for user in list(bad.records)[: len(bad.records) // 2]:
        recs = bad.records[user]
        bad.records[user] = type(recs)(
            recs.head, tuple(np.full_like(x, np.nan) for x in recs.vectors)
        )
    v = bad
    eng = RankerEngine(CFG, EMB, v.layout.dim, v.layout.capacity, fused=False, metrics=metrics)
    scored = eng.step(samples().slice(0, 128), bad)
    assert scored.learned
    assert np.isfinite(scored.probs).all()
    with torch.no_grad():
        eng.model.mlp[0].weight[0, 0] = float("nan")
    out = eng.step(samples().slice(128, 256), bad)
    assert not out.learned
    assert eng.steps == 1
    assert sample(metrics, "lumstream_ranker_samples_skipped_total", reason="non_finite") == len(
        out
    )
