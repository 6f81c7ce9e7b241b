"""The ranking service's logic, without HTTP: what a request gets, what is loaded, readiness.

:class:`RankService` holds the served version (swapped whole by the
:class:`~serving.models.VersionWatcher`), the sequence store readers (RocksDB secondary
instances of every partition, caught up before each request by default) and the vector
reader (the vectors' one reader, "as of now"). :meth:`RankService.rank` is synchronous and
runs on the one scoring thread of a worker process (serving/app.py), so the store and
vector readers are only ever used from that thread.

Example:
    >>> svc = RankService(ServingConfig(), StoreConfig(), 30, paths)  # doctest: +SKIP
    >>> svc.watcher.check(); svc.rank(decode_rank(body))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitoring.metrics import Metrics
from serving.api import (
    NO_CONDITION,
    ModelInfo,
    ModelsResponse,
    RankRequest,
    RankResponse,
    ScoredItem,
    as_text,
)
from serving.config import ServingConfig
from serving.features import request_samples, score_samples
from serving.follow import follow_updates
from serving.models import Served, VersionWatcher
from streams.config import KafkaConfig, StoreConfig
from streams.contracts.ids import stable_id, stable_ids
from streams.contracts.records import SEQ_DTYPE
from streams.worker.store import StoreError, StoreReader, partition_dir
from trainer.vectors.store import VectorReader

log = logging.getLogger(__name__)

_PARTITION = re.compile(r"p[0-9]+")
_FRESH_USERS = 50_000  # users whose newest seen event time is remembered (freshness metric)
_FRESH_GAP_MS = 1_000  # the freshness metric counts a user only when requests come this close


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Refused(Exception):
    """A request answered with an error: HTTP ``status``, a short ``code``, the ``detail``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class ServicePaths:
    """Where the service reads: the partition stores, the vector store, the versions."""

    store: Path
    vectors: Path
    versions: Path


