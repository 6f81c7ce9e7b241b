"""Writing condition-query vectors into the vector store: a full pass per new version and
incremental passes in between (LUM step 2 for every user, kept fresh).

- :func:`agree_layout`: before a refresh trains, the vector store's condition layout and
  the new version's query conditions must agree (append-only; same fields and width);
  a refresh that cannot keep the contract fails here, counted, and writes nothing.
- :func:`full_pass`: a new version ``vN``: its data watermark and item vectors, then a
  record for every user (the users with the most new events first).
- :class:`IncrementalRefresher`: between full refreshes, the newest version (frozen)
  recomputes the vectors of the users whose sequences grew since their newest record,
  every ``refresh.incremental_every_s``: a user's vectors are then at most about that
  much behind their sequence, instead of a whole refresh cadence.

Each record says which version computed it, the newest event it summarises and how many;
consumers use a record only for samples and requests after both that event and the
version's data watermark (:mod:`trainer.vectors.records`), so nothing is ever scored with
vectors built from later events.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monitoring.metrics import Metrics
from streams.config import EventConfig, StoreConfig
from streams.worker.store import StoreReader
from trainer.backbone.config import BackboneConfig, RefreshConfig
from trainer.backbone.data import action_indices, open_store
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.group_query import compute_vectors, item_embeddings
from trainer.backbone.versions import VersionInfo, latest, load_model
from trainer.vectors.layout import ConditionLayout, LayoutError
from trainer.vectors.store import VectorStore

log = logging.getLogger(__name__)

# (user, SEQ_DTYPE sequence oldest first, sequence events the store counts for the user)
UserSequence = tuple[int, np.ndarray, int]


def open_vectors(root: Path, rcfg: RefreshConfig) -> VectorStore:
    return VectorStore(
        root,
        keep=rcfg.vector_records_kept,
        horizon_ms=int(rcfg.vector_history_s * 1000),
        keep_versions=rcfg.vector_versions_kept,
    )


def agree_layout(
    store: VectorStore,
    proposed: np.ndarray,
    cfg: BackboneConfig,
    rcfg: RefreshConfig,
    metrics: Metrics,
) -> ConditionLayout:
    """The layout to write with (see the module doc); counts appended and left-out
    conditions. Raises LayoutError (counted as refused) when the contract cannot hold."""
    before = store.layout()
    try:
        layout, left_out = store.agree_layout(
            proposed, tuple(cfg.condition_fields), cfg.dim, rcfg.condition_capacity
        )
    except LayoutError:
        metrics.backbone_layout_events.labels(event="refused").inc()
        raise
    added = len(layout) - (len(before) if before is not None else 0)
    if added:
        metrics.backbone_layout_events.labels(event="appended").inc(added)
    if left_out:
        metrics.backbone_layout_events.labels(event="left_out").inc(left_out)
        log.warning(
            "vector layout full (%d of %d): %d frequent condition(s) left out; raise "
            "refresh.condition_capacity for a new store and ranker to cover them",
            len(layout),
            layout.capacity,
            left_out,
        )
    metrics.backbone_layout_conditions.set(len(layout))
    return layout


def _write(
    store: VectorStore,
    layout: ConditionLayout,
    model: LumBackbone,
    version: int,
    users: Sequence[UserSequence],
    batch_users: int,
    metrics: Metrics,
) -> tuple[int, list[float]]:
    """Group-query ``users`` and write their records; (written, distances moved)."""
    written, moved = 0, list[float]()
    for start in range(0, len(users), batch_users):
        chunk = users[start : start + batch_users]
        ids, vecs = compute_vectors(
            model, [(u, s) for u, s, _ in chunk], layout.conditions, metrics=metrics
        )
        info = {u: (int(s["ts"][-1]), n) for u, s, n in chunk if len(s)}
        covered = np.array([info[u][0] for u in ids.tolist()], np.int64)
        events = np.array([info[u][1] for u in ids.tolist()], np.int64)
        block = vecs.detach().cpu().numpy().astype(np.float32)  # (U, N, D)
        dist = store.write(version, ids, covered, block, events)
        moved.extend(d for d in dist.tolist() if np.isfinite(d))
        written += len(ids)
    return written, moved


def full_pass(
    store: VectorStore,
    layout: ConditionLayout,
    info: VersionInfo,
    model: LumBackbone,
    users: Sequence[UserSequence],
    rcfg: RefreshConfig,
    metrics: Metrics,
) -> int:
    """Write version ``info``'s item vectors and every user's record; returns how many
    users. Sets the vector-shift gauge: how far users moved from their previous version."""
    items, item_vecs = item_embeddings(model)
    store.add_version(
        info.number,
        int(info.manifest["data_watermark"]),
        items,
        item_vecs.detach().cpu().numpy(),
    )
    written, moved = _write(
        store, layout, model, info.number, users, rcfg.vector_batch_users, metrics
    )
    if moved:  # cosine distance of each user's new record from their previous one
        metrics.backbone_vector_shift.labels(stat="mean").set(float(np.mean(moved)))
        metrics.backbone_vector_shift.labels(stat="p90").set(float(np.quantile(moved, 0.9)))
    metrics.backbone_vectors_written.labels(mode="full").inc(written)
    metrics.backbone_vectors_time.labels(mode="full").set(time.time())
    return written


class IncrementalRefresher:
    """Recomputes the vectors of users whose sequences grew, with the newest version.

    Args:
        cfg / rcfg / store_cfg / events: component configs.
        store_root: the sequence store (read through a secondary instance).
        versions: the backbone versions.
        vectors: the vector store this process writes.
        metrics: users refreshed and the pass time.
    """

    def __init__(
        self,
        cfg: BackboneConfig,
        rcfg: RefreshConfig,
        store_cfg: StoreConfig,
        events: EventConfig,
        store_root: Path,
        versions: Path,
        vectors: VectorStore,
        metrics: Metrics,
    ) -> None:
        self.cfg, self.rcfg, self.store_cfg, self.events = cfg, rcfg, store_cfg, events
        self.store_root, self.versions, self.vectors = store_root, versions, vectors
        self.metrics = metrics
        self.model: LumBackbone | None = None
        self.version = -1
        self.seen: dict[int, int] = {}  # user -> sequence events their newest record has
        self._scratch = tempfile.TemporaryDirectory(prefix="lumstream-incremental-")
        self._reader: StoreReader | None = None

    def adopt(self, version: int, model: LumBackbone, seen: dict[int, int]) -> None:
        """After a full pass: refresh with ``model`` (version ``version``) from now on."""
        self.version, self.model, self.seen = version, model, seen

    def _load(self) -> bool:
        """Load the newest version the vector store has records of (after a restart)."""
        info = latest(self.versions)
        stored = self.vectors.versions()
        if info is None or info.number not in stored:
            return False
        if info.number != self.version:
            layout = self.vectors.layout()
            assert layout is not None
            self.adopt(
                info.number, load_model(info.path), self.vectors.summarised(info.number, layout.dim)
            )
        return True

    def step(self, max_users: int | None = None) -> int:
        """One incremental pass: the users whose store sequence has more events than their
        newest record summarises; returns how many were written."""
        if self.model is None and not self._load():
            return 0
        layout = self.vectors.layout()
        if layout is None:
            return 0
        if self._reader is None:
            self._reader = open_store(self.store_root, self.store_cfg, Path(self._scratch.name))
        reader = self._reader
        reader.refresh()
        grown = [
            (user, int(meta[0]))
            for _, user, meta in reader.users()
            if int(meta[0]) > self.seen.get(user, 0)
        ]
        limit = max_users or self.rcfg.incremental_max_users
        if len(grown) > limit:  # the most behind first; the rest next pass
            grown.sort(key=lambda un: self.seen.get(un[0], 0) - un[1])
            grown = grown[:limit]
        acts = action_indices(self.cfg.sequence_actions, self.events)
        users: list[UserSequence] = []
        for user, n in grown:
            seq = reader.sequence(user)
            if acts is not None:
                seq = seq[np.isin(seq["action"], acts)]
            if len(seq):
                users.append((user, seq, n))
            self.seen[user] = n
        assert self.model is not None
        written, _ = _write(
            self.vectors,
            layout,
            self.model,
            self.version,
            users,
            self.rcfg.vector_batch_users,
            self.metrics,
        )
        self.metrics.backbone_vectors_written.labels(mode="incremental").inc(written)
        self.metrics.backbone_vectors_time.labels(mode="incremental").set(time.time())
        return written

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._scratch.cleanup()


def check_layout_before_training(
    store: VectorStore, cfg: BackboneConfig, rcfg: RefreshConfig, metrics: Metrics
) -> None:
    """Refuse a refresh early (before it trains and publishes) when the vector store's
    layout was made for other condition fields, another width or another capacity."""
    layout = store.layout()
    if layout is None:
        return
    try:
        layout.check_compatible(cfg.condition_fields, cfg.dim)
        if layout.capacity != rcfg.condition_capacity:
            raise LayoutError(
                f"refresh.condition_capacity {rcfg.condition_capacity} differs from the "
                f"layout's {layout.capacity}"
            )
    except LayoutError:
        metrics.backbone_layout_events.labels(event="refused").inc()
        raise
