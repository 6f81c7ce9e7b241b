"""The vector store: every user's recent condition-query vectors, per-version item vectors
and the condition layout, in one RocksDB database (the one format, the one writer).

The backbone refresh job is the only writer (:class:`VectorStore`): a full refresh adds a
version (its data watermark and item table) and a record for every user; between full
refreshes, the incremental refresher adds records for the users whose sequences changed,
with the same frozen version. Readers (:class:`VectorReader`: the ranker's trainer, the
ranking service) open it as a RocksDB secondary instance while the writer runs and answer
"user u as of time t" through :func:`trainer.vectors.lookup.assemble`.

=====================  ===========================================================
key                    value
=====================  ===========================================================
``L``                  the condition layout (JSON, :class:`ConditionLayout`)
``v`` version          that version's data watermark and publish time (JSON)
``i`` version          that version's item table (``records.encode_items``)
``u`` user             the user's newest records (``records.encode_records``)
=====================  ===========================================================

Why RocksDB keyed by user: a consumer looks up a batch of users at a time (one multi-get),
the store grows with users × conditions × dim × records kept (docs/vectors.md has the
figures) and does not have to fit in memory, and secondary readers follow the writer
without copies. A compacted Kafka topic keeps only the newest value per key and could not
answer "as of t"; it is not used.

Example:
    >>> store = VectorStore(path)  # doctest: +SKIP
    >>> store.set_layout(layout); store.add_version(3, watermark, items, item_vectors)
    >>> store.write(3, users, covered, vectors)  # doctest: +SKIP
    >>> VectorReader(path, scratch).lookup(users, items, conds, ts)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rocksdict import AccessType, Options, Rdict, WriteBatch, WriteOptions

from monitoring.metrics import Metrics
from streams.worker.store import multi_get
from trainer.vectors.layout import ConditionLayout, LayoutError
from trainer.vectors.lookup import LumLookup, assemble, missing
from trainer.vectors.records import (
    ItemTable,
    UserRecords,
    append,
    decode_items,
    decode_records,
    encode_items,
    encode_records,
)

log = logging.getLogger(__name__)

LAYOUT_KEY = b"L"
_USER = struct.Struct(">q")
_VERSION = struct.Struct(">i")


def _user_key(user: int) -> bytes:
    return b"u" + _USER.pack(user)


def _version_key(prefix: bytes, version: int) -> bytes:
    return prefix + _VERSION.pack(version)


class VectorStoreError(RuntimeError):
    """The vector store cannot be opened or holds data it cannot read."""


class VectorStore:
    """The writer's side (one process: the refresh job).

    Args:
        root: the database directory.
        keep: records kept per user, spread over ``horizon_ms`` (see
            :func:`~trainer.vectors.records.retained`): how far back "as of t" answers well.
        horizon_ms: the time span the kept records cover.
        keep_versions: item tables kept (records of older versions lose their e_i).
        sync: fsync every write batch.
    """

    def __init__(
        self,
        root: Path,
        *,
        keep: int = 16,
        horizon_ms: int = 900_000,
        keep_versions: int = 8,
        sync: bool = True,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        try:
            self.db = Rdict(str(root), opts)
        except Exception as exc:  # rocksdict raises plain Exception (lock, corruption)
            raise VectorStoreError(f"cannot open the vector store {root}: {exc}") from None
        self.keep, self.horizon_ms, self.keep_versions = keep, horizon_ms, keep_versions
        self._wo = WriteOptions()
        self._wo.sync = sync

    # -- layout and versions -----------------------------------------------------------
    def layout(self) -> ConditionLayout | None:
        raw = self.db.get(LAYOUT_KEY)
        return None if raw is None else ConditionLayout.from_json(orjson.loads(raw))

    def agree_layout(
        self, proposed: np.ndarray, fields: tuple[str, ...], dim: int, capacity: int
    ) -> tuple[ConditionLayout, int]:
        """The layout to write with: the stored one with ``proposed``'s new conditions
        appended while capacity lasts (the first refresh creates it). Returns (layout,
        conditions left out for lack of capacity).

        Raises:
            LayoutError: the fields or the width differ from the stored layout's.
        """
        current = self.layout()
        if current is None:
            current = ConditionLayout(fields, np.zeros((0, len(fields)), np.int64), capacity, dim)
        current.check_compatible(fields, dim)
        grown, added = current.extended(proposed)
        proposed_set = {tuple(r) for r in np.asarray(proposed).reshape(-1, len(fields)).tolist()}
        have = {tuple(r) for r in grown.conditions.tolist()}
        left_out = len(proposed_set - have)
        if added or self.layout() is None:
            self.db.put(LAYOUT_KEY, orjson.dumps(grown.to_json()), self._wo)
        return grown, left_out

    def add_version(
        self, version: int, watermark: int, items: np.ndarray, item_vectors: np.ndarray
    ) -> None:
        """Record a backbone version before any user record of it is written."""
        wb = WriteBatch(raw_mode=True)
        meta = {"watermark": int(watermark), "published_ms": time.time_ns() // 1_000_000}
        wb.put(_version_key(b"v", version), orjson.dumps(meta))
        wb.put(_version_key(b"i", version), encode_items(ItemTable.of(items, item_vectors)))
        for old in self.versions()[: -(self.keep_versions - 1) or None]:
            if old != version:
                wb.delete(_version_key(b"i", old))
        self.db.write(wb, self._wo)

    def versions(self) -> list[int]:
        """Versions recorded (oldest first)."""
        return sorted(versions_of(self.db))

    def watermark(self, version: int) -> int:
        raw = self.db.get(_version_key(b"v", version))
        if raw is None:
            raise VectorStoreError(f"version {version} is not in the vector store")
        return int(orjson.loads(raw)["watermark"])

    # -- user records ------------------------------------------------------------------
    def records(self, users: list[int], dim: int) -> dict[int, UserRecords]:
        raws = multi_get(self.db, [_user_key(u) for u in users])
        return {u: decode_records(r, dim) for u, r in zip(users, raws, strict=True) if r}

    def write(
        self,
        version: int,
        users: np.ndarray,
        covered: np.ndarray,
        vectors: np.ndarray,
        events: np.ndarray,
        computed_ms: int | None = None,
    ) -> np.ndarray:
        """Append a record per user (``vectors`` (U, N, D)) computed by ``version`` from
        their ``events`` (U,) sequence events, the newest at ``covered`` (U,). Returns (U,)
        the cosine distance of each user's vectors to their previous record of another
        version (NaN when none): how far the backbone moved them."""
        layout = self.layout()
        if layout is None:
            raise LayoutError("no condition layout: agree on one before writing vectors")
        wm = self.watermark(version)
        now = time.time_ns() // 1_000_000 if computed_ms is None else computed_ms
        users_l = [int(u) for u in users.tolist()]
        have = self.records(users_l, layout.dim)
        wb = WriteBatch(raw_mode=True)
        moved = np.full(len(users_l), np.nan)
        rows = zip(users_l, covered.tolist(), vectors, events.tolist(), strict=True)
        for i, (u, c, v, n) in enumerate(rows):
            prev = have.get(u)
            if prev is not None and len(prev.head):
                other = np.flatnonzero(prev.head["version"] != version)
                if len(other):
                    moved[i] = _cosine_distance(prev.vectors[int(other[-1])], v)
            recs = append(
                prev, version, int(c), max(int(c), wm), now, v, self.keep, int(n), self.horizon_ms
            )
            wb.put(_user_key(u), encode_records(recs))
        self.db.write(wb, self._wo)
        return moved

    def summarised(self, version: int, dim: int) -> dict[int, int]:
        """user -> how many sequence events their newest record of ``version`` summarises
        (one scan: the incremental refresher's index after a restart)."""
        out: dict[int, int] = {}
        it = self.db.iter()
        it.seek(b"u")
        while it.valid() and it.key()[:1] == b"u":
            recs = decode_records(it.value(), dim)
            mine = recs.head["events"][recs.head["version"] == version]
            if len(mine):
                out[_USER.unpack(it.key()[1:])[0]] = int(mine.max())
            it.next()
        return out

    def close(self) -> None:
        self.db.close()


def versions_of(db: Any) -> dict[int, dict[str, Any]]:
    """version -> its metadata, from a store's ``v`` keys."""
    out: dict[int, dict[str, Any]] = {}
    it = db.iter()
    it.seek(b"v")
    while it.valid() and it.key()[:1] == b"v":
        out[_VERSION.unpack(it.key()[1:])[0]] = orjson.loads(it.value())
        it.next()
    return out


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    if n == 0:
        return float("nan")
    a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    ok = den > 0
    return float(np.mean(1.0 - num[ok] / den[ok])) if ok.any() else float("nan")


class VectorReader:
    """Read-only access for consumers while the refresh job writes: a
    :class:`~trainer.vectors.lookup.VectorSource`.

    Opens the store as a RocksDB secondary instance (when it exists; until then every
    lookup is missing). :meth:`refresh` catches up with the writer and drops the caches;
    call it every few seconds (the ranker's ``vectors_poll_s``).

    Args:
        root: the vector store.
        scratch: a private directory for the secondary instance.
        metrics / consumer: lookups and ages are counted under ``consumer``.
        cache_users: users whose records stay decoded between refreshes.
    """

    def __init__(
        self,
        root: Path,
        scratch: Path,
        *,
        metrics: Metrics | None = None,
        consumer: str = "ranker",
        cache_users: int = 20_000,
    ) -> None:
        self.root, self.scratch = Path(root), Path(scratch)
        self.metrics, self.consumer, self.cache_users = metrics, consumer, cache_users
        self.db: Any = None
        self._layout: ConditionLayout | None = None
        self._records: OrderedDict[int, UserRecords | None] = OrderedDict()
        self._items: dict[int, ItemTable | None] = {}
        self.refresh()

    @property
    def layout(self) -> ConditionLayout | None:
        return self._layout

    def refresh(self) -> None:
        if self.db is None:
            if not (self.root / "CURRENT").is_file():
                return
            self.scratch.mkdir(parents=True, exist_ok=True)
            try:
                self.db = Rdict(
                    str(self.root),
                    Options(raw_mode=True),
                    access_type=AccessType.secondary(str(self.scratch)),
                )
            except Exception as exc:  # not written completely yet: try again later
                log.warning("vector store %s not readable yet: %s", self.root, exc)
                return
        self.db.try_catch_up_with_primary()
        raw = self.db.get(LAYOUT_KEY)
        self._layout = None if raw is None else ConditionLayout.from_json(orjson.loads(raw))
        self._records.clear()
        self._items.clear()

    def versions(self) -> dict[int, dict[str, Any]]:
        """version -> its data watermark and publish time."""
        return {} if self.db is None else versions_of(self.db)

    def users(self) -> Iterator[int]:
        """The users with records, in id order."""
        if self.db is None:
            return
        it = self.db.iter()
        it.seek(b"u")
        while it.valid() and it.key()[:1] == b"u":
            yield _USER.unpack(it.key()[1:])[0]
            it.next()

    def _items_of(self, version: int) -> ItemTable | None:
        if version not in self._items:
            raw = self.db.get(_version_key(b"i", version))
            self._items[version] = None if raw is None else decode_items(raw)
        return self._items[version]

    def _fetch(self, users: list[int], dim: int) -> dict[int, UserRecords]:
        want = [u for u in dict.fromkeys(users) if u not in self._records]
        if want:
            raws = multi_get(self.db, [_user_key(u) for u in want])
            for u, raw in zip(want, raws, strict=True):
                self._records[u] = None if raw is None else decode_records(raw, dim)
            while len(self._records) > self.cache_users:
                self._records.popitem(last=False)
        out = {}
        for u in users:
            recs = self._records.get(u)
            if recs is not None:
                out[u] = recs
        return out

    def lookup(
        self, users: np.ndarray, items: np.ndarray, conds: np.ndarray, ts: np.ndarray
    ) -> LumLookup:
        layout = self._layout
        if layout is None or self.db is None:
            return missing(len(users), 1, 1)
        users = np.asarray(users, np.int64)
        records = self._fetch(users.tolist(), layout.dim)
        return assemble(
            layout,
            records,
            self._items_of,
            users,
            np.asarray(items, np.int64),
            np.asarray(conds, np.int64),
            np.asarray(ts, np.int64),
            metrics=self.metrics,
            consumer=self.consumer,
        )

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        shutil.rmtree(self.scratch, ignore_errors=True)
