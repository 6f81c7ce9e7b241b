"""Replay, mode *backfill*: a source's events straight into a store, by the worker's code.

No Kafka carries the events. Each record goes to the partition Kafka's default partitioner
would give it (:func:`partition_of`: murmur2 of the key, ``& 0x7fffffff``, modulo the
partition count; a record without a readable user id: murmur2 of its bytes), the records
of a partition get consecutive synthetic offsets 0, 1, 2, ... in source order, and batches
of ``worker.batch_max`` go through the same :class:`~streams.worker.processor.PartitionProcessor`
as the live worker, with its order: samples and dead letters out and flushed, then the
store batch (sequences, join state, next offset) committed. So backfilling a log into N
partitions gives the store and samples the worker gives after the same events were
produced to an N-partition topic.

Resuming is free: the synthetic offsets are deterministic and every partition store keeps
its next offset, so a rerun over the same source and store skips what was applied. To
avoid re-reading the whole source, ``replay.json`` in the store directory also records,
every ``checkpoint_every`` records, a source position where every partition had committed
everything before it. ``replay.json`` names the source, and a store built from another
source (or with another partition count, or a store without ``replay.json``, such as the
live worker's) is refused.

Example:
    >>> bf = Backfill(open_source("events.jsonl"), Path("data/backfill/store"), 4,
    ...               StoreConfig(), WorkerConfig(), EventConfig())  # doctest: +SKIP
    >>> stats = bf.run(SampleFileWriter("samples.lsb"), DeadLetterFile("dead.jsonl", m))
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.durable import write_json_atomic
from monitoring.metrics import Metrics
from streams.config import EventConfig, ReplayConfig, StoreConfig, WorkerConfig
from streams.replay.base import Origin, SourceReader
from streams.replay.produce import Progress, ReplayStats, read_json
from streams.replay.sources import EventSource, ReplayError
from streams.sinks.deadletters import DeadLetterSink
from streams.sinks.samples import SampleSink
from streams.worker.applier import BatchApplier, WorkerStats
from streams.worker.processor import PartitionProcessor, open_processor
from streams.worker.store import StoreError

MANIFEST = "replay.json"
MANIFEST_FORMAT = 1
_KEY_CACHE_MAX = 1 << 20
_STOP_CHECK = 1024  # records between looks at the stop flag and the clock


def murmur2_positive(data: bytes) -> int:
    """Kafka's key hash as its default partitioner uses it (Java ``Utils.toPositive``):
    kafka-python's murmur2, the Java client's; librdkafka's ``murmur2_random``, which the
    producer uses, agrees (tests/streams/kafka/test_kafka.py)."""
    from kafka.partitioner.default import murmur2

    return int(murmur2(data)) & 0x7FFFFFFF


def partition_of(key: bytes | None, value: bytes, partitions: int) -> int:
    """The partition of a record: the key's, or for a keyless record its bytes'."""
    return murmur2_positive(value if key is None else key) % partitions


@dataclass
class _Pending:
    """One partition's records waiting for their batch (consecutive offsets)."""

    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)

    def clear(self) -> None:
        self.offsets.clear()
        self.keys.clear()
        self.values.clear()
        self.origins.clear()


