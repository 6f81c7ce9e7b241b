"""The streaming loop: samples in, score, learn, export metrics, checkpoint, publish.

Rank 0 reads the source and assembles global batches of ``batch_size`` rows (a partial
batch when the source is exhausted, idle for ``idle_flush_s``, or its oldest sample waited
``max_batch_wait_s``); it broadcasts each batch
with what to do (learn it, checkpoint, which vector set, stop) so every rank takes the same
steps. Every batch is scored before it is learned from (progressive validation); rank 0
adds the scores to a sliding window and exports windowed AUC, GAUC, log-loss and
calibration every ``log_every`` batches. LUM inputs come from a
:class:`~trainer.vectors.lookup.VectorSource` as of each sample's event time; every rank
catches up with the vector store at the same step, every ``vectors_poll_s``. The newest
backbone version used is recorded as change points ``[step, version]`` (checkpoint and
manifest).

:meth:`StreamingTrainer.replay` is the other way to train: every sample of a finite
source's event-time range, read once, trained for several epochs, then one checkpoint.

Rank 0 also follows drift (:mod:`trainer.ranker.drift`: score and feature PSI against the
reference each checkpoint and version carries), how far behind lum.samples it is in time,
and how long samples wait from their arrival until a published version has learned them.

Example:
    >>> loop = StreamingTrainer(cfg, engine, source, vectors=reader)  # doctest: +SKIP
    >>> stats = loop.run(stop_event)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.config import DriftConfig
from monitoring.metrics import Metrics
from trainer.ranker.batch import Samples
from trainer.ranker.checkpoint import (
    Checkpointer,
    parse_stream_state,
    publish_version,
    stream_state,
)
from trainer.ranker.config import RankerConfig
from trainer.ranker.distributed import broadcast_bytes, world
from trainer.ranker.drift import RankerDrift
from trainer.ranker.engine import RankerEngine, Scored
from trainer.ranker.metrics import Window
from trainer.ranker.multi_epoch import EpochResult, collect, train_epochs
from trainer.ranker.source import Assembler, SampleSource
from trainer.vectors.lookup import VectorSource

log = logging.getLogger(__name__)
_HEARTBEAT_S = 5.0  # idle ranks hear from rank 0 at least this often
_FRESHNESS_SAMPLES = 256  # arrival times kept per batch for sample_to_version_seconds


@dataclass
class LoopStats:
    """What a run did (rank 0's view).

    Args:
        batches / samples: learned in this run (a replay: the samples of its range, each
            counted once whatever the epochs; batches stay 0).
        window: the last window summary.
        backbone_versions: ``[step, version]`` change points of the vectors used.
        published: ranker versions written in this run.
    """

    batches: int = 0
    samples: int = 0
    seconds: float = 0.0
    window: dict[str, float] = field(default_factory=dict)
    backbone_versions: list[list[Any]] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    scored: list[Scored] = field(default_factory=list)


class StreamingTrainer:
    """Consume samples forever (or until a finite source ends) and keep the ranker fresh.

    Args:
        cfg: ranker settings (batch size, window, cadences).
        engine: the model and its optimizers.
        source: the samples (read on rank 0 only; None on other ranks).
        vectors: where LUM inputs come from (None: no LUM).
        checkpointer: saves and restores (None: no checkpoints).
        versions_dir: where versions are published on every checkpoint (None: not).
        announce: called with (version path, manifest extra) after publishing (rank 0).
        metrics: where the loop's metrics go.
        keep_scores: keep every batch's scores in ``LoopStats.scored`` (benchmarks, tests).
        ts_range: learn only samples with ``from <= ts < to``.
        drift: drift monitoring (default ``DriftConfig()``; ``enabled=False``: none).
    """

    def __init__(
        self,
        cfg: RankerConfig,
        engine: RankerEngine,
        source: SampleSource | None,
        *,
        vectors: VectorSource | None = None,
        checkpointer: Checkpointer | None = None,
        versions_dir: Path | None = None,
        announce: Callable[[Path, dict[str, Any]], None] | None = None,
        metrics: Metrics | None = None,
        keep_scores: bool = False,
        ts_range: tuple[int, int] | None = None,
        drift: DriftConfig | None = None,
    ) -> None:
        self.cfg, self.engine, self.source = cfg, engine, source
        self.vectors = vectors
        self.checkpointer, self.versions_dir, self.announce = checkpointer, versions_dir, announce
        self.metrics, self.keep_scores = metrics, keep_scores
        self.rank, self.world = world()
        self.window = Window(cfg.window)
        self.stats = LoopStats()
        self.assembler = Assembler(metrics=metrics, ts_range=ts_range)
        self.watermark = 0
        self._vectors_seen = time.monotonic()
        self._last_ckpt = time.monotonic()
        self._batches_since_ckpt = 0
        self._pending_since = time.monotonic()  # when the oldest sample not yet taken arrived
        drift = drift or DriftConfig()
        self.drift = (
            RankerDrift(drift, metrics, lum=cfg.lum_direct)
            if drift.enabled and self.rank == 0
            else None
        )
        if metrics is not None and self.rank == 0:
            _ = metrics.ranker_scores.metric  # exported from the start: a stalled trainer shows
        self._taken_ts = np.zeros(0, np.int64)  # arrival times of the batch being trained
        self._unpublished_ts: list[np.ndarray] = []  # of samples learned since the last version

    # -- start -----------------------------------------------------------------------------
    def resume(self) -> bool:
        """Restore the newest valid checkpoint (all ranks) and position the source."""
        if self.checkpointer is None:
            return False
        meta = self.checkpointer.restore(self.engine)
        if meta is None:
            return False
        seen, positions = parse_stream_state(meta)
        self.assembler = Assembler(seen, positions, self.metrics, self.assembler.ts_range)
        self.stats.backbone_versions = [list(x) for x in meta.get("backbone_versions", [])]
        self.watermark = int(meta.get("watermark", 0))
        if self.drift is not None:
            self.drift.restore(meta.get("drift_reference"))
        if self.source is not None:
            self.source.seek(positions)
        return True

    # -- rank 0: what to do next -----------------------------------------------------------
    def _next_batch(self, stop: threading.Event) -> tuple[str, Samples]:
        assert self.source is not None
        b = self.cfg.batch_size
        deadline = time.monotonic() + _HEARTBEAT_S
        due = self.checkpointer is not None and self.cfg.checkpoint_every_s > 0
        if due and self._batches_since_ckpt:  # an idle stream still checkpoints on time
            deadline = min(deadline, self._last_ckpt + self.cfg.checkpoint_every_s)
        while not stop.is_set():
            if self.assembler.available() >= b:
                return "batch", self._take(b)
            if self.source.exhausted():
                if self.assembler.available():
                    return "batch", self._take(b)
                return "stop", Samples.empty()
            now = time.monotonic()
            if self.assembler.available() and (
                now - self.assembler.last_arrival >= self.cfg.idle_flush_s
                or now - self._pending_since >= self.cfg.max_batch_wait_s
            ):
                return "batch", self._take(b)
            if now > deadline:
                return "wait", Samples.empty()
            msgs = self.source.poll(max(1, b // 16), timeout_s=0.2)
            had = self.assembler.available()
            self.assembler.add(msgs)
            if not had and self.assembler.available():
                self._pending_since = time.monotonic()
        return "stop", Samples.empty()

    def _take(self, n: int) -> Samples:
        samples = self.assembler.take(n)
        self._pending_since = time.monotonic()  # what is left waits from now on
        self._taken_ts = self.assembler.taken_timestamps
        return samples

    def _want_checkpoint(self, op: str) -> bool:
        """Whether to checkpoint after this step (``op`` batch, wait or stop).

        Decided before the step runs, so a batch counts itself: with
        ``checkpoint_every_batches`` = 10 the 10th batch is followed by a checkpoint. A
        wait (no sample for a heartbeat) checkpoints too when the time cadence is due:
        an idle stream must not leave the newest learning unsaved and unpublished.
        """
        if self.checkpointer is None:
            return False
        pending = self._batches_since_ckpt + (op == "batch")
        if op == "stop":
            return pending > 0
        every_b = self.cfg.checkpoint_every_batches
        every_s = self.cfg.checkpoint_every_s
        return (every_b > 0 and pending >= every_b) or (
            every_s > 0 and time.monotonic() - self._last_ckpt >= every_s and pending > 0
        )

    def _vectors_due(self) -> bool:
        """Rank 0: time for every rank to catch up with the vector store."""
        if self.vectors is None:
            return False
        now = time.monotonic()
        if now - self._vectors_seen < self.cfg.vectors_poll_s:
            return False
        self._vectors_seen = now
        return True

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, max_batches: int | None = None) -> LoopStats:
        """Train until the source ends, ``stop`` is set, or ``max_batches`` batches."""
        stop = stop or threading.Event()
        started = time.monotonic()
        last_log, last_log_samples = started, 0
        while True:
            if self.rank == 0:
                if max_batches is not None and self.stats.batches >= max_batches:
                    op, samples = "stop", Samples.empty()
                else:
                    op, samples = self._next_batch(stop)
                header: dict[str, Any] = {
                    "op": op,
                    "vectors": self._vectors_due(),
                    "checkpoint": self._want_checkpoint(op),
                }
                msg = json.dumps(header).encode() + b"\n" + samples.encode()
            else:
                msg = None
            raw = broadcast_bytes(msg)
            head, _, body = raw.partition(b"\n")
            header = json.loads(head)
            if header["vectors"] and self.vectors is not None:
                self.vectors.refresh()
            if header["op"] == "batch":
                self._train(Samples.decode(body))
                if self.rank == 0 and self.stats.batches % self.cfg.log_every == 0:
                    now = time.monotonic()
                    rate = (self.stats.samples - last_log_samples) / max(now - last_log, 1e-9)
                    self._export(rate)
                    last_log, last_log_samples = now, self.stats.samples
            if header["checkpoint"]:
                self.checkpoint()
            if header["op"] == "stop":
                break
        self.stats.seconds = time.monotonic() - started
        if self.rank == 0:
            self._export(self.stats.samples / max(self.stats.seconds, 1e-9))
        return self.stats

    def replay(self, *, epochs: int, mode: str, inherit: bool = False) -> list[EpochResult]:
        """Train on every sample of the (finite) source in the loop's ``ts_range``, then
        checkpoint (and publish); collective.

        Rank 0 reads the whole range (deduplicated), every rank receives it, and
        :func:`~trainer.ranker.multi_epoch.train_epochs` trains ``epochs`` passes in
        ``mode``. The checkpoint (the loop needs a checkpointer) holds the range's newest
        ``seq`` per source partition as high-water marks: a live run resumed from it
        continues after them.

        Args:
            epochs / mode: see :func:`~trainer.ranker.multi_epoch.train_epochs`.
            inherit: start from the newest checkpoint (its tables are θ_s^(0)); the source
                is still read from its start.
        Returns:
            The epochs' results; empty (and nothing saved) when the range holds no sample.
        """
        if inherit and self.resume() and self.source is not None:
            self.source.seek({})  # the replay reads its range from the start
        samples = collect(self.source, self.assembler.ts_range, self.metrics)
        if not len(samples):  # the same on every rank
            return []
        self.assembler.learned(samples)
        results = train_epochs(
            self.engine, samples, None, mode=mode, epochs=epochs, vectors=self.vectors
        )
        self.stats.samples = len(samples)
        self.stats.backbone_versions = [[0, self.engine.builder.last_version]]
        self.watermark = int(samples.rows["ts"].max())
        # nothing pending: a restart resumes after everything learned here
        self.assembler = Assembler(
            self.assembler.learned_seen, {}, self.metrics, self.assembler.ts_range
        )
        self.checkpoint()
        return results

    def _train(self, samples: Samples) -> None:
        scored = self.engine.step(samples, self.vectors)
        version = self.engine.builder.last_version
        if not self.stats.backbone_versions or self.stats.backbone_versions[-1][1] != version:
            self.stats.backbone_versions.append([self.engine.steps - 1, version])
        self.assembler.learned(samples)
        self._batches_since_ckpt += 1
        self.stats.batches += 1
        self.stats.samples += len(scored)
        if len(scored):
            self.watermark = max(self.watermark, int(scored.ts.max()))
        if self.rank == 0:
            self.window.add(scored.probs, scored.labels, scored.users)
            if self.drift is not None:
                self.drift.observe(scored)
            stamps = self._taken_ts[self._taken_ts > 0]
            if len(stamps) and scored.learned:
                step = max(1, len(stamps) // _FRESHNESS_SAMPLES)
                self._unpublished_ts.append(stamps[::step])
            self._taken_ts = np.zeros(0, np.int64)
            if self.keep_scores:
                self.stats.scored.append(scored)
            if self.metrics is not None:
                self.metrics.ranker_scores.observe_many(scored.probs)
                self.metrics.ranker_clicks.inc(float((scored.labels > 0).sum()))
                self.metrics.ranker_samples.labels(outcome="scored").inc(len(scored))
                if scored.learned:
                    self.metrics.ranker_samples.labels(outcome="learned").inc(len(scored))

    def _export(self, rate: float) -> None:
        summary = self.window.summary() if len(self.window) else {}
        self.stats.window = summary
        if self.metrics is not None:
            self.metrics.ranker_samples_per_second.set(rate)
            for k, v in summary.items():
                if k != "n" and np.isfinite(v):
                    self.metrics.ranker_progressive.labels(metric=k).set(v)
            for t, m in self.engine.mappers.items():
                self.metrics.ranker_ids_used.labels(table=t).set(m.used)
            if self.source is not None:
                now_ms = time.time_ns() // 1_000_000
                read = self.assembler.read_timestamps
                for p, lag in self.source.lag().items():
                    self.metrics.ranker_consumer_lag.labels(partition=str(p)).set(lag)
                    behind = (now_ms - read[p]) / 1000.0 if lag and p in read else 0.0
                    self.metrics.ranker_consumer_lag_seconds.labels(partition=str(p)).set(
                        max(0.0, behind)
                    )
        if self.drift is not None:
            self.drift.export()
        if summary:
            log.info(
                "ranker: %d batches, %d samples, %.0f samples/s, window auc %.4f gauc %.4f "
                "logloss %.4f calibration %.3f (backbone %s)",
                self.stats.batches,
                self.stats.samples,
                rate,
                summary["auc"],
                summary["gauc"],
                summary["logloss"],
                summary["calibration"],
                self.engine.builder.last_version or "none",
            )

    def checkpoint(self) -> None:
        """Save a checkpoint (and publish a version when configured); collective."""
        assert self.checkpointer is not None
        reference = (
            self.drift.reference_for_version(self.engine.samples_learned)
            if self.drift is not None
            else None
        )
        drift_extra = {"drift_reference": reference.to_json()} if reference is not None else {}
        state = stream_state(
            self.assembler.learned_seen,
            self.assembler.positions(),
            backbone_versions=self.stats.backbone_versions,
            watermark=self.watermark,
            **drift_extra,
        )
        self.checkpointer.save(self.engine, state)
        self._last_ckpt = time.monotonic()
        self._batches_since_ckpt = 0
        if self.versions_dir is not None:
            extra = {
                "backbone_versions": self.stats.backbone_versions,
                "backbone": self.engine.builder.last_version,
                "data_watermark": self.watermark,
                "window": {k: v for k, v in self.window.summary().items() if np.isfinite(v)}
                if len(self.window)
                else {},
                **drift_extra,
            }
            path = publish_version(
                self.versions_dir,
                self.engine,
                extra,
                keep=self.cfg.keep_versions,
                metrics=self.metrics,
            )
            if path is not None:
                self._published_freshness()
                self.stats.published.append(path.name)
                if self.announce is not None:
                    self.announce(path, {"backbone": extra["backbone"], "steps": self.engine.steps})

    def _published_freshness(self) -> None:
        """Observe how long the samples learned since the last version waited for this one."""
        if self.metrics is not None and self._unpublished_ts:
            now_ms = time.time_ns() // 1_000_000
            waited = (now_ms - np.concatenate(self._unpublished_ts)) / 1000.0
            for v in np.maximum(waited, 0.0).tolist():
                self.metrics.ranker_sample_to_version.observe(v)
        self._unpublished_ts = []


def _version_number(version: str | None) -> int:
    if version and version[1:].isdigit():
        return int(version[1:])
    return -1
