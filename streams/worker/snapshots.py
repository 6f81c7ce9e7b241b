"""Snapshots of partition stores on durable storage: a lost disk loses nothing.

A partition's state lives in its RocksDB directory on the worker's local disk. Every
``store.snapshot_every_s`` the worker takes a RocksDB checkpoint of a partition right after
a commit (hard links, milliseconds, in the worker's thread) and a background thread copies
it to ``<snapshot root>/p<partition>/s<N>`` as a version of :class:`core.durable.VersionedDir`
(files with sizes and hashes, published atomically, the newest ``snapshot_keep`` kept). The
manifest records the partition state the checkpoint holds, above all ``next_offset``: the
first lum.events offset it has not applied.

When a worker opens a partition whose directory is missing (the disk was lost, or the
partition moved to a host that never held it), or whose local copy is older than the
newest snapshot, it restores the snapshot and resumes consuming at its ``next_offset``.
Processing is deterministic, so re-processing the events after the snapshot rebuilds the
same store and re-emits the same samples with the same (partition, seq): consumers drop
them as duplicates (the ranker's assembler does), so none counts twice.

For this to hold, lum.events must keep every record after the oldest snapshot a worker
may restore: retention of at least ``snapshot_every_s`` plus the time a restore may wait,
with margin (docs/ingest.md). Put the snapshot root on storage that outlives a host (a
network volume, an object-store mount).

Example:
    >>> snaps = Snapshots(Path("/shared/lumstream/snapshots"), every_s=300)  # doctest: +SKIP
    >>> found = snaps.newer(3, store.state.next_offset)  # doctest: +SKIP
    >>> snaps.maybe_take(store)  # after a commit  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from rocksdict import Checkpoint

from core.durable import VersionedDir
from monitoring.metrics import Metrics
from streams.worker.store import PartitionStore, partition_dir

log = logging.getLogger(__name__)
FORMAT = 1


class Snapshots:
    """Take and restore partition-store snapshots under ``root``.

    Args:
        root: the snapshot root (one directory per partition below it).
        every_s: least seconds between two snapshots of a partition (0: never take any;
            restoring still works).
        keep: snapshots kept per partition.
        metrics: ``store_snapshots{outcome}`` and the newest snapshot's time.
        clock: monotonic seconds (tests pass a fake).
        background: copy to ``root`` in a background thread (False: in the caller's).
    """

    def __init__(
        self,
        root: Path,
        every_s: float,
        *,
        keep: int = 2,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        self.root, self.every_s, self.keep = Path(root), every_s, keep
        self.metrics, self.clock, self.background = metrics, clock, background
        self._last: dict[int, float] = {}
        self._copying: dict[int, threading.Thread] = {}

    def dir(self, partition: int) -> VersionedDir:
        return VersionedDir(self.root / partition_dir(Path(), partition).name, "s")

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.store_snapshots.labels(outcome=outcome).inc()

    # -- taking ----------------------------------------------------------------------------
    def maybe_take(self, store: PartitionStore) -> bool:
        """Snapshot ``store`` when its interval has passed and no copy of it is running;
        call right after a commit. True when a snapshot was started."""
        p = store.partition
        now = self.clock()
        if self.every_s <= 0:
            return False
        last = self._last.setdefault(p, now)  # the first one an interval after opening
        running = self._copying.get(p)
        if now - last < self.every_s or (running is not None and running.is_alive()):
            return False
        self._last[p] = now
        self.take(store)
        return True

    def take(self, store: PartitionStore) -> None:
        """Checkpoint ``store`` now (its last commit) and copy it to the snapshot root."""
        local = store.path.parent / f".snapshot-{store.partition}-{uuid.uuid4().hex}"
        try:
            Checkpoint(store.db).create_checkpoint(str(local))
        except Exception as exc:  # rocksdict raises plain Exception
            shutil.rmtree(local, ignore_errors=True)
            self._count("failed")
            log.warning("partition %d: no snapshot (checkpoint failed: %s)", store.partition, exc)
            return
        manifest = {
            "format": FORMAT,
            "partition": store.partition,
            # the state of the last write (the checkpoint's), not one being processed
            "state": orjson.loads(store.committed_state),
            "taken_at_ms": time.time_ns() // 1_000_000,
        }
        if not self.background:
            self._publish(store.partition, local, manifest)
            return
        t = threading.Thread(
            target=self._publish,
            args=(store.partition, local, manifest),
            name=f"snapshot-p{store.partition}",
            daemon=True,
        )
        self._copying[store.partition] = t
        t.start()

    def _publish(self, partition: int, local: Path, manifest: dict[str, Any]) -> None:
        vd = self.dir(partition)
        try:
            staged = vd.stage()
            try:
                for f in local.iterdir():
                    shutil.copyfile(f, staged / f.name)
                vd.publish(staged, manifest)
            except BaseException:
                vd.discard(staged)
                raise
            vd.retain(self.keep)
        except Exception as exc:
            self._count("failed")
            log.warning("partition %d: snapshot not published: %s", partition, exc)
        else:
            self._count("published")
            if self.metrics is not None:
                self.metrics.store_snapshot_time.labels(partition=str(partition)).set(
                    manifest["taken_at_ms"] / 1000.0
                )
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for running copies (a worker closing down, tests)."""
        for t in list(self._copying.values()):
            t.join(timeout_s)

    # -- restoring -------------------------------------------------------------------------
    def newest(self, partition: int) -> tuple[Path, dict[str, Any]] | None:
        """The newest snapshot of ``partition`` that verifies, with its manifest."""

        def skipped(path: Path, exc: Exception) -> None:
            log.warning("partition %d: snapshot %s skipped: %s", partition, path, exc)
            self._count("invalid")

        return self.dir(partition).newest_valid(skipped)

    def newer(self, partition: int, next_offset: int) -> tuple[Path, dict[str, Any]] | None:
        """The newest valid snapshot of ``partition`` when it has applied more records than
        a local store at ``next_offset`` (a fresh, empty store is at 0), else None."""
        found = self.newest(partition)
        if found is None or int(found[1]["state"]["next_offset"]) <= next_offset:
            return None
        return found

    def restore(self, snapshot: Path, store_root: Path, partition: int) -> None:
        """Put ``snapshot`` in place of the partition's store directory under
        ``store_root`` (closed by the caller, who owns the partition). The local copy is
        moved aside first and removed only after the snapshot is in place."""
        store_root.mkdir(parents=True, exist_ok=True)
        target = partition_dir(store_root, partition)
        incoming = store_root / f".restore-{partition}-{os.getpid()}-{uuid.uuid4().hex}"
        incoming.mkdir()
        manifest = self.dir(partition).manifest
        for f in snapshot.iterdir():
            if f.name != manifest:
                shutil.copyfile(f, incoming / f.name)
        aside = None
        if target.exists():
            aside = store_root / f".stale-{partition}-{uuid.uuid4().hex}"
            os.rename(target, aside)
        os.rename(incoming, target)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        self._count("restored")
        log.warning(
            "partition %d: restored the store from snapshot %s; re-processing lum.events "
            "from its offset",
            partition,
            snapshot,
        )
