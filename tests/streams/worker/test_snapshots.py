"""Partition-store snapshots: taken on a cadence, published whole, restored when the local
store is missing or older (the real-broker disk-loss test is in test_worker.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.replay import dump_store, generated

from monitoring.metrics import Metrics
from streams.config import EventConfig, StoreConfig, WorkerConfig
from streams.worker.processor import PartitionProcessor, open_processor
from streams.worker.snapshots import Snapshots

STORE = StoreConfig(chunk_events=8)
WORKER = WorkerConfig(label_window_s=5.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _open(root: Path, snaps: Snapshots | None = None) -> PartitionProcessor:
    return open_processor(
        root, 1, STORE, WORKER, EventConfig(), Metrics(CollectorRegistry()), snapshots=snaps
    )


def _apply(proc: PartitionProcessor, values: list[bytes], first_offset: int) -> None:
    offsets = list(range(first_offset, first_offset + len(values)))
    proc.process(offsets, [None] * len(values), values)
    proc.commit()


def test_taken_on_the_cadence_after_the_first_interval(tmp_path: Path) -> None:
    clock = Clock()
    metrics = Metrics(CollectorRegistry())
    snaps = Snapshots(tmp_path / "snaps", 10.0, metrics=metrics, clock=clock, background=False)
    proc = _open(tmp_path / "store")
    values = generated(200, seed=1)
    try:
        _apply(proc, values, 0)
        assert not snaps.maybe_take(proc.store)  # the interval starts at the first commit
        clock.now = 9.9
        assert not snaps.maybe_take(proc.store)
        clock.now = 10.0
        assert snaps.maybe_take(proc.store)
        clock.now = 15.0
        assert not snaps.maybe_take(proc.store)
    finally:
        proc.close()
    path, manifest = snaps.newest(1)  # type: ignore[misc]
    assert path.name == "s1"
    assert manifest["state"]["next_offset"] == len(values)
    published = {"outcome": "published"}
    assert metrics.registry.get_sample_value("lumstream_store_snapshots_total", published) == 1
    assert metrics.registry.get_sample_value(
        "lumstream_store_snapshot_timestamp_seconds", {"partition": "1"}
    ) == pytest.approx(manifest["taken_at_ms"] / 1000)


def test_an_interval_of_zero_takes_none(tmp_path: Path) -> None:
    clock = Clock()
    snaps = Snapshots(tmp_path / "snaps", 0.0, clock=clock, background=False)
    proc = _open(tmp_path / "store")
    try:
        _apply(proc, generated(50, seed=5), 0)
        for clock.now in (0.0, 1e6):
            assert not snaps.maybe_take(proc.store)
    finally:
        proc.close()
    assert snaps.newest(1) is None


def test_a_missing_store_is_restored_to_exactly_its_snapshot(tmp_path: Path) -> None:
    snaps = Snapshots(tmp_path / "snaps", 1.0, background=False)
    proc = _open(tmp_path / "a")
    values = generated(300, seed=2)
    _apply(proc, values, 0)
    snaps.take(proc.store)
    proc.close()
    want = dump_store(tmp_path / "a", 2, STORE)[1]
    restored = _open(tmp_path / "b", snaps)  # nothing here: restored from the snapshot
    try:
        assert restored.next_offset == len(values)
    finally:
        restored.close()
    assert dump_store(tmp_path / "b", 2, STORE)[1] == want


def test_a_newer_local_store_is_kept_an_older_one_replaced(tmp_path: Path) -> None:
    snaps = Snapshots(tmp_path / "snaps", 1.0, background=False)
    values = generated(400, seed=3)
    proc = _open(tmp_path / "store")
    _apply(proc, values[:200], 0)
    snaps.take(proc.store)  # at offset 200
    _apply(proc, values[200:], 200)
    proc.close()
    proc = _open(tmp_path / "store", snaps)  # local at the end: kept
    assert proc.next_offset == len(values)
    proc.close()

    other = _open(tmp_path / "other")
    _apply(other, values[:100], 0)  # a stale copy at offset 100
    other.close()
    other = _open(tmp_path / "other", snaps)
    try:
        assert other.next_offset == 200  # replaced by the snapshot
        assert not [p for p in (tmp_path / "other").iterdir() if p.name.startswith(".")]
    finally:
        other.close()


def test_a_damaged_snapshot_is_skipped_for_the_previous_one(tmp_path: Path) -> None:
    snaps = Snapshots(tmp_path / "snaps", 1.0, keep=3, background=False)
    proc = _open(tmp_path / "store")
    values = generated(300, seed=4)
    _apply(proc, values[:100], 0)
    snaps.take(proc.store)
    _apply(proc, values[100:], 100)
    snaps.take(proc.store)
    proc.close()
    newest, _ = snaps.newest(1)  # type: ignore[misc]
    sst = next(f for f in newest.iterdir() if f.suffix == ".sst")
    sst.write_bytes(sst.read_bytes()[:10])  # truncated on the shared storage
    _, manifest = snaps.newest(1)  # type: ignore[misc]
    assert manifest["state"]["next_offset"] == 100
    restored = _open(tmp_path / "elsewhere", snaps)
    try:
        assert restored.next_offset == 100
    finally:
        restored.close()
