"""trainer.ranker.multi_epoch: sparse-reset restores tables, optimizer state and ids to
θ_s^(0) at every epoch while dense parameters carry over; naive and single modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.ranker import CFG, EMB, blocks, samples, truth_vectors

from trainer.ranker.engine import RankerEngine
from trainer.ranker.multi_epoch import collect, train_epochs
from trainer.ranker.source import MemorySampleSource

torch.set_num_threads(1)
V = truth_vectors()


def engine() -> RankerEngine:
    return RankerEngine(CFG, EMB, V.layout.dim, V.layout.capacity)


def dense(e: RankerEngine) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in e.model.dense_parameters()])


def test_sparse_reset_restarts_sparse_state_and_keeps_dense() -> None:
    s = samples()
    train, held = s.slice(0, 1024), s.slice(1024, 1536)
    one, reset, naive = engine(), engine(), engine()
    single = train_epochs(one, train, held, mode="single", epochs=3, vectors=V)
    results = train_epochs(reset, train, held, mode="sparse_reset", epochs=3, vectors=V)
    train_epochs(naive, train, held, mode="naive", epochs=3, vectors=V)
    assert len(single) == 1
    assert [r.epoch for r in results] == [1, 2, 3]
    assert 0.0 < results[-1].eval["auc"] < 1.0
    assert results[0].train["n"] == 1024
    for t in one.mappers:  # ids re-admitted exactly as in epoch 1 after each reset
        assert np.array_equal(one.mappers[t].owner, reset.mappers[t].owner)
        assert np.array_equal(one.mappers[t].sketch, reset.mappers[t].sketch)
    assert (naive.mappers["item"].sketch.sum()) > (reset.mappers["item"].sketch.sum())
    assert not torch.equal(dense(one), dense(reset))  # dense kept learning
    assert single[0].eval == pytest.approx(results[0].eval)  # epoch 1 is the same run


def test_collect_reads_a_finite_source_once() -> None:
    bl = blocks()[:5]
    src = MemorySampleSource.of_blocks(bl + bl[:2])  # with re-sent blocks
    got = collect(src)
    assert len(got) == sum(len(b) for b in bl)
