"""trainer.vectors.sets: lookups, query conditions, non-finite vectors, weights-only files,
a backbone version's vectors, and the watcher (newer set, corrupt set, vanished set)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support.backbone import make_pairs
from support.metrics import sample

from monitoring.metrics import Metrics
from trainer.backbone import versions
from trainer.backbone.config import BackboneConfig
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.group_query import compute_vectors, vector_set
from trainer.backbone.tokens import Vocabs
from trainer.vectors.sets import LumVectors, VectorsError, VectorsWatcher

torch.set_num_threads(1)


def small(version: str = "v1") -> LumVectors:
    o = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    return LumVectors(
        version, np.array([50, 60]), np.array([9, 3, 5]), o, np.array([7, 1]), np.ones((2, 4))
    )


def test_lookups_are_keyed_by_id() -> None:
    v = small()
    o, found = v.lookup_users(np.array([3, 4, 9]))
    assert found.tolist() == [True, False, True]
    assert o[0, 0, 0] == 8.0
    assert o[2, 0, 0] == 0.0
    assert not o[1].any()
    assert v.condition_index(np.array([60, 50, 61])).tolist() == [1, 0, -1]
    e, ok = v.lookup_items(np.array([1, 2]))
    assert ok.tolist() == [True, False]
    assert e[1].sum() == 0


def test_non_finite_vectors_count_as_missing() -> None:
    o = np.ones((2, 2, 4), np.float32)
    o[1, 0, 2] = np.nan
    e = np.ones((2, 4), np.float32)
    e[0, 0] = np.inf
    v = LumVectors("v1", np.array([1, 2]), np.array([10, 11]), o, np.array([5, 6]), e)
    assert v.lookup_users(np.array([10, 11]))[1].tolist() == [True, False]
    assert v.lookup_items(np.array([5, 6]))[1].tolist() == [False, True]
    assert v.non_finite == {"user": 1, "item": 1}


def test_an_empty_set_finds_nothing() -> None:
    v = LumVectors(
        "v1", np.array([1]), np.zeros(0), np.zeros((0, 1, 4)), np.zeros(0), np.zeros((0, 4))
    )
    assert not v.lookup_users(np.array([1, 2]))[1].any()
    assert not v.lookup_items(np.array([1]))[1].any()


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(VectorsError, match="user vectors"):
        LumVectors(
            "v1",
            np.array([1, 2]),
            np.array([1]),
            np.ones((1, 3, 4)),
            np.array([1]),
            np.ones((1, 4)),
        )
    with pytest.raises(VectorsError, match="duplicate"):
        LumVectors(
            "v1",
            np.array([1]),
            np.array([1, 1]),
            np.ones((2, 1, 4)),
            np.array([1]),
            np.ones((1, 4)),
        )


def test_save_load_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    small().save(tmp_path / "v1")
    back = LumVectors.load(tmp_path / "v1")
    assert back.version == "v1"
    assert np.array_equal(back.user_vectors, small().user_vectors)
    (tmp_path / "v1" / "lum_vectors.safetensors").write_bytes(b"garbage")
    with pytest.raises(VectorsError, match="unreadable"):
        LumVectors.load(tmp_path / "v1")


def test_vectors_of_a_backbone_version(tmp_path: Path) -> None:
    pairs = make_pairs(n_users=6)
    cfg = BackboneConfig(dim=8, heads=2, layers=1, query_conditions=("1000", "1001"))
    model = LumBackbone(cfg, Vocabs.build([s for _, s in pairs], cfg))
    info = versions.publish(tmp_path, model, watermark=1)
    v = vector_set(info.path, pairs)
    users, o = compute_vectors(model.eval(), pairs, np.array([1000, 1001]))
    assert v.version == "v1"
    assert v.n_conditions == 2
    assert v.dim == 8
    got, found = v.lookup_users(users)
    assert found.all()
    np.testing.assert_allclose(got, o.numpy(), atol=1e-5)
    assert v.condition_index(np.array([1001, 7])).tolist() == [1, -1]


def test_watcher_follows_new_sets_and_keeps_a_vanished_one(
    tmp_path: Path, metrics: Metrics
) -> None:
    now = [0.0]
    small("v1").save(tmp_path / "v1")
    w = VectorsWatcher(tmp_path, poll_s=10, metrics=metrics, clock=lambda: now[0])
    assert w.current is not None
    assert w.current.version == "v1"
    small("v2").save(tmp_path / "v2")
    assert w.poll().version == "v1"  # not yet: poll interval
    now[0] = 11
    assert w.poll().version == "v2"
    (tmp_path / "v3").mkdir()
    (tmp_path / "v3" / "lum_vectors.safetensors").write_bytes(b"broken")
    shutil.rmtree(tmp_path / "v2")  # retention removed the version in use
    now[0] = 22
    current = w.poll()
    assert current is not None
    assert current.version == "v2"
    assert w.missing
    assert sample(metrics, "lumstream_ranker_backbone_missing_total") == 1
    assert sample(metrics, "lumstream_ranker_vector_load_errors_total") == 1
    now[0] = 33
    w.poll()
    assert sample(metrics, "lumstream_ranker_backbone_missing_total") == 1  # counted once
