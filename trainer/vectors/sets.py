"""The ranker's input from the LUM backbone: condition-query vectors o_q and item vectors e_i.

A :class:`LumVectors` is one backbone version's knowledge (LUM step 2): for every user with
a sequence, N vectors o_q (one per query condition, L2-normalised) and for every item of the
version its token embedding e_i. Lookups are vectorised (sorted ids + ``searchsorted``); an
id without a vector, or a vector with a non-finite value, is reported as not found and the
ranker uses its learned default with a missing flag.

Sets live on disk as ``<dir>/lum_vectors.safetensors`` (weights-only: arrays and a string
metadata map, never pickle). :class:`VectorsWatcher` follows a directory of such sets named
after backbone versions: it loads the newest, and when the loaded one disappears (retention
of old backbone versions) it keeps using the vectors in memory, logs once and counts it.

Example:
    >>> v = LumVectors("v1", np.array([10, 11]), np.array([7]), np.ones((1, 2, 4)),
    ...                np.array([3]), np.ones((1, 4)))
    >>> v.condition_index(np.array([11, 12])).tolist(), v.lookup_items(np.array([3, 4]))[1].tolist()
    ([1, -1], [True, False])
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monitoring.metrics import Metrics

log = logging.getLogger(__name__)

FILE = "lum_vectors.safetensors"
FORMAT = "1"


class VectorsError(RuntimeError):
    """A vector set that cannot be used; the message says which and why."""


def _sorted(ids: np.ndarray, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(ids, kind="stable")
    ids, vecs = ids[order], vecs[order]
    finite = np.isfinite(vecs).all(axis=tuple(range(1, vecs.ndim)))
    return ids, vecs, finite


class LumVectors:
    """o_q per (user, query condition) and e_i per item, of one backbone version.

    Args:
        version: the backbone version the vectors came from (``vN``).
        query_conditions: (N,) or (N, F) condition ids (``stable_id``) of the o_q columns.
        users: (U,) distinct user ids.
        user_vectors: (U, N, D) o_q.
        items: (I,) distinct item ids.
        item_vectors: (I, D) e_i.
        condition_fields: sample columns forming a condition (``cond``, ``cat``; F of them).
        computed_at_ms: when the vectors were computed.
    Raises:
        VectorsError: shapes that do not fit together, duplicate ids.
    """

    def __init__(
        self,
        version: str,
        query_conditions: np.ndarray,
        users: np.ndarray,
        user_vectors: np.ndarray,
        items: np.ndarray,
        item_vectors: np.ndarray,
        condition_fields: Sequence[str] = ("cond",),
        computed_at_ms: int = 0,
    ) -> None:
        q = np.asarray(query_conditions, np.int64)
        self.query_conditions = q[:, None] if q.ndim == 1 else q
        self.condition_fields = tuple(condition_fields)
        uv = np.asarray(user_vectors, np.float32)
        iv = np.asarray(item_vectors, np.float32)
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        n, f = self.query_conditions.shape
        if f != len(self.condition_fields):
            raise VectorsError(f"query conditions have {f} fields, names {self.condition_fields}")
        if uv.ndim != 3 or uv.shape[:2] != (len(users), n):
            raise VectorsError(f"user vectors {uv.shape}: expected ({len(users)}, {n}, D)")
        if iv.ndim != 2 or len(iv) != len(items) or iv.shape[1] != uv.shape[2]:
            raise VectorsError(f"item vectors {iv.shape}: expected ({len(items)}, {uv.shape[2]})")
        self.version, self.computed_at_ms = version, int(computed_at_ms)
        self.users, self.user_vectors, self._user_ok = _sorted(users, uv)
        self.items, self.item_vectors, self._item_ok = _sorted(items, iv)
        for name, ids in (("user", self.users), ("item", self.items)):
            if len(ids) > 1 and bool((ids[1:] == ids[:-1]).any()):
                raise VectorsError(f"duplicate {name} ids in vector set {version}")
        self.non_finite = {
            "user": int((~self._user_ok).sum()),
            "item": int((~self._item_ok).sum()),
        }

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    @property
    def n_conditions(self) -> int:
        return int(self.query_conditions.shape[0])

    @staticmethod
    def _find(
        sorted_ids: np.ndarray, ok: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if len(sorted_ids) == 0:
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        pos = np.searchsorted(sorted_ids, ids).clip(max=len(sorted_ids) - 1)
        found = (sorted_ids[pos] == ids) & ok[pos]
        return pos, found

    def lookup_users(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(o (B, N, D) float32, zeros where not found; found (B,) bool)."""
        pos, found = self._find(self.users, self._user_ok, np.asarray(users, np.int64))
        out = np.zeros((len(pos), self.n_conditions, self.dim), np.float32)
        out[found] = self.user_vectors[pos[found]]
        return out, found

    def lookup_items(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(e (B, D) float32, zeros where not found; found (B,) bool)."""
        pos, found = self._find(self.items, self._item_ok, np.asarray(items, np.int64))
        out = np.zeros((len(pos), self.dim), np.float32)
        out[found] = self.item_vectors[pos[found]]
        return out, found

    def has_users(self, users: np.ndarray) -> np.ndarray:
        """(B,) bool: the user has a (finite) vector; no vectors are copied."""
        return self._find(self.users, self._user_ok, np.asarray(users, np.int64))[1]

    def has_items(self, items: np.ndarray) -> np.ndarray:
        """(B,) bool: the item has a (finite) vector."""
        return self._find(self.items, self._item_ok, np.asarray(items, np.int64))[1]

    def condition_index(self, conds: np.ndarray) -> np.ndarray:
        """(B,) column of each sample's condition among the query conditions, -1 if none.

        Args:
            conds: (B,) condition ids (one field) or (B, F) in ``condition_fields`` order.
        """
        c = np.asarray(conds, np.int64)
        c = c[:, None] if c.ndim == 1 else c
        match = (c[:, None, :] == self.query_conditions[None, :, :]).all(axis=2)  # (B, N)
        return np.where(match.any(axis=1), match.argmax(axis=1), -1).astype(np.int64)

    # -- files -----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``directory/lum_vectors.safetensors`` atomically (temporary file + rename)."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / FILE
        tmp = directory / f".{FILE}.{os.getpid()}.tmp"
        save_file(
            {
                "query_conditions": self.query_conditions,
                "users": self.users,
                "user_vectors": self.user_vectors,
                "items": self.items,
                "item_vectors": self.item_vectors,
            },
            str(tmp),
            metadata={
                "format": FORMAT,
                "version": self.version,
                "condition_fields": ",".join(self.condition_fields),
                "computed_at_ms": str(self.computed_at_ms),
            },
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LumVectors:
        """Read a set written by :meth:`save` (a directory or the file itself).

        Raises:
            VectorsError: missing, unreadable or inconsistent file.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        file = path / FILE if path.is_dir() else path
        try:
            with safe_open(str(file), framework="numpy") as fh:
                meta = fh.metadata() or {}
                arrays = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as exc:
            raise VectorsError(f"{file}: unreadable vector set ({exc})") from None
        if meta.get("format") != FORMAT:
            raise VectorsError(f"{file}: format {meta.get('format')!r}, this build reads {FORMAT}")
        try:
            return cls(
                meta.get("version", file.parent.name),
                arrays["query_conditions"],
                arrays["users"],
                arrays["user_vectors"],
                arrays["items"],
                arrays["item_vectors"],
                tuple(meta.get("condition_fields", "cond").split(",")),
                int(meta.get("computed_at_ms", "0")),
            )
        except KeyError as exc:
            raise VectorsError(f"{file}: array {exc} missing") from None


def computed_at_ms(path: str | Path) -> int:
    """When the set at ``path`` (a directory or the file) was computed, from its metadata
    alone; 0 when it cannot be read."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    file = path / FILE if path.is_dir() else path
    try:
        with safe_open(str(file), framework="numpy") as fh:
            return int((fh.metadata() or {}).get("computed_at_ms", "0"))
    except (SafetensorError, OSError, ValueError):
        return 0


_VERSION = re.compile(r"^v([0-9]+)$")


class VectorsWatcher:
    """The newest vector set under ``root``, reloaded when a newer one appears.

    ``root`` is either one set (holding ``lum_vectors.safetensors``) or a directory of sets
    named ``vN`` (newest = highest N). A set that fails to load is skipped (logged, counted).
    When the loaded set's directory vanishes, the vectors in memory stay in use: logged once,
    counted in ``ranker_backbone_missing``.

    Args:
        root: see above.
        poll_s: least seconds between directory scans.
        metrics: counters and the version-in-use gauge.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        root: str | Path,
        poll_s: float = 30.0,
        metrics: Metrics | None = None,
        clock: object = time.monotonic,
    ) -> None:
        self.root, self.poll_s, self.metrics = Path(root), poll_s, metrics
        self._clock = clock
        self.current: LumVectors | None = None
        self.path: Path | None = None
        self.missing = False
        self._last_scan = -float("inf")
        self.poll(force=True)

    def _candidates(self) -> list[Path]:
        if (self.root / FILE).is_file():
            return [self.root]
        if not self.root.is_dir():
            return []
        found = [
            (int(m.group(1)), p)
            for p in self.root.iterdir()
            if (m := _VERSION.match(p.name)) and (p / FILE).is_file()
        ]
        return [p for _, p in sorted(found, reverse=True)]

    def poll(self, force: bool = False) -> LumVectors | None:
        """Scan (at most every ``poll_s``) and return the vectors in use."""
        now = self._clock()  # type: ignore[operator]
        if not force and now - self._last_scan < self.poll_s:
            return self.current
        self._last_scan = now
        if self.path is not None and not (self.path / FILE).is_file() and not self.missing:
            self.missing = True
            log.warning(
                "backbone vector set %s disappeared; keeping the %s vectors loaded in memory",
                self.path,
                self.current.version if self.current else "?",
            )
            if self.metrics is not None:
                self.metrics.ranker_backbone_missing.inc()
        for cand in self._candidates():
            if cand == self.path:
                break
            try:
                vecs = LumVectors.load(cand)
            except VectorsError as exc:
                log.warning("skipping vector set %s: %s", cand, exc)
                if self.metrics is not None:
                    self.metrics.ranker_vector_load_errors.inc()
                continue
            if self.current is not None and _number(vecs.version) < _number(self.current.version):
                break
            self.current, self.path, self.missing = vecs, cand, False
            log.info("using LUM vectors of backbone %s from %s", vecs.version, cand)
            if self.metrics is not None and vecs.computed_at_ms > 0:
                self.metrics.ranker_vectors_time.set(vecs.computed_at_ms / 1000.0)
            break
        return self.current


def _number(version: str) -> int:
    m = _VERSION.match(version)
    return int(m.group(1)) if m else -1
