"""The backbone refresh job: fine-tune -> freeze -> publish vN -> condition-query vectors.

One refresh (``refresh_once``):

1. open the sequence store read-only (RocksDB secondaries: the workers keep writing);
2. pick the data: everything (first version, or ``--retrain``), else the users with events
   after the last version's data watermark plus a share of older users (no forgetting);
   nothing new -> nothing to do;
3. hold out each user's last event, train (warm-started from the last version unless
   retraining), evaluate leave-last-out retrieval on the held-out events;
4. publish ``vN`` atomically (manifest + safetensors), keep ``keep_versions``;
5. group-query every user's condition-query vectors, users with the most new events
   first, and write them to the vector store (trainer/vectors), tagged with vN, the
   newest event each summarises and vN's data watermark (:mod:`trainer.backbone.vector_pass`).

``run_forever`` repeats it every ``refresh.cadence_s`` until stopped and, in between, runs
an incremental pass every ``refresh.incremental_every_s``: the frozen newest version
recomputes the vectors of users whose sequences grew. ``train_fresh`` trains one version
from scratch on given sequences and publishes it without vectors (``lumstream backbone
train``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitoring.metrics import Metrics
from streams.config import EventConfig, StoreConfig
from streams.worker.store import StoreError, StoreReader
from trainer.backbone.config import BackboneConfig, RefreshConfig
from trainer.backbone.data import (
    MemorySequences,
    SequenceSource,
    action_indices,
    changed_first,
    open_store,
    prepare,
    since,
)
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.eval import HeldOut, evaluate, leave_last_out
from trainer.backbone.group_query import query_condition_ids
from trainer.backbone.train import train
from trainer.backbone.vector_pass import (
    IncrementalRefresher,
    agree_layout,
    check_layout_before_training,
    full_pass,
    open_vectors,
)
from trainer.backbone.versions import VersionInfo, export_newest, latest, publish
from trainer.vectors.layout import LayoutError
from trainer.vectors.store import VectorStore

log = logging.getLogger(__name__)


@dataclass
class RefreshResult:
    """What one refresh did (``version`` is None when there was nothing new: ``reason``
    says why). ``previous`` is the newest version before it (None: the first)."""

    version: VersionInfo | None
    users_trained: int = 0
    vectors_written: int = 0
    metrics: dict[str, float] | None = None
    conditions: int = 0  # query conditions per user
    seconds: float = 0.0
    reason: str = ""
    previous: str | None = None


@dataclass(frozen=True)
class RefreshPaths:
    """Where the job reads and writes.

    Args:
        store: the sequence store (read-only).
        versions: backbone versions v1, v2, ...
        vectors: the condition-query vector store (this job is its only writer).
    """

    store: Path
    versions: Path
    vectors: Path


def refresh_once(
    cfg: BackboneConfig,
    rcfg: RefreshConfig,
    store_cfg: StoreConfig,
    events: EventConfig,
    paths: RefreshPaths,
    metrics: Metrics,
    *,
    retrain: bool = False,
    incremental: IncrementalRefresher | None = None,
) -> RefreshResult:
    """One refresh; see the module doc. Raises ``StoreError`` when there is no store and
    ``LayoutError`` (before training) when the vector store's layout cannot be kept.

    Args:
        incremental: the incremental refresher to hand the new version to (it then
            refreshes changed users with it).
    """
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="lumstream-refresh-") as scratch,
        _vectors_of(paths, rcfg, incremental) as vectors,
    ):
        reader = open_store(paths.store, store_cfg, Path(scratch))
        try:
            result = _refresh(
                cfg, rcfg, events, paths, metrics, reader, vectors, retrain, incremental
            )
        finally:
            reader.close()
    result.seconds = time.perf_counter() - started
    metrics.backbone_refresh_duration.observe(result.seconds)
    return result


def _refresh(
    cfg: BackboneConfig,
    rcfg: RefreshConfig,
    events: EventConfig,
    paths: RefreshPaths,
    metrics: Metrics,
    reader: StoreReader,
    vectors: VectorStore,
    retrain: bool,
    incremental: IncrementalRefresher | None,
) -> RefreshResult:
    check_layout_before_training(vectors, cfg, rcfg, metrics)
    last = latest(paths.versions)
    store_wm = reader.watermark()
    last_wm = int(last.manifest["data_watermark"]) if last is not None else 0
    if last is not None and not retrain and store_wm <= last_wm:
        return RefreshResult(None, reason=f"no events after {last.name}'s watermark")
    # one consistent read of the store: sequences and how many events each user has
    counts = {user: int(meta[0]) for _, user, meta in reader.users()}
    snapshot = MemorySequences(dict(reader.sequences()))
    if last is None or retrain:
        source: SequenceSource = snapshot
        init = None
    else:
        source, init = since(snapshot, last_wm, rcfg.old_share, cfg.seed), last
    trained = train_version(
        cfg, rcfg, events, source, paths.versions, metrics, init=init, watermark=store_wm
    )
    previous = last.name if last is not None else None
    if trained is None:
        return RefreshResult(
            None, reason="no user has two events of the sequence actions yet", previous=previous
        )
    info, model, users = trained
    all_pairs, _ = prepare(snapshot, action_indices(cfg.sequence_actions, events), min_events=1)
    layout = agree_layout(vectors, query_condition_ids(model), cfg, rcfg, metrics)
    ordered = [(u, seq, counts.get(u, len(seq))) for u, seq in changed_first(all_pairs, last_wm)]
    written = full_pass(vectors, layout, info, model, ordered, rcfg, metrics)
    if incremental is not None:
        incremental.adopt(info.number, model, {u: n for u, _, n in ordered})
    scores = dict(info.manifest["metrics"])
    log.info(
        "refresh: published %s (%d users trained, %d users' vectors), %s",
        info.name,
        users,
        written,
        scores,
    )
    return RefreshResult(info, users, written, scores, len(layout), previous=previous)


def train_fresh(
    cfg: BackboneConfig,
    rcfg: RefreshConfig,
    events: EventConfig,
    source: SequenceSource,
    versions: Path,
    metrics: Metrics,
) -> RefreshResult:
    """Train a version from scratch on all of ``source`` (each user's last event held out
    and evaluated) and publish it as the next ``vN``; no vectors are written.

    Returns the result; ``version`` None when no user has two events of the sequence
    actions.
    """
    started = time.perf_counter()
    last = latest(versions)
    previous = last.name if last is not None else None
    trained = train_version(
        cfg, rcfg, events, source, versions, metrics, init=None, watermark=source.watermark()
    )
    seconds = time.perf_counter() - started
    if trained is None:
        return RefreshResult(
            None,
            seconds=seconds,
            reason="no user has two events of the sequence actions",
            previous=previous,
        )
    info, _, users = trained
    return RefreshResult(
        info, users, metrics=dict(info.manifest["metrics"]), seconds=seconds, previous=previous
    )


def train_version(
    cfg: BackboneConfig,
    rcfg: RefreshConfig,
    events: EventConfig,
    source: SequenceSource,
    versions: Path,
    metrics: Metrics,
    *,
    init: VersionInfo | None,
    watermark: int,
) -> tuple[VersionInfo, LumBackbone, int] | None:
    """Train on ``source`` (each user's last event held out and evaluated), publish vN.

    Returns (version, model, users trained), or None when no user has enough events.
    """
    pairs, _ = prepare(source, action_indices(cfg.sequence_actions, events), metrics=metrics)
    if not pairs:
        return None
    history, held = leave_last_out(pairs, cfg.condition_fields)
    trained = train(
        cfg, history, init_from=None if init is None else init.path, events=events, metrics=metrics
    )
    scores = evaluate(trained.model, _sample(held, rcfg.eval_users, cfg.seed))
    info = publish(
        versions,
        trained.model,
        watermark=watermark,
        metrics=scores,
        parent=None if init is None else init.name,
        keep=cfg.keep_versions,
        registry=metrics,
    )
    return info, trained.model, len(history)


def _sample(held: HeldOut, n: int, seed: int) -> HeldOut:
    """At most ``n`` held-out users (evaluation cost stays bounded)."""
    if len(held.histories) <= n:
        return held
    pick = np.sort(np.random.default_rng(seed).choice(len(held.histories), n, replace=False))
    return HeldOut(
        [held.histories[i] for i in pick.tolist()],
        held.items[pick],
        held.conds[pick],
        held.ts[pick],
    )


def run_forever(
    cfg: BackboneConfig,
    rcfg: RefreshConfig,
    store_cfg: StoreConfig,
    events: EventConfig,
    paths: RefreshPaths,
    metrics: Metrics,
    stop: threading.Event,
    *,
    retrain: bool = False,
    on_refresh: Callable[[RefreshResult], None] | None = None,
) -> None:
    """Refresh every ``rcfg.cadence_s`` and, in between, pass incrementally every
    ``rcfg.incremental_every_s`` until ``stop`` is set. A failed refresh is logged and
    retried at the next tick (the last good version and its vectors stay in use).

    The newest version already published is exported first: its age (``time() -
    lumstream_backbone_version_timestamp_seconds``) counts from when it was made, not from
    this start."""
    newest = latest(paths.versions)
    if newest is not None:
        export_newest(newest, metrics)
    with _vectors_of(paths, rcfg, None) as vectors:
        incremental = IncrementalRefresher(
            cfg, rcfg, store_cfg, events, paths.store, paths.versions, vectors, metrics
        )
        try:
            _loop(
                cfg, rcfg, store_cfg, events, paths, metrics, stop, retrain, on_refresh, incremental
            )
        finally:
            incremental.close()


def _loop(
    cfg: BackboneConfig,
    rcfg: RefreshConfig,
    store_cfg: StoreConfig,
    events: EventConfig,
    paths: RefreshPaths,
    metrics: Metrics,
    stop: threading.Event,
    retrain: bool,
    on_refresh: Callable[[RefreshResult], None] | None,
    incremental: IncrementalRefresher,
) -> None:
    first, next_full = True, time.monotonic()
    while not stop.is_set():
        if time.monotonic() >= next_full:
            next_full = time.monotonic() + rcfg.cadence_s
            try:
                result = refresh_once(
                    cfg,
                    rcfg,
                    store_cfg,
                    events,
                    paths,
                    metrics,
                    retrain=retrain and first,
                    incremental=incremental,
                )
            except (StoreError, LayoutError) as exc:  # no store yet, a broken contract
                log.warning("refresh failed: %s; the last published version stays in use", exc)
                metrics.backbone_refresh_failures.inc()
            except Exception:
                log.exception("refresh failed; the last published version stays in use")
                metrics.backbone_refresh_failures.inc()
            else:
                if on_refresh is not None:
                    on_refresh(result)
            first = False
        elif rcfg.incremental_every_s > 0:
            try:
                incremental.step()
            except StoreError as exc:
                log.warning("incremental vectors failed: %s", exc)
            except Exception:
                log.exception("incremental vectors failed")
        wait = next_full - time.monotonic()
        if rcfg.incremental_every_s > 0:
            wait = min(wait, rcfg.incremental_every_s)
        stop.wait(max(wait, 0.0))


@contextlib.contextmanager
def _vectors_of(
    paths: RefreshPaths, rcfg: RefreshConfig, incremental: IncrementalRefresher | None
) -> Iterator[VectorStore]:
    """The vector store for a ``with`` block: the incremental refresher's open one, or
    opened here (one writer: RocksDB's lock refuses a second)."""
    if incremental is not None:
        yield incremental.vectors
        return
    store = open_vectors(paths.vectors, rcfg)
    try:
        yield store
    finally:
        store.close()
