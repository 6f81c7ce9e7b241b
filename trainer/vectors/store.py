"""Condition-query vectors per user: RocksDB (local readers) and lum.cq (everyone else).

The backbone refresh job is the only writer; serving and the ranker read. One record per
user, the same bytes in RocksDB and as the value of the compacted lum.cq topic (key =
the user's stable id in decimal):

    magic b"LCQ1" | int64 version | int64 computed_ms | int32 n | int32 d
    | n x int64 condition ids | n x d float32 vectors (row i = condition i)

Vectors carry the backbone version and the time they were computed, so a reader can tell
stale vectors (``time() - lumstream_backbone_vectors_timestamp_seconds``) and never mixes versions
silently.
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from rocksdict import AccessType, Options, Rdict, WriteBatch, WriteOptions

_HEADER = struct.Struct("<4sqqii")
MAGIC = b"LCQ1"
_USER = struct.Struct(">q")
STATE_KEY = b"P"


class VectorFormatError(ValueError):
    """Bytes that are not a condition-query vector record."""


@dataclass(frozen=True)
class UserVectors:
    """One user's condition-query vectors.

    Args:
        version: the backbone version number that computed them.
        computed_ms: when (wall clock, ms).
        conditions: (N,) int64 stable condition ids.
        vectors: (N, D) float32, row i for ``conditions[i]``.
    """

    version: int
    computed_ms: int
    conditions: np.ndarray
    vectors: np.ndarray


def encode_vectors(v: UserVectors) -> bytes:
    n, d = v.vectors.shape
    return b"".join(
        (
            _HEADER.pack(MAGIC, v.version, v.computed_ms, n, d),
            v.conditions.astype("<i8", copy=False).tobytes(),
            v.vectors.astype("<f4", copy=False).tobytes(),
        )
    )


def decode_vectors(raw: bytes) -> UserVectors:
    if len(raw) < _HEADER.size:
        raise VectorFormatError(f"vector record of {len(raw)} bytes is shorter than its header")
    magic, version, computed, n, d = _HEADER.unpack_from(raw)
    if magic != MAGIC or n < 0 or d < 0:
        raise VectorFormatError(f"not a condition-query vector record (magic {magic!r})")
    want = _HEADER.size + n * 8 + n * d * 4
    if len(raw) != want:
        raise VectorFormatError(f"vector record is {len(raw)} bytes, header says {want}")
    conds = np.frombuffer(raw, "<i8", n, _HEADER.size)
    vecs = np.frombuffer(raw, "<f4", n * d, _HEADER.size + n * 8).reshape(n, d)
    return UserVectors(version, computed, conds, vecs)


def _key(user: int) -> bytes:
    return b"u" + _USER.pack(user)


class VectorStore:
    """The writer's side (one process: the refresh job).

    Args:
        root: directory of the RocksDB database.
        sync: fsync every write batch.
    """

    def __init__(self, root: Path, *, sync: bool = True) -> None:
        root.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self.db = Rdict(str(root), opts)
        self._wo = WriteOptions()
        self._wo.sync = sync

    def write(
        self,
        users: np.ndarray,
        version: int,
        computed_ms: int,
        conditions: np.ndarray,
        vectors: np.ndarray,
    ) -> list[tuple[bytes, bytes]]:
        """Store (U, N, D) vectors for ``users``; returns the (key, value) records for lum.cq."""
        wb = WriteBatch(raw_mode=True)
        out = []
        for user, vec in zip(users.tolist(), vectors, strict=True):
            value = encode_vectors(UserVectors(version, computed_ms, conditions, vec))
            wb.put(_key(user), value)
            out.append((str(user).encode(), value))
        self.db.write(wb, self._wo)
        return out

    def get(self, user: int) -> UserVectors | None:
        raw = self.db.get(_key(user))
        return None if raw is None else decode_vectors(raw)

    def state(self) -> dict[str, int]:
        raw = self.db.get(STATE_KEY)
        return {} if raw is None else dict(orjson.loads(raw))

    def set_state(self, **values: int) -> None:
        self.db.put(STATE_KEY, orjson.dumps(self.state() | values), self._wo)

    def close(self) -> None:
        self.db.close()


class VectorReader:
    """Read-only access for serving and the ranker while the refresh job writes.

    A RocksDB secondary instance: :meth:`refresh` catches up with the writer.
    """

    def __init__(self, root: Path, scratch: Path) -> None:
        scratch.mkdir(parents=True, exist_ok=True)
        self._scratch = scratch
        self.db = Rdict(
            str(root), Options(raw_mode=True), access_type=AccessType.secondary(str(scratch))
        )

    def refresh(self) -> None:
        self.db.try_catch_up_with_primary()

    def get(self, user: int) -> UserVectors | None:
        raw = self.db.get(_key(user))
        return None if raw is None else decode_vectors(raw)

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self._scratch, ignore_errors=True)
