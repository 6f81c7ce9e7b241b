"""Ranking-service fixtures: a small published ranker version trained on the generator's
samples, the truth vector store, and a sequence store holding chosen histories."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from monitoring.metrics import Metrics
from serving.app import OnServed, make_app
from serving.config import ServingConfig
from serving.server import BackgroundServer
from serving.service import RankService, ServicePaths
from streams.config import StoreConfig
from streams.contracts.ids import stable_id
from streams.contracts.records import SEQ_DTYPE
from streams.generator import World
from streams.worker.store import PartitionStore
from support.ranker import CFG, EMB, GEN, samples, truth_store
from trainer.ranker.batch import Samples
from trainer.ranker.checkpoint import publish_version
from trainer.ranker.engine import RankerEngine
from trainer.vectors.store import VectorReader

WORKER_HISTORY = 30  # tests/support/ranker.py's worker history length
STORE = StoreConfig(sync_writes=False)
NAMES = {stable_id(World.condition_name(c)): World.condition_name(c) for c in range(GEN.categories)}


def name_of(cat: int) -> str | None:
    """The category / condition string of a stable id (None for 0: no category)."""
    return None if cat == 0 else NAMES[cat]


@dataclass
class Trained:
    """A trained engine, its vector reader and where it publishes."""

    root: Path
    engine: RankerEngine
    vectors: VectorReader
    published: list[Path] = field(default_factory=list)

    @property
    def paths(self) -> ServicePaths:
        return ServicePaths(self.root / "store", self.root / "vectors", self.root / "versions")

    def train(self, start: int, stop: int) -> None:
        s = samples()
        for i in range(start, stop, 128):
            self.engine.step(s.slice(i, min(i + 128, stop)), self.vectors)

    def publish(self) -> Path:
        path = publish_version(self.root / "versions", self.engine, {"backbone": "v1"}, keep=10)
        assert path is not None
        self.published.append(path)
        return path


@contextlib.contextmanager
def trained(root: Path, steps: int = 640) -> Iterator[Trained]:
    torch.set_num_threads(1)
    truth_store(root / "vectors")
    reader = VectorReader(root / "vectors", root / "scratch-trainer")
    assert reader.layout is not None
    eng = RankerEngine(CFG, EMB, reader.layout.dim, reader.layout.capacity)
    t = Trained(root, eng, reader)
    t.train(0, steps)
    try:
        yield t
    finally:
        reader.close()


def one_per_user(s: Samples, n: int) -> Samples:
    """The first sample of each of up to ``n`` users."""
    _, first = np.unique(s.rows["user"], return_index=True)
    keep = np.zeros(len(s), bool)
    keep[np.sort(first)[:n]] = True
    return s.select(keep)


def write_histories(store_root: Path, s: Samples) -> PartitionStore:
    """A partition store whose sequence of each sample's user is that sample's history
    (one sample per user); returned open (the writer holds it)."""
    store = PartitionStore(store_root, 0, STORE)
    off = s.offsets
    users, recs = [], []
    for i in range(len(s)):
        h = s.hist[off[i] : off[i + 1]]
        ev = np.empty(len(h), SEQ_DTYPE)
        for name in ("item", "cond", "cat", "ts", "action"):
            ev[name] = h[name]
        users.append(np.full(len(h), s.rows["user"][i], np.int64))
        recs.append(ev)
    if recs:
        all_users = np.concatenate(users)
        all_recs = np.concatenate(recs)
        store.append(all_users, all_recs, np.ones(len(all_users), bool))
    store.commit()
    return store


class Clock:
    """An event-time clock tests set (ms)."""

    def __init__(self, now_ms: int = 0) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@contextlib.contextmanager
def service(
    paths: ServicePaths,
    cfg: ServingConfig,
    metrics: Metrics,
    *,
    clock: Clock | None = None,
    on_served: OnServed | None = None,
    watch: bool = True,
) -> Iterator[tuple[RankService, BackgroundServer]]:
    """A :class:`RankService` over ``paths`` behind its app on a free loopback port."""
    kw = {} if clock is None else {"clock": clock}
    svc = RankService(cfg, STORE, WORKER_HISTORY, paths, metrics, **kw)
    if watch:
        svc.watcher.check()
    try:
        with BackgroundServer(make_app(svc, cfg, metrics, on_served=on_served)) as srv:
            yield svc, srv
    finally:
        svc.close()
