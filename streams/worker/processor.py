"""Applying a batch of one partition's events: the single code path of live and backfill.

``PartitionProcessor.process`` takes raw Kafka-shaped records of one partition in offset
order and returns what must leave the process (sample blocks, dead letters). The caller
sends those, then calls :meth:`PartitionProcessor.commit`, which writes sequences, join
and duplicate state and the next offset in one RocksDB batch. A crash anywhere before
that write loses nothing (the batch is re-read from the stored offset) and doubles
nothing (records below the stored offset are skipped; re-sent samples carry the same
(partition, seq) so consumers drop them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monitoring.metrics import Metrics
from streams.config import EventConfig, StoreConfig, WorkerConfig
from streams.contracts.deadletters import Rejected
from streams.contracts.events import Reason
from streams.contracts.records import SEQ_DTYPE
from streams.contracts.samples import HIST_DTYPE, SAMPLE_DTYPE, SampleBlock
from streams.worker.decode import EventColumns, decode_batch, event_hashes
from streams.worker.dedup import DuplicateWindow
from streams.worker.join import PENDING_DTYPE, LabelJoin
from streams.worker.snapshots import Snapshots
from streams.worker.store import PartitionState, PartitionStore, StoreError

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    """This worker's clock, ms since the epoch."""
    return time.time_ns() // 1_000_000


OPEN_WAIT_S = 60.0  # how long a new owner waits for a revoked owner to release a store


@dataclass
class BatchResult:
    """What one batch produced; send these before :meth:`PartitionProcessor.commit`."""

    partition: int
    next_offset: int
    applied: int = 0
    skipped: int = 0  # redelivered records below the stored offset
    samples: SampleBlock | None = None
    dead_letters: list[Rejected] = field(default_factory=list)
    sequence_lengths: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


