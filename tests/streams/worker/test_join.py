"""The label join (streams/worker/join.py) through the processor: windows, labels, counts,
late clicks, purchases, emission order, no leakage, and state that survives a reopen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics
from streams.config import EventConfig, StoreConfig, WorkerConfig
from streams.contracts.ids import stable_id
from streams.contracts.samples import SampleBlock
from streams.worker.decode import event_hash
from streams.worker.processor import BatchResult, PartitionProcessor, open_processor

T0 = 1_767_225_600_000
NOW = T0 + 86_400_000
W = 1000  # label window (ms) of these tests


def event(
    eid: str,
    user: int,
    item: int,
    action: str,
    ts: int,
    cond: str = "home",
    category: str | None = None,
) -> bytes:
    obj: dict[str, object] = {
        "event_id": eid,
        "user_id": str(user),
        "item_id": str(item),
        "action": action,
        "condition": cond,
        "ts": ts,
    }
    if category is not None:
        obj["features"] = {"category": category}
    return orjson.dumps(obj)


def imp(eid: str, user: int, item: int, ts: int) -> bytes:
    return event(eid, user, item, "impression", ts)


def click(eid: str, user: int, item: int, ts: int) -> bytes:
    return event(eid, user, item, "click", ts)


def tick(eid: str, ts: int) -> bytes:
    """An unrelated user's click: moves the watermark."""
    return click(eid, 999, 999, ts)


class Harness:
    """One partition's processor; every feed() is one committed batch."""

    def __init__(self, root: Path, metrics: Metrics, **worker: object) -> None:
        self.root, self.metrics = root, metrics
        self.worker = WorkerConfig(**({"label_window_s": W / 1000} | worker))  # type: ignore[arg-type]
        self.store = StoreConfig(sync_writes=False)
        self.offset = 0
        self.blocks: list[SampleBlock] = []
        self.proc = self._open()

    def _open(self) -> PartitionProcessor:
        return open_processor(self.root, 0, self.store, self.worker, EventConfig(), self.metrics)

    def feed(self, *values: bytes) -> BatchResult:
        offsets = list(range(self.offset, self.offset + len(values)))
        result = self.proc.process(offsets, [b"k"] * len(values), list(values), now_ms=NOW)
        self.proc.commit()
        self.offset += len(values)
        if result.samples is not None:
            self.blocks.append(result.samples)
        return result

    def reopen(self) -> None:
        self.proc.close()
        self.proc = self._open()

    def rows(self) -> np.ndarray:
        return np.concatenate([b.rows for b in self.blocks]) if self.blocks else np.empty(0)

    def labels(self) -> dict[int, int]:
        """{impression offset: label} of the samples emitted so far."""
        rows = self.rows()
        return (
            {int(o): int(lb) for o, lb in zip(rows["offset"], rows["label"], strict=True)}
            if len(rows)
            else {}
        )

    def counters(self) -> dict[str, int]:
        return self.proc.store.state.counters

    def history_items(self) -> list[list[int]]:
        out = []
        for block in self.blocks:
            ends = np.cumsum(block.hist_lengths)
            for end, n in zip(ends.tolist(), block.hist_lengths.tolist(), strict=True):
                out.append(block.hist["item"][end - n : end].tolist())
        return out


@pytest.fixture
def harness(tmp_path: Path, metrics: Metrics) -> Harness:
    return Harness(tmp_path, metrics)


def test_click_inside_the_window_labels_one_and_outside_zero(harness: Harness) -> None:
    harness.feed(imp("a", 1, 10, T0), imp("b", 1, 11, T0), imp("c", 1, 12, T0))
    harness.feed(
        click("x", 1, 10, T0 + 400),  # inside
        click("y", 1, 12, T0 + W),
    )  # exactly at the deadline: still inside
    assert harness.blocks == []  # the watermark has not passed ts + W yet
    harness.feed(tick("t1", T0 + W))  # watermark == deadline: still open
    assert harness.blocks == []
    harness.feed(click("z", 1, 11, T0 + W + 1))  # after item 11's window; closes all three
    assert harness.labels() == {0: 1, 1: 0, 2: 1}
    c = harness.counters()
    assert c["samples_positive"] == 2
    assert c["samples_negative"] == 1
    assert c["positives_matched"] == 2
    # a click after its impression's window is not "late" (the watermark had not passed
    # its own time + W): it counts as a positive without an (open) impression
    assert c["positives_no_impression"] == 1 + 1  # the tick too
    assert "positives_late" not in c


def test_late_and_no_impression_positives_are_counted(harness: Harness, metrics: Metrics) -> None:
    harness.feed(click("n1", 1, 10, T0))  # no impression at all
    harness.feed(imp("i", 2, 20, T0 + 100), tick("t", T0 + 5000))  # closes the impression
    harness.feed(
        click("l1", 2, 20, T0 + 200),  # its impression's window, but arrives late
        click("l2", 3, 30, T0 + 3999),
    )  # ts + W < watermark: late
    assert harness.labels() == {1: 0}
    c = harness.counters()
    assert c["positives_late"] == 2
    assert c["positives_no_impression"] == 2  # n1 and the tick
    assert "positives_matched" not in c

    def unmatched(reason: str) -> float:
        value = metrics.registry.get_sample_value(
            "lumstream_worker_unmatched_positives_total", {"reason": reason}
        )
        return value or 0.0

    assert unmatched("late") == 2
    assert unmatched("no_impression") == 2
    # late clicks still join the sequence
    assert harness.proc.store.sequence(stable_id("2"))["item"].tolist() == [20]


