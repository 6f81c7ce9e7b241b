"""The RocksDB sequence store: one database per lum.events partition.

Per-partition databases make state move with partition assignment: the worker that owns
partition *p* opens ``<root>/p00007`` (RocksDB's lock keeps a second writer out) and
closes it on revocation, so another worker of the group can open it. Everything a
partition needs to resume lives in its database and changes in one atomic, fsynced
WriteBatch per applied batch:

=====================  ===========================================================
key                    value
=====================  ===========================================================
``P``                  partition state (JSON): next offset, watermark, sample seq...
``m`` user             user meta: total events, first/last ts, counts per action
``s`` user chunk       a chunk of the user's sequence (``chunk_events`` SEQ_DTYPE rows)
``j`` n / ``c`` n      label-join state blobs (streams/worker/join.py)
``d`` n                duplicate-window blobs (streams/worker/dedup.py)
=====================  ===========================================================

User ids and chunk numbers are big-endian so a user's chunks are contiguous and ordered.
Only the tail chunk of a user is rewritten when events arrive, so a write costs
O(chunk) bytes, not O(sequence).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rocksdict import AccessType, Options, Rdict, WriteBatch, WriteOptions

from streams.config import StoreConfig
from streams.contracts.records import SEQ_DTYPE

log = logging.getLogger(__name__)

MAX_ACTIONS = 16
_META = struct.Struct(f"<qqq{MAX_ACTIONS}q")  # n_total, first_ts, last_ts, counts per action
_USER = struct.Struct(">q")
_CHUNK = struct.Struct(">qI")
_BLOB = struct.Struct(">q")
STATE_KEY = b"P"
_CACHE_LIMIT = 500_000  # users whose meta/tail stay cached per partition before a reset
_ISZ = SEQ_DTYPE.itemsize


class StoreError(RuntimeError):
    """The store cannot be opened or holds data it cannot read."""


def meta_key(user: int) -> bytes:
    return b"m" + _USER.pack(user)


def chunk_key(user: int, chunk: int) -> bytes:
    return b"s" + _CHUNK.pack(user, chunk)


def blob_key(prefix: bytes, number: int) -> bytes:
    return prefix + _BLOB.pack(number)


def partition_dir(root: Path, partition: int) -> Path:
    return root / f"p{partition:05d}"


@dataclass
class PartitionState:
    """What a partition has applied; stored under ``P`` in the same batch as the data."""

    next_offset: int = 0  # the first lum.events offset not yet applied
    watermark: int = -(2**62)  # max event time seen (ms)
    sample_seq: int = 0  # samples emitted so far
    blob_no: int = 0  # blobs written so far (join, dedup)
    label_window_ms: int = -1  # the label window the join state was built with
    join_format: int = 1  # row layout of the open impressions (2: + req, slot, randomized)
    counters: dict[str, int] = field(default_factory=dict)

    def bump(self, name: str, by: int = 1) -> None:
        if by:
            self.counters[name] = self.counters.get(name, 0) + by

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.__dict__, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> PartitionState:
        if raw is None:
            return cls()
        try:
            return cls(**orjson.loads(raw))
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise StoreError(f"partition state record is corrupt: {exc}") from None


def _options(create: bool) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(create)
    return opts


def multi_get(db: Any, keys: list[bytes]) -> list[bytes | None]:
    """Values of ``keys`` (None where missing) in one RocksDB multi-get."""
    return list(db.get(keys)) if keys else []


def unpack_meta(raw: bytes) -> tuple[int, ...]:
    return _META.unpack(raw)


def sequence_from(
    db: Any,
    user: int,
    cfg: StoreConfig,
    n_total: int,
    overlay: dict[bytes, bytes | None] | None = None,
) -> np.ndarray:
    """The last ``cfg.seq_len`` events of ``user`` (oldest first) from ``db``."""
    if n_total <= 0:
        return np.empty(0, SEQ_DTYPE)
    c = cfg.chunk_events
    first = max(0, n_total - cfg.seq_len)
    keys = [chunk_key(user, k) for k in range(first // c, (n_total - 1) // c + 1)]
    parts = []
    missing = [k for k in keys if overlay is None or k not in overlay]
    fetched = dict(zip(missing, multi_get(db, missing), strict=True))
    for k in keys:
        raw = overlay[k] if overlay is not None and k in overlay else fetched.get(k)
        if raw is None:
            raise StoreError(f"user {user}: chunk {k[-4:].hex()} missing (n_total={n_total})")
        parts.append(raw)
    seq = np.frombuffer(b"".join(parts), SEQ_DTYPE)
    return seq[first - (first // c) * c :]


@dataclass
class SealedBatch:
    """A batch closed for writing (:meth:`PartitionStore.seal`) and not yet written: its
    WriteBatch, what it changed (later batches read through it) and the state it stores."""

    wb: WriteBatch
    overlay: dict[bytes, bytes | None]
    state: bytes


class PartitionStore:
    """The writable state of one partition (only one process may hold it).

    Args:
        root: the store directory (one sub-directory per partition).
        partition: the lum.events partition number.
        cfg: the store config.
    Example:
        >>> store = PartitionStore(tmp, 0, StoreConfig())  # doctest: +SKIP
        >>> store.append(users, records, in_sequence); store.commit(next_offset=10)
    """

    def __init__(self, root: Path, partition: int, cfg: StoreConfig) -> None:
        self.partition = partition
        self.cfg = cfg
        self.path = partition_dir(root, partition)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.db = Rdict(str(self.path), _options(create=True))
        except Exception as exc:  # rocksdict raises plain Exception for lock/corruption
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        self._write_opts = WriteOptions()
        self._write_opts.sync = cfg.sync_writes
        self.state = PartitionState.from_bytes(self.db.get(STATE_KEY))
        # the state as of the last write (what a checkpoint of the database holds)
        self.committed_state = self.state.to_bytes()
        # sealed batches not yet written, oldest first; replaced whole (never mutated), so
        # a reader in another thread sees a batch either here or in the database
        self._sealed: tuple[SealedBatch, ...] = ()
        self._meta: dict[int, list[int]] = {}
        self._tail: dict[int, bytes] = {}
        self.last_lengths = np.empty(0, np.int64)  # sequence lengths of the last append's users
        self._begin()

    # -- batches ---------------------------------------------------------------------------
    def _begin(self) -> None:
        self.wb = WriteBatch(raw_mode=True)
        self.overlay: dict[bytes, bytes | None] = {}

    def put(self, key: bytes, value: bytes) -> None:
        self.wb.put(key, value)
        self.overlay[key] = value

    def delete(self, key: bytes) -> None:
        self.wb.delete(key)
        self.overlay[key] = None

    def commit(self) -> None:
        """Write the batch and the partition state atomically (fsynced when configured)."""
        try:
            self.write_sealed(self.seal())
        except Exception:
            self.drop_caches()
            raise

    def seal(self) -> SealedBatch:
        """Close the current batch with the partition state as it is now, and begin the
        next: the sealed batch is written later by :meth:`write_sealed` (in order), while
        the next batch is processed on top of it (reads see both, newest first)."""
        if len(self._meta) > _CACHE_LIMIT:
            self.drop_caches()  # every unwritten change is still in an overlay
        state = self.state.to_bytes()
        self.wb.put(STATE_KEY, state)
        sealed = SealedBatch(self.wb, self.overlay, state)
        self._sealed = (*self._sealed, sealed)
        self._begin()
        return sealed

    def write_sealed(self, sealed: SealedBatch) -> None:
        """Write the oldest sealed batch atomically (fsynced when configured). May run in
        another thread than the one processing the next batch (never two at once).

        Raises:
            StoreError: ``sealed`` is not the oldest unwritten batch.
        """
        if not self._sealed or self._sealed[0] is not sealed:
            raise StoreError(f"partition {self.partition}: sealed batches written out of order")
        self.db.write(sealed.wb, self._write_opts)
        self.committed_state = sealed.state
        self._sealed = self._sealed[1:]

    @property
    def pending(self) -> int:
        """Sealed batches not yet written."""
        return len(self._sealed)

    def abort(self) -> None:
        """Forget every unwritten batch (caches may hold their effects, so drop them too)."""
        self.drop_caches()
        self.state = PartitionState.from_bytes(self.db.get(STATE_KEY))
        self._sealed = ()
        self._begin()

    def _layers(self) -> list[dict[bytes, bytes | None]]:
        """Unwritten changes, newest first: the current batch, then the sealed ones."""
        return [self.overlay, *(s.overlay for s in reversed(self._sealed))]

    def _get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """Values of ``keys`` as this process sees them: unwritten batches, then RocksDB."""
        layers = self._layers()
        out: list[bytes | None] = [None] * len(keys)
        missing: list[int] = []
        for i, k in enumerate(keys):
            for layer in layers:
                if k in layer:
                    out[i] = layer[k]
                    break
            else:
                missing.append(i)
        if missing:
            got = multi_get(self.db, [keys[i] for i in missing])
            for i, raw in zip(missing, got, strict=True):
                out[i] = raw
        return out

    def _merged_overlay(self) -> dict[bytes, bytes | None]:
        merged: dict[bytes, bytes | None] = {}
        for layer in reversed(self._layers()):
            merged.update(layer)
        return merged

    def drop_caches(self) -> None:
        self._meta.clear()
        self._tail.clear()

    # -- sequences -------------------------------------------------------------------------
    def _load_meta(self, users: np.ndarray) -> list[list[int]]:
        want = [int(u) for u in users if int(u) not in self._meta]
        if want:
            for u, raw in zip(want, self._get_many([meta_key(u) for u in want]), strict=True):
                self._meta[u] = list(_META.unpack(raw)) if raw else [0, 0, 0] + [0] * MAX_ACTIONS
        return [self._meta[int(u)] for u in users]

    def append(self, users: np.ndarray, records: np.ndarray, in_sequence: np.ndarray) -> np.ndarray:
        """Apply one batch of valid events (in offset order) to the users' sequences.

        Args:
            users: (n,) int64 stable user ids.
            records: (n,) SEQ_DTYPE, the events.
            in_sequence: (n,) bool, events that join the sequence (others only count).
        Returns:
            (n,) int64: for each event, the user's sequence length just before it, i.e.
            the history position an impression at that event sees (no leakage).
        """
        n = users.shape[0]
        if n == 0:
            return np.empty(0, np.int64)
        order = np.argsort(users, kind="stable")
        su, srec, sin = users[order], records[order], in_sequence[order].astype(np.int64)
        uniq, starts, counts = np.unique(su, return_index=True, return_counts=True)
        metas = self._load_meta(uniq)
        n0 = np.fromiter((m[0] for m in metas), np.int64, len(metas))
        excl = np.cumsum(sin) - sin
        within = excl - np.repeat(excl[starts], counts)
        positions = np.empty(n, np.int64)
        positions[order] = np.repeat(n0, counts) + within
        c, keep = self.cfg.chunk_events, self.cfg.seq_len
        need_tail = [
            int(u)
            for u, m in zip(uniq, metas, strict=True)
            if m[0] % c and int(u) not in self._tail
        ]
        if need_tail:
            got = self._get_many([chunk_key(u, self._meta[u][0] // c) for u in need_tail])
            for u, raw in zip(need_tail, got, strict=True):
                if raw is None:
                    raise StoreError(f"partition {self.partition}: user {u} tail chunk missing")
                self._tail[u] = raw
        ts_lo = np.minimum.reduceat(srec["ts"], starts).tolist()
        ts_hi = np.maximum.reduceat(srec["ts"], starts).tolist()
        n_new_seq = np.add.reduceat(sin, starts).tolist()
        dense = np.repeat(np.arange(len(uniq)), counts)
        acts = np.bincount(
            dense * MAX_ACTIONS + srec["action"].astype(np.int64), minlength=len(uniq) * MAX_ACTIONS
        ).reshape(len(uniq), MAX_ACTIONS)
        seq_rows = srec[sin.astype(bool)]
        seq_at = 0
        new_users = 0
        for i, (user, counts_i) in enumerate(zip(uniq.tolist(), acts.tolist(), strict=True)):
            meta = metas[i]
            first_seen = not any(meta[3:])
            new_users += first_seen
            meta[3:] = [a + b for a, b in zip(meta[3:], counts_i, strict=True)]
            meta[1] = ts_lo[i] if first_seen else min(meta[1], ts_lo[i])
            meta[2] = max(meta[2], ts_hi[i])
            k_new = n_new_seq[i]
            if k_new:
                new = seq_rows[seq_at : seq_at + k_new]
                seq_at += k_new
                n_old = meta[0]
                data = (self._tail.get(user, b"") if n_old % c else b"") + new.tobytes()
                k = n_old // c
                for off in range(0, len(data), c * _ISZ):
                    self.put(chunk_key(user, k), data[off : off + c * _ISZ])
                    k += 1
                n_new = n_old + k_new
                for dead in range(max(0, n_old - keep) // c, max(0, n_new - keep) // c):
                    self.delete(chunk_key(user, dead))
                rest = (n_new % c) * _ISZ
                self._tail[user] = data[len(data) - rest :] if rest else b""
                meta[0] = n_new
            self.put(meta_key(user), _META.pack(*meta))
        self.state.bump("users", new_users)
        self.last_lengths = np.minimum([m[0] for m in metas], keep)
        return positions

    def n_total(self, user: int) -> int:
        return self._load_meta(np.array([user], np.int64))[0][0]

    def sequence(self, user: int) -> np.ndarray:
        return sequence_from(self.db, user, self.cfg, self.n_total(user), self._merged_overlay())

    def history(
        self, users: np.ndarray, positions: np.ndarray, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``length`` sequence events before ``positions`` for each (user, position).

        Reads only the chunks that cover the windows (this batch's writes included).
        Returns (lengths (n,) int32, events (sum(lengths),) SEQ_DTYPE), oldest first.
        """
        n = users.shape[0]
        if n == 0 or length == 0:
            return np.zeros(n, np.int32), np.empty(0, SEQ_DTYPE)
        c, keep = self.cfg.chunk_events, self.cfg.seq_len
        uniq, inv = np.unique(users, return_inverse=True)
        totals = np.fromiter((m[0] for m in self._load_meta(uniq)), np.int64, len(uniq))
        first_avail = (np.maximum(totals - keep, 0) // c) * c
        want = np.maximum(positions - length, 0)
        lo = np.maximum(want, first_avail[inv])
        self.state.bump("history_truncated", int((lo > want).sum()))
        lens = np.maximum(positions - lo, 0)
        total = int(lens.sum())
        if total == 0:
            return lens.astype(np.int32), np.empty(0, SEQ_DTYPE)
        starts = np.repeat(np.cumsum(lens) - lens, lens)
        q = np.repeat(lo, lens) + (np.arange(total) - starts)  # sequence positions
        dense_user = np.repeat(inv.astype(np.int64), lens)
        pair = dense_user * (1 << 32) + q // c
        pairs, pair_inv = np.unique(pair, return_inverse=True)
        keys = [chunk_key(int(uniq[p >> 32]), int(p & 0xFFFFFFFF)) for p in pairs.tolist()]
        buf = np.zeros((len(keys), c), SEQ_DTYPE)
        for i, (k, raw) in enumerate(zip(keys, self._get_many(keys), strict=True)):
            if raw is None:
                raise StoreError(f"partition {self.partition}: chunk {k.hex()} missing")
            chunk = np.frombuffer(raw, SEQ_DTYPE)
            buf[i, : len(chunk)] = chunk
        return lens.astype(np.int32), buf[pair_inv, q % c]

    # -- blobs and scans -------------------------------------------------------------------
    def new_blob(self, prefix: bytes, value: bytes) -> int:
        number = self.state.blob_no
        self.state.blob_no += 1
        self.put(blob_key(prefix, number), value)
        return number

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        it = self.db.iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key, it.value()
            it.next()

    def live_bytes(self) -> int:
        """RocksDB's estimate of the live data size of this partition."""
        return int(self.db.property_int_value("rocksdb.estimate-live-data-size") or 0)

    def close(self) -> None:
        self.db.close()


class StoreReader:
    """Read-only access for other processes (serving, backbone refresh) while workers write.

    Opens each partition as a RocksDB *secondary* instance; :meth:`refresh` catches up with
    the writers (call it every ``cfg.reader_refresh_s``; that is the reader's lag).
    """

    def __init__(self, root: Path, cfg: StoreConfig, scratch: Path) -> None:
        self.cfg = cfg
        self.dbs: dict[int, Rdict] = {}
        self._scratch = scratch
        for path in sorted(root.glob("p[0-9]*")):
            part = int(path.name[1:])
            sec = scratch / path.name
            sec.mkdir(parents=True, exist_ok=True)
            try:
                self.dbs[part] = Rdict(
                    str(path), _options(create=False), access_type=AccessType.secondary(str(sec))
                )
            except Exception as exc:
                raise StoreError(f"cannot open {path} for reading: {exc}") from None

    def refresh(self) -> None:
        for db in self.dbs.values():
            db.try_catch_up_with_primary()

    def meta(self, user: int) -> tuple[int, tuple[int, ...]] | None:
        key = meta_key(user)
        for part, db in self.dbs.items():
            raw = db.get(key)
            if raw is not None:
                return part, _META.unpack(raw)
        return None

    def sequence(self, user: int) -> np.ndarray:
        found = self.meta(user)
        if found is None:
            return np.empty(0, SEQ_DTYPE)
        part, meta = found
        return sequence_from(self.dbs[part], user, self.cfg, meta[0])

    def states(self) -> dict[int, PartitionState]:
        return {p: PartitionState.from_bytes(db.get(STATE_KEY)) for p, db in self.dbs.items()}

    def users(self) -> Iterator[tuple[int, int, tuple[int, ...]]]:
        """Every (partition, user, meta) in the store."""
        for part, db in self.dbs.items():
            it = db.iter()
            it.seek(b"m")
            while it.valid() and it.key()[:1] == b"m":
                yield part, _USER.unpack(it.key()[1:])[0], _META.unpack(it.value())
                it.next()

    def sequences(self) -> Iterator[tuple[int, np.ndarray]]:
        """(user, sequence oldest first) for every user: the backbone's SequenceSource."""
        for part, user, meta in self.users():
            yield user, sequence_from(self.dbs[part], user, self.cfg, meta[0])

    def watermark(self) -> int:
        """The newest event time applied to any partition (0 when empty)."""
        return max((max(s.watermark, 0) for s in self.states().values()), default=0)

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()
        shutil.rmtree(self._scratch, ignore_errors=True)


@contextlib.contextmanager
def read_store(root: Path, cfg: StoreConfig) -> Iterator[StoreReader]:
    """A :class:`StoreReader` of the partition stores under ``root`` for the ``with`` block,
    on a scratch directory of its own (removed after); works while workers write.

    Raises:
        StoreError: ``root`` holds no partition store, or one cannot be opened.
    """
    if not root.is_dir() or not any(root.glob("p[0-9]*")):
        raise StoreError(f"no store at {root} (a worker or a backfill writes one)")
    scratch = Path(tempfile.mkdtemp(prefix="lumstream-reader-"))
    try:
        reader = StoreReader(root, cfg, scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    try:
        yield reader
    finally:
        reader.close()