class Backfill:
    """Apply a source's events to a partition-store directory with the worker's code.

    Args:
        source: the events.
        root: the store directory (one RocksDB per partition, plus ``replay.json``).
        partitions: how many partitions to spread the events over (as the topic has).
        store / worker / events: the same configs the live worker uses.
        cfg: checkpoint spacing.
        metrics: counts ``replay_records{mode="backfill"}`` and the processor's metrics.
    Raises:
        ReplayError: the store belongs to another source or partition count, or is not
            a backfill store.
    """

    def __init__(
        self,
        source: EventSource,
        root: Path,
        partitions: int,
        store: StoreConfig,
        worker: WorkerConfig,
        events: EventConfig,
        *,
        cfg: ReplayConfig | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if metrics is None:
            from monitoring.metrics import default_metrics

            metrics = default_metrics()
        if partitions < 1:
            raise ReplayError(f"--partitions must be >= 1, got {partitions}")
        self.source, self.root, self.partitions = source, root, partitions
        self.store_cfg, self.worker_cfg, self.events = store, worker, events
        self.cfg = cfg or ReplayConfig()
        self.metrics = metrics
        self.manifest = self._check_manifest()
        self.resuming = self.manifest is not None
        self._keys: dict[bytes, int] = {}

    def _check_manifest(self) -> dict[str, Any] | None:
        path = self.root / MANIFEST
        manifest = read_json(path)
        if manifest is None:
            if self.root.is_dir() and any(p.name.startswith("p") for p in self.root.iterdir()):
                raise ReplayError(
                    f"{self.root} holds partition stores but no {MANIFEST}: not a backfill "
                    "store (a live worker's?); backfill into a new directory"
                )
            return None
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("mode") != "backfill":
            raise ReplayError(f"{path}: not a backfill manifest of this lumstream version")
        if int(manifest["partitions"]) != self.partitions:
            raise ReplayError(
                f"{self.root} was backfilled with {manifest['partitions']} partitions, "
                f"not {self.partitions}; use the same --partitions or a new --store"
            )
        try:
            self.source.adopt(manifest["source"])
        except ReplayError as exc:
            raise ReplayError(f"{self.root} was built from another source: {exc}") from None
        return manifest

    def partition(self, key: bytes | None, value: bytes) -> int:
        if key is None:
            return partition_of(None, value, self.partitions)
        p = self._keys.get(key)
        if p is None:
            if len(self._keys) >= _KEY_CACHE_MAX:
                self._keys.clear()
            p = self._keys[key] = partition_of(key, value, self.partitions)
        return p

    def run(
        self,
        samples: SampleSink,
        dead: DeadLetterSink,
        *,
        stop: threading.Event | None = None,
        progress: Progress | None = None,
    ) -> ReplayStats:
        """Backfill to the end of the source (or until ``stop`` is set); resumable.

        The sinks are flushed before each store commit and left open for the caller.
        """
        started = time.perf_counter()
        stats = ReplayStats("backfill", self.source.name, resumed=self.resuming)
        manifest = self.manifest or {
            "format": MANIFEST_FORMAT,
            "mode": "backfill",
            "source": self.source.identity(),
            "partitions": self.partitions,
            "resume": None,
            "complete": False,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / MANIFEST, manifest)
        procs = self._open()
        try:
            run = _BackfillRun(self, procs, manifest, samples, dead, stats)
            resume = manifest.get("resume") or {}
            stats.skipped = int(resume.get("records", 0))
            with self.source.open(resume.get("position")) as reader:
                stats.complete = run.run(reader, stop, progress)
            self.manifest = manifest
        finally:
            for proc in procs:
                proc.close()
            stats.seconds = time.perf_counter() - started
        return stats

    def _open(self) -> list[PartitionProcessor]:
        procs: list[PartitionProcessor] = []
        try:
            for p in range(self.partitions):
                procs.append(
                    open_processor(
                        self.root, p, self.store_cfg, self.worker_cfg, self.events, self.metrics
                    )
                )
        except (StoreError, ValueError) as exc:
            for proc in procs:
                proc.close()
            raise ReplayError(f"cannot open the backfill store: {exc}") from None
        return procs


class _BackfillRun:
    """The loop of :meth:`Backfill.run`: partition, buffer, apply, checkpoint."""

    def __init__(
        self,
        bf: Backfill,
        procs: list[PartitionProcessor],
        manifest: dict[str, Any],
        samples: SampleSink,
        dead: DeadLetterSink,
        stats: ReplayStats,
    ) -> None:
        self.bf, self.procs, self.manifest = bf, procs, manifest
        self.stats = stats
        self.applier = BatchApplier(
            bf.worker_cfg, samples, dead, bf.metrics, WorkerStats(), source_topic=bf.source.name
        )
        resume = manifest.get("resume") or {}
        self.counters: list[int] = list(resume.get("counters") or [0] * bf.partitions)
        self.records = int(resume.get("records", 0))
        self.pending = [_Pending() for _ in procs]
        counter = bf.metrics.replay_records
        self.n_applied = counter.labels(mode="backfill", outcome="applied")
        self.n_rejected = counter.labels(mode="backfill", outcome="rejected")
        self.n_skipped = counter.labels(mode="backfill", outcome="skipped")

    def run(
        self, reader: SourceReader, stop: threading.Event | None, progress: Progress | None
    ) -> bool:
        """Apply everything (True) or stop early when ``stop`` is set (False)."""
        bf, counters, pending, procs = self.bf, self.counters, self.pending, self.procs
        batch_max = bf.worker_cfg.batch_max
        every, every_s = bf.cfg.checkpoint_every, bf.cfg.checkpoint_s
        since, saved_at = 0, time.monotonic()
        if progress is not None:
            progress(reader.done())
        for key, value, origin in reader:
            p = bf.partition(key, value)
            offset = counters[p]
            counters[p] = offset + 1
            self.records += 1
            self.stats.read += 1
            since += 1
            if offset < procs[p].next_offset:  # applied by an earlier run
                self.stats.skipped += 1
                self.n_skipped.inc()
            else:
                buf = pending[p]
                buf.offsets.append(offset)
                buf.keys.append(key)
                buf.values.append(value)
                buf.origins.append(origin)
                if len(buf.offsets) >= batch_max:
                    self.apply(p)
                    if progress is not None:
                        progress(reader.done())
            if since % _STOP_CHECK and since < every:
                continue
            if since >= every or time.monotonic() - saved_at >= every_s:
                self.checkpoint(reader)
                since, saved_at = 0, time.monotonic()
                if progress is not None:
                    progress(reader.done())
            if stop is not None and stop.is_set():
                self.checkpoint(reader)
                return False
        self.checkpoint(reader, complete=True)
        if progress is not None:
            progress(reader.done())
        return True

    def apply(self, p: int) -> None:
        """One batch of partition ``p`` through the live worker's applier."""
        buf, stats = self.pending[p], self.stats
        first = buf.offsets[0]
        result = self.applier.apply(
            self.procs[p],
            buf.offsets,
            buf.keys,
            buf.values,
            origin=lambda d: self.bf.source.origin(buf.origins[d.offset - first]),
        )
        stats.samples += len(result.samples) if result.samples is not None else 0
        stats.applied += result.applied
        stats.rejected += len(result.dead_letters)
        stats.batches += 1
        self.n_applied.inc(result.applied)
        self.n_rejected.inc(len(result.dead_letters))
        buf.clear()

    def checkpoint(self, reader: SourceReader, complete: bool = False) -> None:
        """Apply every partial batch, then record where a rerun can start reading."""
        for p, buf in enumerate(self.pending):
            if buf.offsets:
                self.apply(p)
        self.manifest["resume"] = {
            "position": reader.position(),
            "counters": list(self.counters),
            "records": self.records,
        }
        self.manifest["complete"] = complete
        write_json_atomic(self.bf.root / MANIFEST, self.manifest)
