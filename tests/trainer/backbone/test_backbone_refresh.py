"""The refresh job over a real sequence store: publish, nothing-new, warm start, vectors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry
from support.metrics import sample

from monitoring.metrics import Metrics
from streams.config import EventConfig, GeneratorConfig, StoreConfig, WorkerConfig
from streams.generator import ClickStream
from streams.worker.processor import open_processor
from trainer.backbone.config import BackboneConfig, RefreshConfig
from trainer.backbone.refresh import RefreshPaths, refresh_once
from trainer.backbone.versions import list_versions
from trainer.vectors.lookup import LumLookup
from trainer.vectors.store import VectorReader

torch.set_num_threads(1)
CFG = BackboneConfig(
    dim=8,
    feature_dim=4,
    layers=1,
    heads=1,
    epochs=1,
    batch_users=32,
    max_len=20,
    query_top=4,
    keep_versions=2,
)
RCFG = RefreshConfig(eval_users=50, vector_batch_users=64)
NOW = 1_800_000_000_000


def _feed(root: Path, records: list[bytes], start: int) -> None:
    proc = open_processor(
        root, 0, StoreConfig(), WorkerConfig(), EventConfig(), Metrics(CollectorRegistry())
    )
    offsets = list(range(start, start + len(records)))
    proc.process(offsets, [None] * len(records), records, NOW)
    proc.commit()
    proc.close()


def _lookup(reader: VectorReader, user: int, ts: int) -> LumLookup:
    layout = reader.layout
    assert layout is not None
    conds = layout.conditions[:1]
    return reader.lookup(np.array([user]), np.array([0]), conds, np.array([ts]))


def test_refresh_publishes_skips_and_warm_starts(tmp_path: Path) -> None:
    gen = GeneratorConfig(events=40_000, users=150, seed=5, base_ctr=0.2)
    records = [v for batch in ClickStream(gen).pair_batches() for _, v in batch]
    paths = RefreshPaths(tmp_path / "store", tmp_path / "versions", tmp_path / "vectors")
    metrics = Metrics(CollectorRegistry())
    _feed(paths.store, records[:30_000], 0)

    first = refresh_once(CFG, RCFG, StoreConfig(), EventConfig(), paths, metrics)
    assert first.version is not None
    assert first.version.name == "v1"
    assert first.version.manifest["parent"] is None
    assert set(first.metrics or {}) >= {"hr@10", "ndcg@10", "mrr"}
    assert first.vectors_written > 0
    assert sample(metrics, "lumstream_backbone_vectors_written_total", mode="full") == (
        first.vectors_written
    )
    assert 0 < first.conditions <= CFG.query_top
    wm1 = int(first.version.manifest["data_watermark"])

    again = refresh_once(CFG, RCFG, StoreConfig(), EventConfig(), paths, metrics)
    assert again.version is None
    assert "no events after v1" in again.reason

    _feed(paths.store, records[30_000:], 30_000)
    second = refresh_once(CFG, RCFG, StoreConfig(), EventConfig(), paths, metrics)
    assert second.version is not None
    assert second.version.manifest["parent"] == "v1"  # warm start from the last version
    wm2 = int(second.version.manifest["data_watermark"])
    assert wm2 > wm1
    # backbone drift: how far the users' vectors moved from v1 to v2; staleness timestamps
    mean = sample(metrics, "lumstream_backbone_vector_shift", stat="mean")
    p90 = sample(metrics, "lumstream_backbone_vector_shift", stat="p90")
    assert mean is not None
    assert p90 is not None
    assert 0.0 < mean <= p90 <= 2.0
    created = second.version.manifest["created_at_ms"] / 1000
    assert sample(metrics, "lumstream_backbone_version_timestamp_seconds") == created
    vectors_at = sample(metrics, "lumstream_backbone_vectors_timestamp_seconds", mode="full")
    assert vectors_at is not None
    assert created - 60 < vectors_at <= time.time()
    assert sample(metrics, "lumstream_backbone_eval", version="v1", metric="hr@10") is None
    assert sample(metrics, "lumstream_backbone_eval", version="v2", metric="hr@10") is not None

    reader = VectorReader(paths.vectors, tmp_path / "scratch")
    try:
        layout = reader.layout
        assert layout is not None
        assert len(layout) == first.conditions  # append-only: what v1 fixed is kept
        assert sorted(reader.versions()) == [1, 2]
        recs = next(reader.users())
        later = _lookup(reader, recs, wm2 + 1)
        assert later.user_found[0]
        assert later.version[0] == 2
        row = later.user[0, : len(layout)]
        assert np.allclose(np.linalg.norm(row, axis=1), 1.0, atol=1e-4)
        between = _lookup(reader, recs, wm1 + 1)  # v2's data ends later: v1's vectors
        assert between.version[0] == 1
        assert not _lookup(reader, recs, wm1).user_found[0]  # before v1's data ends: none
    finally:
        reader.close()
    third = refresh_once(CFG, RCFG, StoreConfig(), EventConfig(), paths, metrics, retrain=True)
    assert third.version is not None
    assert third.version.manifest["parent"] is None
    assert [v.name for v in list_versions(paths.versions)] == ["v2", "v3"]  # keep_versions=2


def test_refresh_reads_a_store_that_a_worker_is_writing(tmp_path: Path) -> None:
    """The worker holds the store open (RocksDB lock); the refresh reads it as a secondary
    and sees exactly what was committed, not the batch still in flight."""
    gen = GeneratorConfig(events=20_000, users=100, seed=9, base_ctr=0.2)
    records = [v for batch in ClickStream(gen).pair_batches() for _, v in batch]
    paths = RefreshPaths(tmp_path / "store", tmp_path / "versions", tmp_path / "vectors")
    proc = open_processor(
        paths.store, 0, StoreConfig(), WorkerConfig(), EventConfig(), Metrics(CollectorRegistry())
    )
    try:
        proc.process(list(range(15_000)), [None] * 15_000, records[:15_000], NOW)
        proc.commit()
        committed = proc.store.state.watermark
        proc.process(list(range(15_000, 20_000)), [None] * 5_000, records[15_000:], NOW)
        # not committed: a batch in flight while the refresh runs
        result = refresh_once(
            CFG, RCFG, StoreConfig(), EventConfig(), paths, Metrics(CollectorRegistry())
        )
    finally:
        proc.close()
    assert result.version is not None
    assert result.version.manifest["data_watermark"] == committed