class PartitionProcessor:
    """The worker logic for one partition, over its :class:`PartitionStore`.

    Args:
        store: the opened partition store (its state says where to resume).
        cfg: worker settings (label window, actions, history length...).
        events: the event contract.
        metrics: where counters go.
    """

    def __init__(
        self,
        store: PartitionStore,
        cfg: WorkerConfig,
        events: EventConfig,
        metrics: Metrics,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.store = store
        self.clock_ms = clock_ms
        self.cfg = cfg
        self.events = events
        self.metrics = metrics
        self.partition = store.partition
        window_ms = int(cfg.label_window_s * 1000)
        if store.state.label_window_ms not in (-1, window_ms):
            raise ValueError(
                f"partition {self.partition}: label window changed from "
                f"{store.state.label_window_ms} ms to {window_ms} ms; open impressions were "
                "built with the old window (drain or rebuild the store first)"
            )
        store.state.label_window_ms = window_ms
        if cfg.history_len + store.cfg.chunk_events > store.cfg.seq_len:
            raise ValueError(
                f"worker.history_len ({cfg.history_len}) + store.chunk_events "
                f"({store.cfg.chunk_events}) must not exceed store.seq_len "
                f"({store.cfg.seq_len}): a sample's history must fit in the kept sequence"
            )
        self.join = LabelJoin(store, window_ms)
        self.dedup = DuplicateWindow(store, int(cfg.dedup_window_s * 1000))
        actions = events.actions
        self._action_index = {a: i for i, a in enumerate(actions)}
        self._in_seq = np.array(
            [a in cfg.sequence_actions or not cfg.sequence_actions for a in actions]
        )
        self._positive = np.array([a in cfg.positive_actions for a in actions])
        self._impression = self._action_index.get(cfg.impression_action, -1)

    @property
    def next_offset(self) -> int:
        return self.store.state.next_offset

    def process(
        self,
        offsets: Sequence[int],
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        now_ms: int | Sequence[int] | None = None,
    ) -> BatchResult:
        """Validate and apply one batch of this partition's records (offset order).

        Args:
            values: the record values; a null value (a Kafka tombstone) is rejected as
                malformed, with an empty original.
            now_ms: the records' Kafka timestamps (one value or one per record), if any;
                one of 0 or less (no timestamp) counts as absent. The future bound on
                ``ts`` counts from the earlier of a record's timestamp
                and this worker's clock: the record timestamp keeps a re-run's decisions
                the same as the first run's (it is part of the record), and the clock stops
                a producer whose clock is ahead, or forged, from poisoning the partition
                with a far-future event (its watermark would then jump ahead and every
                later event be late).
        """
        if None in values:
            values = [b"" if v is None else v for v in values]
        payloads: Sequence[bytes] = values  # type: ignore[assignment]
        state = self.store.state
        start = 0
        while start < len(offsets) and offsets[start] < state.next_offset:
            start += 1
        result = BatchResult(self.partition, state.next_offset, skipped=start)
        if start == len(offsets):
            return result
        wall = self.clock_ms()
        now: int | np.ndarray
        if now_ms is None:
            now = wall
        elif isinstance(now_ms, int):
            now = min(now_ms, wall) if now_ms > 0 else wall
        else:  # a record without a timestamp (-1, message format v0) is bounded by the clock
            stamps = np.asarray(now_ms[start:], np.int64)
            now = np.where(stamps > 0, np.minimum(stamps, wall), wall)
        cols, rejected = decode_batch(payloads[start:], self.events, now)
        dead = result.dead_letters
        for r in rejected:
            i = start + r.index
            dead.append(Rejected(payloads[i], keys[i], r.reason, r.detail, offsets[i]))
        result.next_offset = offsets[-1] + 1
        state.next_offset = result.next_offset
        if len(cols.index):
            self._apply(cols, start, result, payloads, keys, offsets)
        dead.sort(key=lambda d: d.offset)  # rejected here are counted by the dead-letter writer
        state.bump("rejected", len(dead))
        return result

    def _apply(
        self,
        cols: EventColumns,
        start: int,
        result: BatchResult,
        values: Sequence[bytes],
        keys: Sequence[bytes | None],
        offsets: Sequence[int],
    ) -> None:
        state = self.store.state
        where = cols.index + start
        off = np.asarray(offsets, np.int64)[where]
        users, items, ts, action = cols.user, cols.item, cols.ts, cols.action
        hashes = event_hashes(cols.event_id)
        wm0 = state.watermark
        wm_after = np.maximum.accumulate(np.maximum(ts, wm0))
        wm_before = np.concatenate(([wm0], wm_after[:-1]))
        off_all = off
        dup = self.dedup.duplicates(hashes, ts, wm_before)
        if dup.any():
            for i in where[dup].tolist():
                result.dead_letters.append(
                    Rejected(
                        values[i],
                        keys[i],
                        Reason.DUPLICATE.value,
                        "event_id already applied inside the duplicate window",
                        offsets[i],
                    )
                )
            keep = ~dup
            off, users, items, ts, action, hashes = (
                off[keep],
                users[keep],
                items[keep],
                ts[keep],
                action[keep],
                hashes[keep],
            )
            cond, cat = cols.cond[keep], cols.cat[keep]
            req, slot, rnd = cols.req[keep], cols.slot[keep], cols.randomized[keep]
            wm_before = wm_before[keep]
            state.bump("duplicates", int(dup.sum()))
            self.metrics.duplicates_dropped.inc(int(dup.sum()))
        else:
            cond, cat = cols.cond, cols.cat
            req, slot, rnd = cols.req, cols.slot, cols.randomized
        wm_end = int(wm_after[-1])  # every valid event moves it, duplicates included
        new_blob = None
        if len(off):
            served = (req, slot, rnd)
            new_blob = self._append(
                off, users, items, ts, action, hashes, cond, cat, wm_before, served
            )
        closed = self.join.expire(wm0, new_blob, off_all, wm_after)
        if len(closed):
            result.samples = self._samples(closed)
        self.dedup.add(hashes, ts)
        self.dedup.purge(wm_end)
        state.watermark = wm_end
        state.bump("applied", len(off))
        result.applied = len(off)
        if len(off):
            result.sequence_lengths = self.store.last_lengths

    def _append(
        self,
        off: np.ndarray,
        users: np.ndarray,
        items: np.ndarray,
        ts: np.ndarray,
        action: np.ndarray,
        hashes: np.ndarray,
        cond: np.ndarray,
        cat: np.ndarray,
        wm_before: np.ndarray,
        served: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> int | None:
        """Sequences, open impressions and positive labels of the accepted events; returns
        this batch's impression blob (None without impressions)."""
        state = self.store.state
        recs = np.empty(len(off), SEQ_DTYPE)
        recs["ts"], recs["item"], recs["action"] = ts, items, action
        recs["cond"], recs["cat"] = cond, cat
        positions = self.store.append(users, recs, self._in_seq[action])
        imp = action == self._impression
        new_blob = None
        if imp.any():
            rows = np.zeros(int(imp.sum()), PENDING_DTYPE)
            for name in ("item", "cond", "cat", "ts"):
                rows[name] = recs[name][imp]
            rows["user"], rows["offset"] = users[imp], off[imp]
            rows["pos"], rows["eid"] = positions[imp], hashes[imp]
            req, slot, rnd = served
            rows["req"], rows["slot"], rows["randomized"] = req[imp], slot[imp], rnd[imp]
            new_blob = self.store.state.blob_no
            self.join.add_impressions(rows)
        pos = self._positive[action]
        if pos.any():
            outcome = self.join.add_positives(
                users[pos], items[pos], ts[pos], off[pos], wm_before[pos], served[0][pos]
            )
            state.bump("positives_matched", outcome.matched)
            state.bump("positives_late", outcome.late)
            state.bump("positives_no_impression", outcome.no_impression)
            self.metrics.unmatched_positives.labels(reason="late").inc(outcome.late)
            self.metrics.unmatched_positives.labels(reason="no_impression").inc(
                outcome.no_impression
            )
        return new_blob

    def _samples(self, closed: np.ndarray) -> SampleBlock:
        state = self.store.state
        n = len(closed)
        rows = np.empty(n, SAMPLE_DTYPE)
        rows["seq"] = np.arange(state.sample_seq, state.sample_seq + n)
        for name in (
            "user",
            "item",
            "cond",
            "cat",
            "ts",
            "offset",
            "eid",
            "label",
            "slot",
            "randomized",
        ):
            rows[name] = closed[name]
        state.sample_seq += n
        lens, events = self.store.history(closed["user"], closed["pos"], self.cfg.history_len)
        lens, events = _before_in_time(lens, events, closed["ts"], state)
        hist = np.empty(len(events), HIST_DTYPE)
        for name in ("item", "cond", "cat", "ts", "action"):
            hist[name] = events[name]
        positives = int(rows["label"].sum())
        state.bump("samples_positive", positives)
        state.bump("samples_negative", n - positives)
        self.metrics.samples_emitted.labels(label="1").inc(positives)
        self.metrics.samples_emitted.labels(label="0").inc(n - positives)
        return SampleBlock(self.partition, rows, lens, hist)

    def commit(self) -> None:
        self.store.commit()

    def close(self) -> None:
        self.store.close()


def _before_in_time(
    lens: np.ndarray, events: np.ndarray, ts: np.ndarray, state: PartitionState
) -> tuple[np.ndarray, np.ndarray]:
    """The history events that also lie before their impression in event time. A history
    is the sequence before the impression's arrival; an impression that arrives late (a
    served list shipped after its clicks, a delayed producer) would otherwise carry events
    from after it, even the click it is labelled with. Dropped events are counted in the
    partition counter ``history_after_impression``."""
    owner = np.repeat(np.arange(len(lens)), lens)
    keep = events["ts"] <= ts[owner]
    if keep.all():
        return lens, events
    state.bump("history_after_impression", int((~keep).sum()))
    return np.bincount(owner[keep], minlength=len(lens)).astype(np.int32), events[keep]


def _open_store(
    root: Path, partition: int, store_cfg: StoreConfig, wait_lock_s: float
) -> PartitionStore:
    deadline = time.monotonic() + wait_lock_s
    while True:
        try:
            return PartitionStore(root, partition, store_cfg)
        except StoreError as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
            log.info("partition %d store still locked by its previous owner; retrying", partition)
            time.sleep(0.5)


def open_processor(
    root: Path,
    partition: int,
    store_cfg: StoreConfig,
    cfg: WorkerConfig,
    events: EventConfig,
    metrics: Metrics,
    *,
    wait_lock_s: float = 0.0,
    snapshots: Snapshots | None = None,
) -> PartitionProcessor:
    """Open a partition's store and its processor.

    Args:
        wait_lock_s: keep retrying this long while another process still holds the store
            (a revoked owner closing it during a rebalance); 0 = fail at once.
        snapshots: where durable snapshots are; a store that is missing here (a lost disk,
            a partition new to this host) or older than the newest snapshot is restored
            from it first, once this process owns the partition.
    Raises:
        StoreError: the store cannot be opened (locked past the wait, corrupt).
        ValueError: the store was built with settings this processor cannot continue.
    """
    store = _open_store(root, partition, store_cfg, wait_lock_s)
    if snapshots is not None:
        found = snapshots.newer(partition, store.state.next_offset)
        if found is not None:
            store.close()
            snapshots.restore(found[0], root, partition)
            store = _open_store(root, partition, store_cfg, wait_lock_s)
    try:
        return PartitionProcessor(store, cfg, events, metrics)
    except BaseException:
        store.close()
        raise
