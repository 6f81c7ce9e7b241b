"""Duplicate event ids: dropped and dead-lettered inside the window, accepted outside it,
and the window survives a reopen while staying bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from monitoring.metrics import Metrics
from streams.config import EventConfig, StoreConfig, WorkerConfig
from streams.contracts.ids import stable_id
from streams.worker.decode import event_hash
from streams.worker.dedup import DuplicateWindow
from streams.worker.processor import BatchResult, PartitionProcessor, open_processor
from streams.worker.store import PartitionStore

T0 = 1_767_225_600_000
NOW = T0 + 86_400_000
WINDOW_MS = 10_000


def event(eid: str, user: int, item: int, ts: int, action: str = "click") -> bytes:
    return orjson.dumps(
        {
            "event_id": eid,
            "user_id": str(user),
            "item_id": str(item),
            "action": action,
            "condition": "home",
            "ts": ts,
        }
    )


class Partition:
    def __init__(self, root: Path, metrics: Metrics) -> None:
        self.root, self.metrics, self.offset = root, metrics, 0
        self.proc = self._open()

    def _open(self) -> PartitionProcessor:
        cfg = WorkerConfig(dedup_window_s=WINDOW_MS / 1000, label_window_s=1.0)
        return open_processor(
            self.root, 0, StoreConfig(sync_writes=False), cfg, EventConfig(), self.metrics
        )

    def feed(self, *values: bytes) -> BatchResult:
        n = len(values)
        result = self.proc.process(
            list(range(self.offset, self.offset + n)),
            [b"key-%d" % i for i in range(n)],
            list(values),
            now_ms=NOW,
        )
        self.proc.commit()
        self.offset += n
        return result

    def reopen(self) -> None:
        self.proc.close()
        self.proc = self._open()

    def items(self, user: int) -> list[int]:
        return self.proc.store.sequence(stable_id(str(user)))["item"].tolist()


def test_duplicate_inside_the_window_is_dropped_and_dead_lettered(
    tmp_path: Path, metrics: Metrics
) -> None:
    part = Partition(tmp_path, metrics)
    part.feed(event("e1", 1, 10, T0), event("e2", 1, 11, T0 + 1))
    copy = event("e1", 1, 10, T0)
    result = part.feed(
        event("e3", 1, 12, T0 + 5),
        copy,  # a redelivered copy
        event("e1", 1, 99, T0 + 9_000),
    )  # same id, other content: still a dup
    assert result.applied == 1
    assert [(d.offset, d.reason, d.value, d.key) for d in result.dead_letters] == [
        (3, "duplicate", copy, b"key-1"),
        (4, "duplicate", event("e1", 1, 99, T0 + 9_000), b"key-2"),
    ]
    assert part.items(1) == [10, 11, 12]
    counters = part.proc.store.state.counters
    assert counters["duplicates"] == 2
    assert counters["applied"] == 3
    assert counters["rejected"] == 2  # the dead-lettered total includes duplicates
    assert metrics.registry.get_sample_value("lumstream_worker_duplicates_dropped_total") == 2


def test_duplicates_inside_one_batch(tmp_path: Path, metrics: Metrics) -> None:
    part = Partition(tmp_path, metrics)
    result = part.feed(
        event("a", 1, 1, T0),
        event("a", 1, 1, T0),
        event("b", 1, 2, T0),
        event("a", 1, 1, T0 + 1),
        event("b", 2, 3, T0 + 2),
    )
    assert [d.offset for d in result.dead_letters] == [1, 3, 4]
    assert part.items(1) == [1, 2]
    assert part.items(2) == []


def test_duplicate_outside_the_window_is_accepted(tmp_path: Path, metrics: Metrics) -> None:
    part = Partition(tmp_path, metrics)
    part.feed(event("e1", 1, 10, T0))
    part.feed(event("w", 2, 20, T0 + WINDOW_MS + 1))  # watermark - window passes e1's time
    result = part.feed(event("e1", 1, 10, T0 + WINDOW_MS + 2))
    assert result.dead_letters == []
    assert result.applied == 1
    assert part.items(1) == [10, 10]
    # the re-accepted event is the new reference: a copy right after it is a duplicate
    again = part.feed(event("e1", 1, 10, T0 + WINDOW_MS + 3))
    assert [d.reason for d in again.dead_letters] == ["duplicate"]
    # the boundary: an earlier event exactly at watermark - window still counts
    part.feed(event("e9", 3, 30, T0 + 50_000))
    part.feed(event("w2", 2, 21, T0 + 50_000 + WINDOW_MS))
    at_edge = part.feed(event("e9", 3, 30, T0 + 60_000))
    assert [d.reason for d in at_edge.dead_letters] == ["duplicate"]


def test_only_accepted_events_enter_the_window(tmp_path: Path, metrics: Metrics) -> None:
    part = Partition(tmp_path, metrics)
    bad = orjson.dumps(
        {
            "event_id": "e1",
            "user_id": "1",
            "item_id": "10",
            "action": "hover",
            "condition": "home",
            "ts": T0,
        }
    )
    result = part.feed(bad, event("e1", 1, 10, T0))
    assert [(d.offset, d.reason) for d in result.dead_letters] == [(0, "unknown_action")]
    assert part.items(1) == [10]


def test_window_survives_a_reopen(tmp_path: Path, metrics: Metrics) -> None:
    part = Partition(tmp_path, metrics)
    part.feed(event("e1", 1, 10, T0), event("e2", 1, 11, T0 + 1))
    part.reopen()
    result = part.feed(event("e2", 1, 11, T0 + 1), event("e3", 1, 12, T0 + 2))
    assert [(d.offset, d.reason) for d in result.dead_letters] == [(2, "duplicate")]
    assert part.items(1) == [10, 11, 12]


def test_window_is_purged_blob_by_blob(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path, 0, StoreConfig(sync_writes=False))
    window = DuplicateWindow(store, WINDOW_MS)
    hashes = np.array([event_hash(f"e{i}") for i in range(6)], np.uint64)
    window.add(hashes[:3], np.array([T0, T0 + 1, T0 + 2], np.int64))
    window.add(hashes[3:], np.array([T0 + 5_000, T0 + 5_001, T0 + 5_002], np.int64))
    store.commit()
    assert len(window.seen) == 6
    assert len(list(store.scan(b"d"))) == 2
    window.purge(T0 + WINDOW_MS + 3)  # the first blob is older than watermark - window
    store.commit()
    assert len(window.seen) == 3
    assert len(list(store.scan(b"d"))) == 1
    wm = np.full(6, T0 + WINDOW_MS + 3, np.int64)
    assert window.duplicates(hashes, wm, wm).tolist() == [False] * 3 + [True] * 3
    # rebuilt from the store: the same window
    reopened = DuplicateWindow(store, WINDOW_MS)
    assert reopened.seen == window.seen
    window.purge(T0 + 100_000)
    store.commit()
    assert window.seen == {}
    assert list(store.scan(b"d")) == []
    store.close()
