"""embeddings.ids: the vectorised id mapper against the one-id-at-a-time reference;
admission, collisions, expiry, bounded size, determinism and state round trips."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from embeddings.ids import NEW_ROW, IdMapper, ReferenceIdMapper

BATCH = st.lists(st.tuples(st.integers(-2, 40), st.integers(0, 50)), min_size=0, max_size=25)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(BATCH, min_size=1, max_size=6),
    st.integers(3, 24),
    st.integers(1, 3),
    st.integers(1, 4),
    st.sampled_from([0, 20]),
)
def test_fast_mapper_matches_reference(
    batches: list[list[tuple[int, int]]], rows: int, admit: int, probes: int, expire: int
) -> None:
    fast = IdMapper(rows, admit, expire, probes, sketch_width=1 << 16, seed=3)
    ref = ReferenceIdMapper(rows, admit, expire, probes, seed=3)
    t0 = 0
    for batch in batches:
        ids = [i for i, _ in batch]
        ts = [t0 + t for _, t in batch]
        t0 += 30
        got = fast.map(np.array(ids, np.int64), np.array(ts, np.int64))
        want_rows, want_counts = ref.map(ids, ts)
        assert got.rows.tolist() == want_rows
        assert got.counts == want_counts
        assert (
            got.rows.tolist()
            == fast.map(np.array(ids, np.int64), np.array(ts), learn=False).rows.tolist()
        )


def test_admission_by_frequency_and_fresh_rows() -> None:
    m = IdMapper(rows=64, admit_count=3, probes=2)
    first = m.map(np.array([5, 5]), np.array([1, 1]))
    assert first.rows.tolist() == [NEW_ROW, NEW_ROW]
    assert first.counts["new"] == 2
    second = m.map(np.array([5, 9]), np.array([2, 2]))
    row = second.rows[0]
    assert row != NEW_ROW
    assert second.rows[1] == NEW_ROW
    assert second.fresh.tolist() == [row]
    assert second.counts["admitted"] == 1
    third = m.map(np.array([5]), np.array([3]))
    assert third.rows.tolist() == [row]
    assert third.counts["hit"] == 1
    assert len(third.fresh) == 0


def test_table_never_grows_and_collisions_share_the_new_row() -> None:
    m = IdMapper(rows=8, admit_count=1, probes=2)
    ids = np.arange(1000, 1200, dtype=np.int64)
    res = m.map(ids, np.zeros(len(ids), np.int64))
    assert m.used <= 7
    assert m.owner.shape == (8,)
    assert res.counts["admitted"] == m.used
    assert res.counts["collision"] == len(ids) - m.used
    assert (res.rows == NEW_ROW).sum() == res.counts["collision"]
    assert len(set(res.rows[res.rows != NEW_ROW].tolist())) == m.used


def test_expiry_frees_rows_of_ids_unseen_for_the_ttl() -> None:
    m = IdMapper(rows=32, admit_count=1, expire_after_ms=100, probes=4)
    a = m.map(np.array([1, 2]), np.array([0, 0]))
    m.map(np.array([2]), np.array([90]))
    res = m.map(np.array([3]), np.array([150]))  # id 1 unseen since 0: expired at 150
    assert res.counts["evicted"] == 1
    assert 1 not in m.owner.tolist()
    assert 2 in m.owner.tolist()
    again = m.map(np.array([1]), np.array([151]))  # it comes back: re-admitted, fresh row
    assert again.counts["admitted"] == 1
    assert again.fresh.tolist() == again.rows.tolist()
    assert a.rows[0] != NEW_ROW


def test_lookup_without_learning_changes_nothing() -> None:
    m = IdMapper(rows=16, admit_count=1)
    m.map(np.array([4]), np.array([1]))
    before = {k: v.copy() for k, v in m.state().items()}
    res = m.map(np.array([4, 77, -3]), np.array([9, 9, 9]), learn=False)
    assert res.rows[1] == NEW_ROW
    assert res.rows[2] == NEW_ROW
    assert res.rows[0] != NEW_ROW
    for k, v in m.state().items():
        assert np.array_equal(v, before[k])


def test_same_seed_same_mapping_and_state_round_trip() -> None:
    ids = np.random.default_rng(0).integers(0, 1 << 62, 500)
    ts = np.arange(500)
    a, b = IdMapper(128, 1, seed=5), IdMapper(128, 1, seed=5)
    assert np.array_equal(a.map(ids, ts).rows, b.map(ids, ts).rows)
    c = IdMapper(128, 1, seed=5)
    c.load_state(a.state())
    assert np.array_equal(c.map(ids, ts, learn=False).rows, a.map(ids, ts, learn=False).rows)
    assert np.array_equal(a.copy().owner, a.owner)