def test_purchase_is_a_positive(tmp_path: Path, metrics: Metrics) -> None:
    h = Harness(tmp_path / "a", metrics)
    h.feed(imp("i", 1, 10, T0), event("p", 1, 10, "purchase", T0 + 10), tick("t", T0 + 2 * W))
    assert h.labels() == {0: 1}
    assert h.proc.store.sequence(stable_id("1"))["action"].tolist() == [2]  # purchase
    only_clicks = Harness(tmp_path / "b", Metrics(CollectorRegistry()), positive_actions=("click",))
    only_clicks.feed(
        imp("i", 1, 10, T0), event("p", 1, 10, "purchase", T0 + 10), tick("t", T0 + 2 * W)
    )
    assert only_clicks.labels() == {0: 0}


def test_a_positive_labels_every_open_impression_of_its_user_and_item(harness: Harness) -> None:
    harness.feed(
        imp("a", 1, 10, T0),
        imp("b", 1, 10, T0 + 300),
        imp("c", 2, 10, T0 + 300),
        imp("d", 1, 11, T0 + 300),
    )
    harness.feed(click("x", 1, 10, T0 + 900))
    harness.feed(tick("t", T0 + 5000))
    assert harness.labels() == {0: 1, 1: 1, 2: 0, 3: 0}
    assert harness.counters()["positives_matched"] == 1


def test_a_click_that_arrives_before_its_impression_does_not_label_it(harness: Harness) -> None:
    # event time says the click came later, but it arrived first (offset order decides)
    harness.feed(click("x", 1, 10, T0 + 100), imp("a", 1, 10, T0))
    harness.feed(tick("t", T0 + 5000))
    assert harness.labels() == {1: 0}


def test_samples_are_emitted_in_deadline_then_offset_order(harness: Harness) -> None:
    harness.feed(imp("a", 1, 10, T0 + 300), imp("b", 2, 20, T0), imp("c", 3, 30, T0 + 300))
    harness.feed(tick("t1", T0 + W + 100))  # closes b only
    harness.feed(tick("t2", T0 + W + 301))  # closes a and c
    rows = harness.rows()
    assert rows["offset"].tolist() == [1, 0, 2]
    assert rows["seq"].tolist() == [0, 1, 2]
    assert [b.rows["seq"][0] for b in harness.blocks] == [0, 1]
    assert harness.proc.store.state.sample_seq == 3


def test_sample_carries_the_impression_ids_and_context(harness: Harness) -> None:
    harness.feed(
        event("imp-1", 5, 77, "impression", T0, cond="search:shoes", category="Shoes"),
        tick("t", T0 + 2 * W),
    )
    (row,) = harness.rows()
    assert int(row["user"]) == stable_id("5")
    assert int(row["item"]) == stable_id("77")
    assert int(row["cond"]) == stable_id("search:shoes")
    assert int(row["cat"]) == stable_id("Shoes")
    assert (int(row["ts"]), int(row["offset"]), int(row["label"])) == (T0, 0, 0)
    assert int(row["eid"]) == event_hash("imp-1")
    assert harness.blocks[0].partition == 0


def test_history_is_the_sequence_before_the_impression(tmp_path: Path, metrics: Metrics) -> None:
    h = Harness(tmp_path, metrics, history_len=10)
    h.feed(click("a", 1, 1, T0), click("b", 1, 2, T0 + 1))
    h.feed(
        imp("i1", 1, 3, T0 + 2),
        click("c", 1, 3, T0 + 3),  # the impression's own click: label 1, not history
        imp("i2", 1, 4, T0 + 4),
        click("d", 1, 5, T0 + 5),
    )
    h.feed(click("e", 1, 6, T0 + 6), tick("t", T0 + 3 * W))
    assert h.labels() == {2: 1, 4: 0}
    assert h.history_items() == [[1, 2], [1, 2, 3]]
    assert h.blocks[0].hist["action"].tolist() == [1, 1, 1, 1, 1]
    short = Harness(tmp_path / "short", Metrics(CollectorRegistry()), history_len=1)
    short.feed(
        click("a", 1, 1, T0),
        click("b", 1, 2, T0 + 1),
        imp("i", 1, 3, T0 + 2),
        click("c", 1, 3, T0 + 3),
        tick("t", T0 + 3 * W),
    )
    assert short.history_items() == [[2]]


def test_join_state_survives_a_reopen(harness: Harness) -> None:
    harness.feed(imp("a", 1, 10, T0), imp("b", 1, 11, T0))
    harness.reopen()  # open impressions come back from their blob
    harness.feed(click("x", 1, 10, T0 + 100))
    harness.reopen()  # the label mark comes back too
    harness.feed(imp("c", 1, 12, T0 + 200), click("y", 1, 12, T0 + 300))
    harness.reopen()
    assert harness.proc.join.open_count == 3
    harness.feed(tick("t", T0 + 5000))
    assert harness.labels() == {0: 1, 1: 0, 3: 1}
    # everything emitted: no join state is left behind
    assert list(harness.proc.store.scan(b"j")) == []
    assert list(harness.proc.store.scan(b"c")) == []
    harness.reopen()
    assert harness.proc.join.open_count == 0


def test_changing_the_label_window_of_a_store_is_refused(tmp_path: Path, metrics: Metrics) -> None:
    h = Harness(tmp_path, metrics)
    h.feed(imp("a", 1, 10, T0))
    h.proc.close()
    with pytest.raises(ValueError, match="label window changed"):
        Harness(tmp_path, metrics, label_window_s=5.0)
    Harness(tmp_path, metrics).proc.close()  # the same window reopens fine