def _signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes whenever a RocksDB writer commits, flushes or compacts: the names,
    sizes and mtimes of its WAL files, manifests and CURRENT."""
    out = []
    try:
        with os.scandir(path) as it:
            for e in it:
                n = e.name
                if n.endswith(".log") or n.startswith("MANIFEST") or n == "CURRENT":
                    st = e.stat()
                    out.append((n, st.st_size, st.st_mtime_ns))
    except OSError:
        return ()
    return tuple(sorted(out))


class Sequences:
    """The users' sequences as the workers' stores hold them now (secondary readers).

    Partitions appearing later (a worker starting) are picked up at the next catch-up.
    """

    def __init__(self, root: Path, cfg: StoreConfig) -> None:
        self.root, self.cfg = root, cfg
        self.reader: StoreReader | None = None
        self._parts: tuple[str, ...] = ()
        self._scratch = Path(tempfile.mkdtemp(prefix="lumstream-serving-store-"))
        self._signatures: dict[int, tuple[tuple[str, int, int], ...]] = {}

    def _partitions(self) -> tuple[str, ...]:
        try:
            names = os.listdir(self.root)
        except OSError:
            return ()
        parts = sorted(n for n in names if _PARTITION.fullmatch(n))
        if tuple(parts) == self._parts:
            return self._parts
        return tuple(p for p in parts if (self.root / p / "CURRENT").exists())

    def catch_up(self) -> None:
        """Open partitions that appeared (one listing) and follow the writers.

        A RocksDB catch-up costs about a millisecond per partition even when nothing
        changed, so a partition is caught up only when its write-ahead log, manifest or
        file set changed since the last catch-up: every write batch a worker commits
        appends to its WAL, so the next request still sees it.
        """
        parts = self._partitions()
        if parts != self._parts:
            self._reopen(parts)
        if self.reader is None:
            return
        for part, db in self.reader.dbs.items():
            sig = _signature(partition_dir(self.root, part))
            if sig != self._signatures.get(part):
                db.try_catch_up_with_primary()
                self._signatures[part] = sig

    def _reopen(self, parts: tuple[str, ...]) -> None:
        if self.reader is not None:
            self.reader.close()  # removes its scratch
            self.reader = None
        self._signatures.clear()
        if not parts:
            return
        scratch = self._scratch / f"r{time.monotonic_ns()}"
        try:
            self.reader = StoreReader(self.root, self.cfg, scratch)
            self._parts = parts
        except StoreError as exc:
            log.warning("serving: store not readable yet: %s", exc)

    def sequence(self, user: int) -> np.ndarray:
        if self.reader is None:
            return np.empty(0, SEQ_DTYPE)
        return self.reader.sequence(user)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        shutil.rmtree(self._scratch, ignore_errors=True)


class RankService:
    """Scores requests with the served version; see the module doc.

    Args:
        cfg: the service settings.
        store_cfg: the sequence store's settings (chunking, kept length).
        history_len: events of history a sample carries (``worker.history_len``).
        paths: where the stores and versions are.
        metrics: the ``serving_*`` metrics (and the vector reader's, as consumer serving).
        clock: event time "now" in ms (tests pin it).
    """

    def __init__(
        self,
        cfg: ServingConfig,
        store_cfg: StoreConfig,
        history_len: int,
        paths: ServicePaths,
        metrics: Metrics,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.cfg, self.history_len, self.paths = cfg, history_len, paths
        self.metrics, self.clock = metrics, clock
        self.served: Served | None = None
        self.sequences = Sequences(paths.store, store_cfg)
        self._vec_scratch = Path(tempfile.mkdtemp(prefix="lumstream-serving-vectors-"))
        self.vectors = VectorReader(
            paths.vectors, self._vec_scratch, metrics=metrics, consumer="serving"
        )
        # read by /v1/models on the event loop; the store itself only on the scoring thread
        self._vector_versions: list[int] = sorted(self.vectors.versions())
        self.watcher = VersionWatcher(paths.versions, cfg.pin_version, self._swap)
        self._store_at = 0.0
        self._vectors_at = time.monotonic()
        self._recent_parts: list[np.ndarray] = []
        self._newest_seen: OrderedDict[int, tuple[int, int]] = OrderedDict()  # newest, seen at

    # -- versions ------------------------------------------------------------------------
    def _swap(self, served: Served) -> None:
        """The one assignment that changes the version every later request uses."""
        self.served = served
        self._recent_parts.clear()
        self.metrics.serving_model_version.set(served.number)
        self.metrics.serving_model_time.set(served.published_at_ms / 1000.0)

    def watch(
        self,
        stop: threading.Event,
        kafka: KafkaConfig | None = None,
        bootstrap: str | None = None,
    ) -> list[threading.Thread]:
        """Start following new versions until ``stop`` is set: the versions directory every
        ``serving.watch_s`` and, with a cluster and ``serving.follow_updates``, the
        announcements on ``kafka.topic_model_updates``. Returns the started threads."""
        threads = [
            threading.Thread(
                target=self.watcher.run,
                args=(stop, self.cfg.watch_s),
                name="serving-versions",
                daemon=True,
            )
        ]
        if kafka is not None and bootstrap and self.cfg.follow_updates:
            threads.append(
                threading.Thread(
                    target=follow_updates,
                    args=(kafka, bootstrap, self.watcher, stop),
                    name="serving-updates",
                    daemon=True,
                )
            )
        for th in threads:
            th.start()
        return threads

    def models(self) -> ModelsResponse:
        s = self.served
        info = None
        if s is not None:
            m = s.manifest
            wm = m.get("data_watermark")
            info = ModelInfo(
                ranker_version=s.name,
                path=str(s.path),
                loaded_at_ms=s.loaded_at_ms,
                published_at_ms=s.published_at_ms,
                age_s=max(wall_ms() - s.published_at_ms, 0) / 1000.0,
                backbone_version=m.get("backbone"),
                samples_learned=int(m.get("samples_learned", 0)),
                pinned=bool(self.cfg.pin_version),
                vectors_versions=list(self._vector_versions),
                data_watermark_ms=int(wm) if isinstance(wm, int) else None,
            )
        return ModelsResponse(loaded=info, available=self.watcher.available())

    def not_ready(self) -> str | None:
        """Why the service cannot answer yet (None: ready)."""
        s = self.served
        if s is None:
            return f"no ranker version loaded from {self.paths.versions}"
        if s.ranker.model.cfg.lum_direct and self.vectors.layout is None:
            return (
                f"the version uses LUM features; no vector store readable at {self.paths.vectors}"
            )
        if self.sequences.reader is None:
            return f"no sequence store readable at {self.paths.store}"
        return None

    def check_ready(self) -> str | None:
        """:meth:`not_ready` after trying to open what is missing (scoring thread only)."""
        if self.sequences.reader is None:
            self.sequences.catch_up()
        if self.vectors.layout is None:
            self.vectors.refresh()
            self._vector_versions = sorted(self.vectors.versions())
        return self.not_ready()

    # -- stores ----------------------------------------------------------------------------
    def catch_up(self, force: bool = False) -> None:
        """Follow the stores' writers (call from the scoring thread)."""
        now = time.monotonic()
        if force or now - self._store_at >= self.cfg.store_refresh_s:
            self._store_at = now
            self.sequences.catch_up()
        if force or now - self._vectors_at >= self.cfg.vectors_refresh_s:
            self._vectors_at = now
            self.vectors.refresh()
            self._vector_versions = sorted(self.vectors.versions())

    # -- ranking -------------------------------------------------------------------------
    def rank(self, req: RankRequest) -> RankResponse:
        """Score ``req`` (already decoded and validated); raises :class:`Refused`."""
        served = self.served  # taken once: the whole request is scored by this version
        if served is None:
            self.metrics.serving_rejected.labels(reason="no_model").inc()
            raise Refused(503, "no_model", "no ranker version is loaded yet")
        self.catch_up()
        now = self.clock()
        user = stable_id(as_text(req.user_id))
        cond = stable_id(NO_CONDITION if req.condition is None else as_text(req.condition))
        if req.condition is not None and self.cfg.reject_unknown_conditions:
            rows = (
                served.ranker.mappers["cond"]
                .map(np.array([cond]), np.array([now]), learn=False)
                .rows
            )
            if int(rows[0]) == 0:
                self.metrics.serving_rejected.labels(reason="invalid").inc()
                raise Refused(
                    422,
                    "unknown_condition",
                    f"condition: {as_text(req.condition)!r} is unknown to version {served.name}",
                )
        item_text = [as_text(c.item_id) for c in req.candidates]
        cat_text = [None if c.category is None else as_text(c.category) for c in req.candidates]
        items = stable_ids(item_text)
        cats = stable_ids([c or "" for c in cat_text])  # memoised: categories repeat
        cats[[c is None for c in cat_text]] = 0  # no category: 0, as the store records it
        seq = self.sequences.sequence(user)
        self._freshness(user, seq)
        samples = request_samples(user, cond, items, cats, seq, self.history_len, now)
        sc = score_samples(served.builder, served.ranker.model, samples, self.vectors)
        if not np.isfinite(sc.probs).all():
            log.error("serving: version %s gave a non-finite score for user %d", served.name, user)
            raise Refused(500, "error", f"version {served.name} gave a non-finite score")
        order = np.argsort(-sc.probs, kind="stable")
        if req.k is not None:
            order = order[: req.k]
        items_out = [
            ScoredItem(
                item_id=item_text[i],
                score=float(sc.probs[i]),
                new_item=bool(sc.new_item[i]),
                category=cat_text[i],
            )
            for i in order.tolist()
        ]
        # the scores of what is served (the top k): the version's reference was taken over
        # shown impressions, not over every candidate a client asks about
        if req.log:  # a probe or preview (log: false) is no served traffic
            self._observe(served, sc.probs[order], sc.new_user, int(sc.new_item.sum()))
        return RankResponse(
            request_id=req.request_id or uuid.uuid4().hex,
            items=items_out,
            ranker_version=served.name,
            backbone_version=sc.backbone or served.manifest.get("backbone"),
            new_user=sc.new_user,
            history=sc.history,
            lum_user=sc.lum_user,
            new_condition=sc.new_condition,
            history_ts=int(seq["ts"].max()) if len(seq) else None,
        )

    def _freshness(self, user: int, seq: np.ndarray) -> None:
        """Observe how long the newest event of a user's history took to be seen here:
        event time to the first request that saw it, when the user's previous request
        (which did not see it) came at most ``_FRESH_GAP_MS`` before: the event became
        visible between the two, so the figure is off by at most that gap. (Without the
        bound it would measure how long users wait between requests.)"""
        if not len(seq):
            return
        newest, now = int(seq["ts"].max()), wall_ms()
        before = self._newest_seen.get(user)
        if before is not None and newest > before[0] and now - before[1] <= _FRESH_GAP_MS:
            age = max(now - newest, 0) / 1000.0
            self.metrics.serving_history_freshness.metric.observe(age)
        self._newest_seen[user] = (newest, now)
        self._newest_seen.move_to_end(user)
        while len(self._newest_seen) > _FRESH_USERS:
            self._newest_seen.popitem(last=False)

    def _observe(self, served: Served, probs: np.ndarray, new_user: bool, new_items: int) -> None:
        m = self.metrics
        m.serving_scores.metric.observe_many(probs)
        if new_user:
            m.serving_cold_start.labels(kind="user").inc()
        if new_items:
            m.serving_cold_start.labels(kind="item").inc(new_items)
        if served.reference is not None and "score" in served.reference.features:
            self._recent_parts.append(probs)
            if sum(len(p) for p in self._recent_parts) >= self.cfg.psi_every:
                recent = np.concatenate(self._recent_parts)
                self._recent_parts.clear()
                psi = served.reference.compare({"score": recent})["score"]
                if np.isfinite(psi):
                    m.serving_score_psi.set(psi)

    def close(self) -> None:
        self.sequences.close()
        self.vectors.close()
        shutil.rmtree(self._vec_scratch, ignore_errors=True)
