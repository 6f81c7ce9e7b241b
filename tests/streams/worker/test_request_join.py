"""The label join by request id: a click that names the request pairs with the impression
that request served (and that item), and samples carry the position and the exploration
flag it was shown with. Served impressions are built by the served log's own expansion."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from monitoring.metrics import Metrics
from serving.served_log import ServedList, impressions
from streams.config import EventConfig, StoreConfig, WorkerConfig
from streams.contracts.events import EventError, Reason, decode
from streams.contracts.ids import stable_id
from streams.contracts.samples import SampleBlock
from streams.worker.decode import decode_batch, event_hash
from streams.worker.processor import PartitionProcessor, open_processor

T0 = 1_767_225_600_000
NOW = T0 + 86_400_000
W = 1000


def served(rid: str, user: str, items: list[str], ts: int, randomized: bool = False) -> list[bytes]:
    lst = ServedList(rid, user, "home", items, ranker_version="r3", randomized=randomized, ts_ms=ts)
    return [orjson.dumps(e) for e in impressions(lst)]


def click(eid: str, user: str, item: str, ts: int, rid: str | None = None) -> bytes:
    obj: dict[str, object] = {
        "event_id": eid,
        "user_id": user,
        "item_id": item,
        "action": "click",
        "condition": "home",
        "ts": ts,
    }
    if rid is not None:
        obj["features"] = {"request_id": rid}
    return orjson.dumps(obj)


class Feeder:
    def __init__(self, root: Path, metrics: Metrics) -> None:
        worker = WorkerConfig(label_window_s=W / 1000)
        self.proc: PartitionProcessor = open_processor(
            root, 0, StoreConfig(sync_writes=False), worker, EventConfig(), metrics
        )
        self.offset = 0
        self.blocks: list[SampleBlock] = []

    def feed(self, *values: bytes) -> None:
        offsets = list(range(self.offset, self.offset + len(values)))
        result = self.proc.process(offsets, [b"k"] * len(values), list(values), now_ms=NOW)
        self.proc.commit()
        self.offset += len(values)
        if result.samples is not None:
            self.blocks.append(result.samples)

    def samples(self) -> dict[tuple[int, int], tuple[int, int, int]]:
        """{(impression eid hash, item id): (label, slot, randomized)}."""
        rows = np.concatenate([b.rows for b in self.blocks])
        return {
            (int(r["eid"]), int(r["item"])): (int(r["label"]), int(r["slot"]), int(r["randomized"]))
            for r in rows
        }


@pytest.fixture
def feeder(tmp_path: Path, metrics: Metrics) -> Iterator[Feeder]:
    f = Feeder(tmp_path, metrics)
    yield f
    f.proc.close()


def _eid(rid: str, pos: int) -> int:
    return event_hash(f"{rid}:{pos}")


def test_a_click_with_a_request_id_labels_only_that_requests_impression(feeder: Feeder) -> None:
    # item "5" shown twice to user 1: at position 2 by req-a, at position 0 by req-b
    feeder.feed(*served("req-a", "1", ["7", "8", "5"], T0))
    feeder.feed(*served("req-b", "1", ["5", "9"], T0 + 10, randomized=True))
    feeder.feed(click("c1", "1", "5", T0 + 100, rid="req-b"))
    feeder.feed(click("tick", "99", "99", T0 + 5 * W))  # closes every window
    got = feeder.samples()
    five = stable_id("5")
    assert got[(_eid("req-b", 0), five)] == (1, 0, 1)  # clicked, shown first, explored
    assert got[(_eid("req-a", 2), five)] == (0, 2, 0)  # the other showing is not labelled
    assert sum(label for label, _, _ in got.values()) == 1
    assert feeder.proc.store.state.counters["positives_matched"] == 1


def test_a_click_without_a_request_id_labels_every_open_showing(feeder: Feeder) -> None:
    feeder.feed(*served("req-a", "1", ["5"], T0))
    feeder.feed(*served("req-b", "1", ["5"], T0 + 10))
    feeder.feed(click("c1", "1", "5", T0 + 100))
    feeder.feed(click("tick", "99", "99", T0 + 5 * W))
    labels = [label for label, _, _ in feeder.samples().values()]
    assert labels == [1, 1]


def test_a_click_naming_an_unknown_request_matches_nothing(feeder: Feeder) -> None:
    feeder.feed(*served("req-a", "1", ["5"], T0))
    feeder.feed(click("c1", "1", "5", T0 + 100, rid="req-zzz"))
    feeder.feed(click("tick", "99", "99", T0 + 5 * W))
    assert [label for label, _, _ in feeder.samples().values()] == [0]
    assert feeder.proc.store.state.counters["positives_no_impression"] == 2  # + the tick


def test_impressions_without_served_features_have_no_slot(feeder: Feeder) -> None:
    plain = orjson.dumps(
        {
            "event_id": "i1",
            "user_id": "1",
            "item_id": "5",
            "action": "impression",
            "condition": "home",
            "ts": T0,
        }
    )
    feeder.feed(plain, click("tick", "99", "99", T0 + 5 * W))
    assert list(feeder.samples().values()) == [(0, -1, 0)]


@pytest.mark.parametrize(
    ("features", "reason", "field"),
    [
        ({"position": -1}, Reason.OUT_OF_RANGE, "features.position"),
        ({"position": 2**31}, Reason.OUT_OF_RANGE, "features.position"),
        ({"position": "3"}, Reason.WRONG_TYPE, "features.position"),
        ({"position": 1.5}, Reason.WRONG_TYPE, "features.position"),
        ({"position": True}, Reason.WRONG_TYPE, "features.position"),
        ({"randomized": "yes"}, Reason.WRONG_TYPE, "features.randomized"),
        ({"randomized": 1}, Reason.WRONG_TYPE, "features.randomized"),
        ({"request_id": " "}, Reason.EMPTY_FIELD, "features.request_id"),
        ({"request_id": ""}, Reason.EMPTY_FIELD, "features.request_id"),
        ({"request_id": 1.5}, Reason.WRONG_TYPE, "features.request_id"),
    ],
)
def test_bad_served_features_are_rejected_with_their_field(
    features: dict[str, object], reason: Reason, field: str
) -> None:
    raw = orjson.dumps(
        {
            "event_id": "e",
            "user_id": "1",
            "item_id": "5",
            "action": "impression",
            "condition": "home",
            "ts": T0,
            "features": features,
        }
    )
    with pytest.raises(EventError, match=field) as info:
        decode(raw, EventConfig(), NOW)
    assert info.value.reason == reason
    # the worker's fast path sends it to the reference, which rejects it the same way
    cols, rejected = decode_batch([raw], EventConfig(), NOW)
    assert len(cols.index) == 0
    assert [r.reason for r in rejected] == [reason.value]


def test_fast_and_reference_paths_give_the_same_served_columns() -> None:
    imps = served("req-a", "1", ["7", "8"], T0, randomized=True)
    # an integer category sends this click to the reference path (it normalises it)
    ref_click = orjson.dumps(
        {
            "event_id": "c",
            "user_id": "1",
            "item_id": "8",
            "action": "click",
            "condition": "home",
            "ts": T0 + 5,
            "features": {"request_id": 12345, "position": 1, "category": 7},
        }
    )
    fast_click = click("d", "1", "8", T0 + 6, rid="12345")
    cols, rejected = decode_batch([*imps, ref_click, fast_click], EventConfig(), NOW)
    assert rejected == []
    assert cols.slot.tolist() == [0, 1, 1, -1]
    assert cols.randomized.tolist() == [1, 1, 0, 0]
    assert cols.req.tolist() == [event_hash("req-a")] * 2 + [event_hash("12345")] * 2


def test_a_store_from_before_request_ids_is_upgraded(tmp_path: Path, metrics: Metrics) -> None:
    from streams.worker.join import PENDING_DTYPE, PENDING_DTYPE_V1
    from streams.worker.store import PartitionStore

    f = Feeder(tmp_path, metrics)
    f.feed(*served("req-a", "1", ["5", "6"], T0))  # two open impressions
    f.proc.close()
    # rewrite the store as the previous release left it: v1 rows, no join_format
    store = PartitionStore(tmp_path, 0, StoreConfig(sync_writes=False))
    for key, raw in list(store.scan(b"j")):
        rows = np.frombuffer(raw, PENDING_DTYPE)
        old = np.zeros(len(rows), PENDING_DTYPE_V1)
        for name in PENDING_DTYPE_V1.names:
            old[name] = rows[name]
        store.put(key, old.tobytes())
    store.state.join_format = 1
    store.commit()
    store.close()
    f = Feeder(tmp_path, metrics)
    f.offset = 2
    f.feed(click("c1", "1", "5", T0 + 100), click("tick", "99", "99", T0 + 5 * W))
    f.proc.close()
    got = sorted(f.samples().values())
    assert got == [(0, -1, 0), (1, -1, 0)]  # labelled as before, position unknown
