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
   first, and write them to the vector store and to lum.cq (tagged with vN and the time).

``run_forever`` repeats it every ``refresh.cadence_s`` until stopped; ``cq_sink`` sends
the vectors to lum.cq. ``train_fresh`` trains one version from scratch on given sequences
and publishes it without vectors (``lumstream backbone train``).
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
from streams.config import EventConfig, KafkaConfig, StoreConfig
from streams.worker.store import StoreError
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
from trainer.backbone.group_query import compute_vectors, item_embeddings, query_condition_ids
from trainer.backbone.train import train
from trainer.backbone.versions import VersionInfo, export_newest, latest, list_versions, publish
from trainer.vectors.sets import LumVectors, VectorsError, computed_at_ms
from trainer.vectors.store import VectorStore

log = logging.getLogger(__name__)

# Receives the (key, value) records of lum.cq (a producer's send_many, or None).
CqSink = Callable[[list[tuple[bytes, bytes]]], object]


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
        vector_sets: whole vector sets per version (``LumVectors`` files) for the ranker
            trainer.
    """

    store: Path
    versions: Path
    vectors: Path
    vector_sets: Path


def refresh_once(
    cfg: BackboneConfig,
    rcfg: RefreshConfig,
    store_cfg: StoreConfig,
    events: EventConfig,
    paths: RefreshPaths,
    metrics: Metrics,
    *,
    cq: CqSink | None = None,
    retrain: bool = False,
) -> RefreshResult:
    """One refresh; see the module doc. Raises ``StoreError`` when there is no store."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lumstream-refresh-") as scratch:
        reader = open_store(paths.store, store_cfg, Path(scratch))
        try:
            result = _refresh(cfg, rcfg, events, paths, metrics, reader, cq, retrain)
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
    reader: SequenceSource,
    cq: CqSink | None,
    retrain: bool,
) -> RefreshResult:
    last = latest(paths.versions)
    store_wm = reader.watermark()
    last_wm = int(last.manifest["data_watermark"]) if last is not None else 0
    if last is not None and not retrain and store_wm <= last_wm:
        return RefreshResult(None, reason=f"no events after {last.name}'s watermark")
    snapshot = MemorySequences(dict(reader.sequences()))  # one consistent read of the store
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
    written = write_vectors(
        info,
        model,
        changed_first(all_pairs, last_wm),
        paths,
        rcfg.vector_batch_users,
        metrics,
        cq,
        previous=last.name if last is not None else None,
    )
    scores = dict(info.manifest["metrics"])
    log.info(
        "refresh: published %s (%d users trained, %d users' vectors), %s",
        info.name,
        users,
        written,
        scores,
    )
    return RefreshResult(
        info, users, written, scores, len(query_condition_ids(model)), previous=previous
    )


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


def write_vectors(
    info: VersionInfo,
    model: LumBackbone,
    pairs: list[tuple[int, np.ndarray]],
    paths: RefreshPaths,
    batch_users: int,
    metrics: Metrics,
    cq: CqSink | None,
    *,
    previous: str | None = None,
) -> int:
    """Group-query ``pairs`` in order (changed users first).

    Each chunk goes to the vector store (per-user lookups: serving) and lum.cq as soon as
    it is computed; the whole set with the item embeddings e_i is then saved as one
    ``LumVectors`` file under ``<versions>/vectors/vN`` (the ranker trainer's input).
    With ``previous`` (the version before), how far the users' vectors moved from that
    version's set is exported (``backbone_vector_shift``).
    """
    conds = query_condition_ids(model)
    store = VectorStore(paths.vectors)
    all_users: list[np.ndarray] = []
    all_vecs: list[np.ndarray] = []
    try:
        started_ms = time.time_ns() // 1_000_000
        for start in range(0, len(pairs), batch_users):
            users, vecs = compute_vectors(
                model, pairs[start : start + batch_users], conds, metrics=metrics
            )
            block = vecs.detach().cpu().numpy().astype(np.float32)  # (U, N, D)
            records = store.write(
                users,
                info.number,
                time.time_ns() // 1_000_000,
                conds.reshape(len(conds), -1)[:, 0],
                block,
            )
            if cq is not None:
                cq(records)
            all_users.append(users)
            all_vecs.append(block)
        written = sum(len(u) for u in all_users)
        store.set_state(version=info.number, full_pass_started_ms=started_ms, users=written)
    finally:
        store.close()
    items, item_vecs = item_embeddings(model)
    dim = model.cfg.dim
    vectors = LumVectors(
        info.name,
        conds,
        np.concatenate(all_users) if all_users else np.zeros(0, np.int64),
        np.concatenate(all_vecs) if all_vecs else np.zeros((0, len(conds), dim), np.float32),
        items,
        item_vecs.detach().cpu().numpy(),
        model.cfg.condition_fields,
        started_ms,
    )
    vectors.save(paths.vector_sets / info.name)
    if previous is not None:
        _export_shift(paths.vector_sets / previous, vectors, metrics)
    _prune_sets(paths)
    metrics.backbone_vectors_time.set(started_ms / 1000.0)
    return written


