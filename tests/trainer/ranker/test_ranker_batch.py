"""trainer.ranker.batch: bad samples dropped and counted, history cleaning against a loop
reference, rank shares, the broadcast encoding and LUM lookups into tensors."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from support.metrics import sample
from support.ranker import CFG, EMB, truth_vectors

from embeddings.ids import NEW_ROW
from monitoring.metrics import Metrics
from streams.contracts.samples import HIST_DTYPE, SAMPLE_DTYPE
from trainer.ranker.batch import BatchBuilder, Samples
from trainer.ranker.engine import make_mappers
from trainer.vectors.lookup import MemoryVectors


def make(rows: list[dict[str, int]], hists: list[list[tuple[int, int]]]) -> Samples:
    r = np.zeros(len(rows), SAMPLE_DTYPE)
    for i, row in enumerate(rows):
        for k, v in row.items():
            r[k][i] = v
    r["seq"] = np.arange(len(rows))
    h = np.zeros(sum(len(x) for x in hists), HIST_DTYPE)
    flat = [e for x in hists for e in x]
    h["item"] = [e[0] for e in flat]
    h["cat"] = [e[1] for e in flat]
    h["ts"] = np.arange(len(flat))
    return Samples(r, np.zeros(len(rows), np.int64), np.array([len(x) for x in hists]), h)


def builder(metrics: Metrics | None = None, history_len: int = 3) -> BatchBuilder:
    cfg = dataclasses.replace(CFG, history_len=history_len)
    return BatchBuilder(cfg, make_mappers(EMB), 8, 4, metrics)


def test_bad_samples_are_dropped_and_counted(metrics: Metrics) -> None:
    s = make(
        [
            {"user": 1, "item": 2, "label": 1},
            {"user": -1, "item": 2},
            {"user": 1, "item": 3, "label": 7},
            {"user": 4, "item": 5},
        ],
        [[(1, 1)], [(2, 2)], [(3, 3)], [(-9, 1), (6, 1)]],
    )
    out = builder(metrics).clean(s)
    assert out.rows["user"].tolist() == [1, 4]
    assert out.hist["item"].tolist() == [1, 6]
    assert out.hist_lengths.tolist() == [1, 1]
    assert sample(metrics, "lumstream_ranker_samples_skipped_total", reason="bad_id") == 1
    assert sample(metrics, "lumstream_ranker_samples_skipped_total", reason="bad_label") == 1
    assert sample(metrics, "lumstream_ranker_samples_skipped_total", reason="bad_history") == 1


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(-1, 5), max_size=7), min_size=1, max_size=6), st.integers(0, 4)
)
def test_history_cleaning_matches_a_loop(hists: list[list[int]], keep: int) -> None:
    s = make([{"user": 1, "item": 1}] * len(hists), [[(i, 0) for i in h] for h in hists])
    out = builder(history_len=keep).clean(s)
    want = [[i for i in h if i >= 0][-keep:] if keep else [] for h in hists]
    assert out.hist_lengths.tolist() == [len(w) for w in want]
    assert out.hist["item"].tolist() == [i for w in want for i in w]


def test_encode_decode_and_rank_shares() -> None:
    s = make(
        [{"user": u, "item": u, "label": u % 2} for u in range(5)], [[(u, 1)] * u for u in range(5)]
    )
    back = Samples.decode(s.encode())
    assert back.rows.tobytes() == s.rows.tobytes()
    assert back.hist.tobytes() == s.hist.tobytes()
    b = builder(history_len=10)
    mapped = b.map(b.clean(s), learn=True)
    shares = [b.local(mapped, r, 2, None) for r in range(2)]
    assert [len(x) for x in shares] == [2, 3]
    assert shares[1].users.tolist() == [2, 3, 4]
    assert shares[1].kjt["hist_item"].lengths().tolist() == [2, 3, 4]
    empty = b.local(b.map(b.clean(s.slice(0, 1)), learn=True), 0, 2, None)
    assert len(empty) == 1
    assert empty.weights.tolist() == [0.0]


def test_lum_lookups_and_misses(metrics: Metrics) -> None:
    v = truth_vectors()
    v.metrics = metrics
    cond = int(v.layout.conditions[2, 0])
    s = make(
        [
            {"user": 3, "item": 7, "cond": cond, "ts": 5},
            {"user": 10_000, "item": 7, "cond": 12345, "ts": 5},
            {"user": 3, "item": 7, "cond": cond, "ts": 0},  # not after the records: none
        ],
        [[], [], []],
    )
    b = BatchBuilder(CFG, make_mappers(EMB), v.layout.dim, v.layout.capacity, metrics)
    batch = b.local(b.map(b.clean(s), learn=False), 0, 1, v)
    assert batch.lum_user_found.tolist() == [True, False, False]
    assert batch.lum_item_found.tolist() == [True, False, False]
    assert batch.cond_index.tolist() == [2, -1, 2]
    assert b.last_version == "v1"
    assert batch.kjt["user"].values().tolist() == [NEW_ROW] * 3  # no admission
    user = {"consumer": "ranker", "part": "user"}
    assert sample(metrics, "lumstream_vectors_lookups_total", **user, outcome="found") == 1
    assert sample(metrics, "lumstream_vectors_lookups_total", **user, outcome="missing") == 1
    assert sample(metrics, "lumstream_vectors_lookups_total", **user, outcome="none_before") == 1
    assert (
        sample(
            metrics,
            "lumstream_vectors_lookups_total",
            consumer="ranker",
            part="condition",
            outcome="missing",
        )
        == 1
    )
    off_cfg = dataclasses.replace(CFG, lum_features="off")
    off = BatchBuilder(off_cfg, make_mappers(EMB), v.layout.dim, 4)
    assert not off.local(off.map(s, learn=False), 0, 1, v).lum_user_found.any()


def test_a_store_of_another_shape_is_refused_once_and_counted(metrics: Metrics) -> None:
    v = truth_vectors()
    s = make([{"user": 3, "item": 7, "cond": int(v.layout.conditions[2, 0]), "ts": 5}], [[]])
    b = BatchBuilder(CFG, make_mappers(EMB), v.layout.dim, v.layout.capacity, metrics)

    def found(vectors: MemoryVectors) -> bool:
        return bool(b.local(b.map(b.clean(s), learn=False), 0, 1, vectors).lum_user_found[0])

    assert found(v)
    wider = truth_vectors(capacity=v.layout.capacity * 2)  # made for another ranker
    narrow = truth_vectors(dim=v.layout.dim // 2)
    for refused in (wider, wider, narrow):
        assert not found(refused)  # missing-vector defaults, never mislabelled rows
    assert sample(metrics, "lumstream_vectors_layout_refused_total", consumer="ranker") == 2
    assert found(truth_vectors(version=2))  # the ranker's shape again: used
