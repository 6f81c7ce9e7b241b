"""Vectors kept fresh and honest: incremental passes between full refreshes, no vector
built from later events reaching an earlier sample, and a condition layout that survives
refreshes whose top conditions change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import torch
from prometheus_client import CollectorRegistry
from support.metrics import sample

from monitoring.metrics import Metrics
from streams.config import EventConfig, StoreConfig, WorkerConfig
from streams.contracts.ids import stable_id
from streams.worker.processor import open_processor
from trainer.backbone.config import BackboneConfig, RefreshConfig
from trainer.backbone.refresh import RefreshPaths, refresh_once
from trainer.backbone.vector_pass import IncrementalRefresher, open_vectors
from trainer.ranker.batch import BatchBuilder
from trainer.ranker.config import RankerConfig
from trainer.ranker.engine import make_mappers
from trainer.vectors.store import VectorReader

torch.set_num_threads(1)
CFG = BackboneConfig(
    dim=8, feature_dim=4, layers=1, heads=1, epochs=1, batch_users=32, max_len=30, query_top=2
)
RCFG = RefreshConfig(eval_users=20, vector_batch_users=16, condition_capacity=6)
T0 = 1_767_225_600_000
NOW = 1_800_000_000_000


class Feed:
    """Click events into partition 0 of a real store, by (user, item, condition, ts)."""

    def __init__(self, root: Path) -> None:
        self.root, self.offset, self.n = root, 0, 0

    def __call__(self, rows: list[tuple[int, int, str, int]]) -> None:
        values = []
        for user, item, cond, ts in rows:
            self.n += 1
            ev = {
                "event_id": f"e{self.n}",
                "user_id": str(user),
                "item_id": str(item),
                "action": "click",
                "condition": cond,
                "ts": ts,
            }
            values.append(orjson.dumps(ev))
        proc = open_processor(
            self.root, 0, StoreConfig(), WorkerConfig(), EventConfig(), Metrics(CollectorRegistry())
        )
        offsets = list(range(self.offset, self.offset + len(values)))
        proc.process(offsets, [None] * len(values), values, NOW)
        proc.commit()
        proc.close()
        self.offset += len(values)


def _clicks(users: range, conds: list[str], t: int, per_user: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(per_user):
        for u in users:
            c = conds[int(rng.integers(len(conds)))]
            rows.append((u, int(rng.integers(40)) + 100 * conds.index(c), c, t + 1000 * k + u))
    return rows


def _paths(tmp: Path) -> RefreshPaths:
    return RefreshPaths(tmp / "store", tmp / "versions", tmp / "vectors")


def test_incremental_passes_refresh_exactly_the_grown_users_and_never_leak(tmp_path: Path) -> None:
    paths, metrics = _paths(tmp_path), Metrics(CollectorRegistry())
    feed = Feed(paths.store)
    feed(_clicks(range(30), ["A", "B"], T0, per_user=6, seed=1))
    full = refresh_once(CFG, RCFG, StoreConfig(), EventConfig(), paths, metrics)
    assert full.version is not None
    wm = int(full.version.manifest["data_watermark"])

    # a future-only signal: users 0-4 start clicking a condition they never touched
    t1 = wm + 60_000
    feed(_clicks(range(5), ["C"], t1, per_user=4, seed=2))
    vectors = open_vectors(paths.vectors, RCFG)
    reader = VectorReader(paths.vectors, tmp_path / "scratch")
    try:
        before = reader.lookup(
            np.arange(30), np.zeros(30, np.int64), np.full((30, 1), stable_id("A")), np.full(30, t1)
        )
        assert before.user_found.all()
        inc = IncrementalRefresher(
            CFG, RCFG, StoreConfig(), EventConfig(), paths.store, paths.versions, vectors, metrics
        )  # a fresh one, as after a restart: its index comes from the store
        try:
            assert inc.step() == 5  # exactly the users whose sequences grew
            assert inc.step() == 0  # and nothing more until they grow again
        finally:
            inc.close()
        assert sample(metrics, "lumstream_backbone_vectors_written_total", mode="incremental") == 5
        reader.refresh()
        for t in (t1, t1 + 1, t1 + 2_000, t1 + 10_000):  # inside and after the new events
            got = reader.lookup(
                np.arange(5), np.zeros(5, np.int64), np.full((5, 1), stable_id("A")), np.full(5, t)
            )
            assert got.user_found.all()
            assert (got.covered < t).all()  # never a record of later events
            stale = got.covered < t1
            # up to the first new event: exactly the full pass's vectors
            assert np.array_equal(got.user[stale], before.user[:5][stale])
        after = reader.lookup(
            np.arange(5),
            np.zeros(5, np.int64),
            np.full((5, 1), stable_id("A")),
            np.full(5, t1 + 10_000),
        )
        assert (after.covered >= t1).all()  # the new record, once its events are past
        assert not np.allclose(after.user, before.user[:5])  # the signal moved the vectors
        untouched = reader.lookup(
            np.arange(5, 30),
            np.zeros(25, np.int64),
            np.full((25, 1), stable_id("A")),
            np.full(25, t1 + 10_000),
        )
        assert np.array_equal(untouched.user, before.user[5:])
    finally:
        reader.close()
        vectors.close()


def test_three_refreshes_on_drifting_conditions_keep_the_layout(tmp_path: Path) -> None:
    """The most frequent conditions change at every refresh; the layout only appends, and a
    ranker built for its capacity keeps finding its LUM inputs throughout."""
    paths, metrics = _paths(tmp_path), Metrics(CollectorRegistry())
    feed = Feed(paths.store)
    builder = BatchBuilder(RankerConfig(lum_features="full"), make_mappers(_emb()), 8, 6, metrics)
    layouts = []
    t = T0
    for phase, (conds, per_user) in enumerate(
        ((["A", "B"], 6), (["C", "D"], 14), (["E", "F"], 30))
    ):
        feed(_clicks(range(20), conds, t, per_user=per_user, seed=phase))  # each phase dominates
        t += 20 * 1000 * per_user
        result = refresh_once(CFG, RCFG, StoreConfig(), EventConfig(), paths, metrics)
        assert result.version is not None
        reader = VectorReader(paths.vectors, tmp_path / f"scratch{phase}")
        try:
            layout = reader.layout
            assert layout is not None
            layouts.append(layout.conditions[:, 0].tolist())
            assert builder._usable(layout)
            later = t + 10**9
            got = reader.lookup(
                np.arange(20),
                np.zeros(20, np.int64),
                np.full((20, 1), stable_id(conds[0])),
                np.full(20, later),
            )
            assert got.user_found.all()
            assert (got.version == result.version.number).all()
            assert (got.cond_index >= 0).all()  # this phase's conditions have rows
        finally:
            reader.close()
    a, b, c = layouts
    assert a == b[: len(a)] == c[: len(a)]  # earlier rows never move
    assert b == c[: len(b)]
    assert len(a) < len(b) < len(c)  # each refresh appended its new top conditions
    assert set(c) == {stable_id(x) for x in "ABCDEF"}
    assert sample(metrics, "lumstream_vectors_layout_refused_total", consumer="ranker") is None


def _emb():  # small tables
    from embeddings.config import EmbeddingsConfig

    return EmbeddingsConfig(dim=8, user_rows=64, item_rows=512, cond_rows=16, cat_rows=16)
