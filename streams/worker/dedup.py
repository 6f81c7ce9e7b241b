"""Dropping duplicate event ids inside a bounded event-time window.

An accepted event is a duplicate when an earlier accepted event of the same partition had
the same ``event_id`` (its 64-bit :func:`streams.worker.decode.event_hash`) and an event time no
older than ``wm - window`` where ``wm`` is the watermark just before the later event. The window
is persisted as one ``d`` blob per batch of (hash, ts) rows in the partition's store and
purged blob by blob, so memory and disk stay bounded by ``rate x window``.
"""

from __future__ import annotations

import numpy as np

from streams.worker.store import PartitionStore, blob_key

_SEEN_DTYPE = np.dtype([("hash", "<u8"), ("ts", "<i8")])


class DuplicateWindow:
    """The recent event ids of one partition.

    Args:
        store: the partition's store.
        window_ms: how far back in event time a duplicate is recognised.
    """

    def __init__(self, store: PartitionStore, window_ms: int) -> None:
        self.store = store
        self.window = window_ms
        self.seen: dict[int, int] = {}
        self.blobs: dict[int, tuple[np.ndarray, int]] = {}  # number -> (hashes, max ts)
        for key, raw in store.scan(b"d"):
            rows = np.frombuffer(raw, _SEEN_DTYPE)
            self._remember(int.from_bytes(key[1:], "big", signed=True), rows)

    def _remember(self, number: int, rows: np.ndarray) -> None:
        self.seen.update(zip(rows["hash"].tolist(), rows["ts"].tolist(), strict=True))
        self.blobs[number] = (rows["hash"], int(rows["ts"].max()))

    def duplicates(self, hashes: np.ndarray, ts: np.ndarray, wm_before: np.ndarray) -> np.ndarray:
        """(n,) bool: which of these events (in offset order) are duplicates."""
        dup = np.zeros(len(hashes), bool)
        if len(hashes) == 0:
            return dup
        hl = hashes.tolist()
        _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
        suspects = self.seen.keys() & set(hl)
        if not suspects and bool((counts == 1).all()):
            return dup
        repeated = {hl[i] for i in first[counts > 1].tolist()}
        suspects |= repeated
        local: dict[int, int] = {}
        for i in np.flatnonzero(np.isin(hashes, np.fromiter(suspects, np.uint64))).tolist():
            h, t, floor = hl[i], int(ts[i]), int(wm_before[i]) - self.window
            prev = local.get(h, self.seen.get(h))
            if prev is not None and prev >= floor:
                dup[i] = True
            else:
                local[h] = t
        return dup

    def add(self, hashes: np.ndarray, ts: np.ndarray) -> None:
        if len(hashes):
            rows = np.empty(len(hashes), _SEEN_DTYPE)
            rows["hash"], rows["ts"] = hashes, ts
            self._remember(self.store.new_blob(b"d", rows.tobytes()), rows)

    def purge(self, watermark: int) -> None:
        floor = watermark - self.window
        for number, (hashes, max_ts) in list(self.blobs.items()):
            if max_ts < floor:
                for h in hashes.tolist():
                    if self.seen.get(h, floor) < floor:
                        del self.seen[h]
                self.store.delete(blob_key(b"d", number))
                del self.blobs[number]
