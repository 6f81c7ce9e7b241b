"""The condition layout (append-only, bounded) and the record format (round trip and the
point-in-time choice, against a brute-force reference)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.vectors.layout import ConditionLayout, LayoutError
from trainer.vectors.records import (
    ItemTable,
    append,
    decode_items,
    decode_records,
    encode_items,
    encode_records,
    pick,
)


def test_a_layout_only_appends_within_its_capacity() -> None:
    lay = ConditionLayout(("cond",), np.array([[1], [2]]), capacity=3, dim=4)
    grown, added = lay.extended(np.array([[3], [2], [4]]))
    assert (grown.conditions[:, 0].tolist(), added) == ([1, 2, 3], 1)  # 4: no room
    same, added = grown.extended(np.array([[2], [1]]))  # reordered top conditions
    assert (same.conditions[:, 0].tolist(), added) == ([1, 2, 3], 0)
    assert grown.index(np.array([[3], [9], [1]])).tolist() == [2, -1, 0]
    back = ConditionLayout.from_json(grown.to_json())
    assert (back.fields, back.capacity, back.dim) == (grown.fields, 3, 4)
    assert np.array_equal(back.conditions, grown.conditions)


def test_a_layout_refuses_what_would_change_its_meaning() -> None:
    lay = ConditionLayout(("cond", "cat"), np.array([[1, 5]]), capacity=2, dim=4)
    with pytest.raises(LayoutError, match="condition fields"):
        lay.check_compatible(("cond",), 4)
    with pytest.raises(LayoutError, match="width 8"):
        lay.check_compatible(("cond", "cat"), 8)
    with pytest.raises(LayoutError, match="duplicate"):
        ConditionLayout(("cond",), np.array([[1], [1]]), capacity=4, dim=4)
    with pytest.raises(LayoutError, match="exceed the capacity"):
        ConditionLayout(("cond",), np.array([[1], [2], [3]]), capacity=2, dim=4)


def test_records_round_trip_and_keep_the_newest() -> None:
    recs = None
    for k in range(5):
        recs = append(recs, k % 2 + 1, 100 * k, 100 * k + 10, k, np.full((k % 3 + 1, 4), k), 3, k)
    assert recs is not None
    again = decode_records(encode_records(recs), 4)
    assert again.head.tolist() == recs.head.tolist()
    assert [v.tolist() for v in again.vectors] == [v.tolist() for v in recs.vectors]
    assert again.head["covered"].tolist() == [200, 300, 400]  # the oldest two dropped
    table = ItemTable.of(np.array([9, 3]), np.array([[1.0, 2.0], [np.nan, 0.0]]))
    back = decode_items(encode_items(table))
    assert back.ids.tolist() == [3, 9]
    vecs, found = back.lookup(np.array([3, 9, 4]))
    assert found.tolist() == [False, True, False]  # non-finite row: missing
    assert vecs[1].tolist() == [1.0, 2.0]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 4), st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=8
    ),
    st.integers(0, 120),
)
def test_pick_is_the_newest_version_then_computation_valid_before_t(
    rows: list[tuple[int, int, int]], t: int
) -> None:
    recs = None
    for version, covered, watermark in rows:
        recs = append(recs, version, covered, max(covered, watermark), 0, np.zeros((1, 2)), 8)
    assert recs is not None
    got = pick(recs, t)
    valid = [
        (int(h["version"]), int(h["covered"]), i)
        for i, h in enumerate(recs.head)
        if h["valid_from"] < t
    ]
    if not valid:
        assert got == -1
    else:
        best = max(valid)[:2]
        assert (int(recs.head["version"][got]), int(recs.head["covered"][got])) == best


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 10_000), min_size=1, max_size=40),
    st.integers(2, 8),
    st.integers(0, 5_000),
)
def test_retention_keeps_the_newest_the_anchor_and_spreads_the_rest(
    times: list[int], keep: int, horizon: int
) -> None:
    from trainer.vectors.records import retained

    vf = np.array(sorted(times), np.int64)
    idx = retained(vf, keep, horizon)
    kept = vf[idx]
    assert len(idx) <= max(keep, 1) or len(vf) <= keep
    assert kept[-1] == vf[-1]  # the newest always
    if horizon and len(vf) > keep:
        older = vf[vf < vf[-1] - horizon]
        if len(older):
            assert older[-1] in kept  # the anchor answers for times before the horizon
    # every time after the oldest kept record still has a valid record: never "none"
    assert all((kept < t).any() for t in range(int(kept[0]) + 1, int(vf[-1]) + 2, 97))