def _export_shift(previous: Path, new: LumVectors, metrics: Metrics) -> None:
    """Export how far the users' vectors moved since the ``previous`` set (when it can be
    read and queries the same conditions)."""
    try:
        old = LumVectors.load(previous)
    except VectorsError as exc:
        log.info("refresh: no vector shift against %s: %s", previous.name, exc)
        return
    shift = vector_shift(old, new)
    if shift is None:
        log.info("refresh: no vector shift against %s (no common users or conditions)", old.version)
        return
    for stat, value in shift.items():
        metrics.backbone_vector_shift.labels(stat=stat).set(value)
    log.info("refresh: vectors moved from %s to %s: %s", old.version, new.version, shift)


def vector_shift(old: LumVectors, new: LumVectors) -> dict[str, float] | None:
    """Cosine distance ``1 - cos(o_q, o_q')`` of every (user, query condition) in both sets:
    ``{"mean": ..., "p90": ...}``, or None when they share no user or query other
    conditions.

    Example:
        >>> a = LumVectors("v1", np.array([1]), np.array([5]), np.ones((1, 1, 2)),
        ...                np.array([1]), np.ones((1, 2)))
        >>> vector_shift(a, a)
        {'mean': 0.0, 'p90': 0.0}
    """
    if not np.array_equal(old.query_conditions, new.query_conditions):
        return None
    common, i_old, i_new = np.intersect1d(old.users, new.users, return_indices=True)
    if not len(common):
        return None
    a = old.user_vectors[i_old].astype(np.float64)  # (U, N, D)
    b = new.user_vectors[i_new].astype(np.float64)
    norms = np.linalg.norm(a, axis=2) * np.linalg.norm(b, axis=2)  # (U, N)
    ok = np.isfinite(norms) & (norms > 0)
    if not ok.any():
        return None
    cos = (a * b).sum(axis=2)[ok] / norms[ok]
    dist = np.clip(1.0 - cos, 0.0, 2.0)
    return {"mean": round(float(dist.mean()), 6), "p90": round(float(np.quantile(dist, 0.9)), 6)}


def _prune_sets(paths: RefreshPaths) -> None:
    """Vector sets follow version retention: a set whose version is gone is removed."""
    import shutil

    kept = {v.name for v in list_versions(paths.versions)}
    if paths.vector_sets.is_dir():
        for d in paths.vector_sets.iterdir():
            if d.is_dir() and d.name not in kept:
                shutil.rmtree(d, ignore_errors=True)


def run_forever(
    cfg: BackboneConfig,
    rcfg: RefreshConfig,
    store_cfg: StoreConfig,
    events: EventConfig,
    paths: RefreshPaths,
    metrics: Metrics,
    stop: threading.Event,
    *,
    cq: CqSink | None = None,
    retrain: bool = False,
    on_refresh: Callable[[RefreshResult], None] | None = None,
) -> None:
    """Refresh every ``rcfg.cadence_s`` until ``stop`` is set; a failed refresh is logged
    and retried at the next tick (the last good version stays published).

    The newest version already published, and its vector set, are exported first: their
    ages (``time() - lumstream_backbone_*_timestamp_seconds``) count from when they were
    made, not from this start."""
    newest = latest(paths.versions)
    if newest is not None:
        export_newest(newest, metrics)
        computed_ms = computed_at_ms(paths.vector_sets / newest.name)
        if computed_ms:
            metrics.backbone_vectors_time.set(computed_ms / 1000.0)
    first = True
    while not stop.is_set():
        try:
            result = refresh_once(
                cfg, rcfg, store_cfg, events, paths, metrics, cq=cq, retrain=retrain and first
            )
        except StoreError as exc:  # e.g. no store yet: one line, no traceback
            log.warning("refresh failed: %s; the last published version stays in use", exc)
            metrics.backbone_refresh_failures.inc()
        except Exception:
            log.exception("refresh failed; the last published version stays in use")
            metrics.backbone_refresh_failures.inc()
        else:
            if on_refresh is not None:
                on_refresh(result)
        first = False
        stop.wait(rcfg.cadence_s)


@contextlib.contextmanager
def cq_sink(kafka: KafkaConfig, bootstrap: str | None, metrics: Metrics) -> Iterator[CqSink | None]:
    """A sink sending vector records to ``kafka.topic_cq`` for the ``with`` block, through
    a producer on ``bootstrap``; None when there is no cluster (``bootstrap`` None)."""
    if not bootstrap:
        yield None
        return
    from streams.kafka.producer import Producer

    with Producer(kafka, bootstrap, metrics=metrics) as producer:

        def send(records: list[tuple[bytes, bytes]]) -> None:
            producer.send_many(kafka.topic_cq, records, source="backbone")
            producer.flush()

        yield send
