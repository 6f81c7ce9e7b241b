"""The label join: impressions wait ``W`` ms of event time for a positive action.

Semantics (deterministic in the order of a partition's offsets, independent of how the
stream was cut into batches, so a replay of old logs yields the same samples as live):

- Each partition has a watermark ``wm`` = the largest event time seen so far.
- An impression *i* is open until ``wm > ts_i + W``; then it is emitted as a sample with
  label 1 if a positive action (``WorkerConfig.positive_actions``: click, purchase) on the
  same (user, item) arrived while it was open with ``ts_i <= ts_pos <= ts_i + W``, else 0.
  One positive labels every open impression of that (user, item) it falls inside.
- A positive that carries a request id (``features.request_id``, what the service returned
  with the list) labels only the impression of that request (same user and item): the
  click pairs with what was shown, at the position it was shown, not with an earlier or
  later showing of the same item. Without a request id, the (user, item) rule above.
- A positive that matches no open impression is counted as ``late`` when even an
  impression at its own time would already be closed (``ts + W < wm``), else as
  ``no_impression``. Either way it still joins the user's sequence.
- Samples are emitted in (``ts_i + W``, offset) order and numbered per partition.

State lives in the partition's RocksDB: each batch's impressions are one ``j`` blob
(``PENDING_DTYPE`` rows; a store from before request ids, ``join_format`` 1, has its blobs
rewritten with no request and no position when opened),
each batch's new labels one ``c`` blob of (blob, index) marks; a blob is deleted once all
its impressions are emitted. Restart rebuilds the open impressions from those blobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streams.worker.store import PartitionStore, blob_key

PENDING_DTYPE = np.dtype(
    [
        ("user", "<i8"),
        ("item", "<i8"),
        ("cond", "<i8"),
        ("cat", "<i8"),
        ("ts", "<i8"),
        ("offset", "<i8"),
        ("pos", "<i8"),  # the user's sequence length before the impression (history end)
        ("eid", "<u8"),
        ("label", "u1"),
        ("req", "<u8"),  # event_hash of features.request_id (0: none)
        ("slot", "<i4"),  # features.position: the rank it was shown at (-1: unknown)
        ("randomized", "u1"),  # features.randomized: shown in an exploration order
    ]
)
# the open impressions' rows before served-list features (join_format 1)
_V1_NAMES = ("user", "item", "cond", "cat", "ts", "offset", "pos", "eid", "label")
PENDING_DTYPE_V1 = np.dtype([(name, PENDING_DTYPE[name]) for name in _V1_NAMES])
JOIN_FORMAT = 2
_MARK_DTYPE = np.dtype([("blob", "<i8"), ("index", "<i8")])
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def pair_key(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """A 64-bit (user, item) key for candidate lookup (exact ids are re-checked)."""
    return (users.astype(np.uint64) * _GOLDEN) ^ items.astype(np.uint64)


@dataclass
class _Blob:
    number: int
    rows: np.ndarray  # PENDING_DTYPE, writable
    order: np.ndarray  # argsort of keys
    keys: np.ndarray  # sorted pair keys

    @classmethod
    def make(cls, number: int, rows: np.ndarray) -> _Blob:
        k = pair_key(rows["user"], rows["item"])
        order = np.argsort(k, kind="stable")
        return cls(number, rows, order, k[order])


@dataclass
class PositiveOutcome:
    matched: int  # positives that labelled at least one impression
    late: int
    no_impression: int


class LabelJoin:
    """Open impressions of one partition and their labels.

    Args:
        store: the partition's store (state blobs are written through its batch).
        window_ms: the label window W in event-time milliseconds.
    """

    def __init__(self, store: PartitionStore, window_ms: int) -> None:
        self.store = store
        self.window = window_ms
        self.blobs: dict[int, _Blob] = {}
        self.mark_blobs: dict[int, int] = {}  # c blob -> newest j blob it refers to
        upgrade = store.state.join_format < JOIN_FORMAT
        for key, raw in store.scan(b"j"):
            number = int.from_bytes(key[1:], "big", signed=True)
            if upgrade:  # a store written before request ids: no request, no position
                old = np.frombuffer(raw, PENDING_DTYPE_V1)
                rows = np.zeros(len(old), PENDING_DTYPE)
                for name in _V1_NAMES:
                    rows[name] = old[name]
                rows["slot"] = -1
                store.put(key, rows.tobytes())
            else:
                rows = np.frombuffer(raw, PENDING_DTYPE).copy()
            self.blobs[number] = _Blob.make(number, rows)
        if upgrade:  # the rewritten rows and the new format in one write, now
            store.state.join_format = JOIN_FORMAT
            store.commit()
        for key, raw in store.scan(b"c"):
            number = int.from_bytes(key[1:], "big", signed=True)
            marks = np.frombuffer(raw, _MARK_DTYPE)
            for blob, index in marks.tolist():
                if blob in self.blobs:
                    self.blobs[blob].rows["label"][index] = 1
            self.mark_blobs[number] = int(marks["blob"].max()) if len(marks) else -1

    @property
    def open_count(self) -> int:
        return sum(len(b.rows) for b in self.blobs.values())

    def add_impressions(self, rows: np.ndarray) -> None:
        if len(rows):
            number = self.store.new_blob(b"j", rows.tobytes())
            self.blobs[number] = _Blob.make(number, rows.copy())

    def add_positives(
        self,
        users: np.ndarray,
        items: np.ndarray,
        ts: np.ndarray,
        offsets: np.ndarray,
        wm_before: np.ndarray,
        reqs: np.ndarray | None = None,
    ) -> PositiveOutcome:
        """Label the open impressions that these positive actions fall inside.

        Args:
            reqs: (n,) uint64 request-id hashes of the positives (0: none); a positive with
                one matches only the impression of that request.
        """
        if len(users) == 0:
            return PositiveOutcome(0, 0, 0)
        keys = pair_key(users, items)
        if reqs is None:
            reqs = np.zeros(len(users), np.uint64)
        matched = np.zeros(len(users), bool)
        marks: list[tuple[int, int]] = []
        for blob in self.blobs.values():
            lo = np.searchsorted(blob.keys, keys, "left")
            hi = np.searchsorted(blob.keys, keys, "right")
            for j in np.flatnonzero(hi > lo).tolist():
                for idx in blob.order[lo[j] : hi[j]].tolist():
                    row = blob.rows[idx]
                    deadline = int(row["ts"]) + self.window
                    if (
                        row["user"] == users[j]
                        and row["item"] == items[j]
                        and row["offset"] < offsets[j]
                        and row["ts"] <= ts[j] <= deadline
                        and wm_before[j] <= deadline
                        and (reqs[j] == 0 or row["req"] == reqs[j])
                    ):
                        matched[j] = True
                        if not row["label"]:
                            blob.rows["label"][idx] = 1
                            marks.append((blob.number, idx))
        if marks:
            arr = np.array(marks, _MARK_DTYPE)
            number = self.store.new_blob(b"c", arr.tobytes())
            self.mark_blobs[number] = int(arr["blob"].max())
        late = (~matched) & (ts + self.window < wm_before)
        return PositiveOutcome(
            int(matched.sum()), int(late.sum()), int((~matched).sum() - late.sum())
        )

    def expire(
        self, wm_prev: int, new_blob: int | None, offsets: np.ndarray, wm_after: np.ndarray
    ) -> np.ndarray:
        """Impressions closed by this batch, in emission order.

        Args:
            wm_prev: the watermark before the batch.
            new_blob: this batch's impression blob (all of its closed rows are new).
            offsets / wm_after: the batch's applied offsets and the watermark after each.

        An impression closes at the first offset whose watermark passes its deadline (at
        its own offset when it arrived already late); samples are ordered by (closing
        offset, deadline, impression offset), a function of the stream alone.
        """
        wm_end = int(wm_after[-1])
        out = []
        for blob in list(self.blobs.values()):
            deadline = blob.rows["ts"] + self.window
            closed = deadline < wm_end
            if blob.number != new_blob:
                closed &= deadline >= wm_prev
            if closed.any():
                out.append(blob.rows[closed])
            if bool((deadline < wm_end).all()):
                self.store.delete(blob_key(b"j", blob.number))
                del self.blobs[blob.number]
        oldest = min(self.blobs, default=None)
        for number, newest_ref in list(self.mark_blobs.items()):
            if oldest is None or newest_ref < oldest:
                self.store.delete(blob_key(b"c", number))
                del self.mark_blobs[number]
        if not out:
            return np.empty(0, PENDING_DTYPE)
        rows = np.concatenate(out)
        deadline = rows["ts"] + self.window
        closes = np.maximum(offsets[np.searchsorted(wm_after, deadline, "right")], rows["offset"])
        return rows[np.lexsort((rows["offset"], deadline, closes))]
