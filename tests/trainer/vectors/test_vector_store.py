"""The vector store: the reader answers exactly what the in-memory reference answers, while
the writer keeps writing; retention of records and item tables; bad bytes are errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics
from trainer.vectors.layout import ConditionLayout, LayoutError
from trainer.vectors.lookup import LumLookup, MemoryVectors
from trainer.vectors.records import VectorFormatError, decode_records
from trainer.vectors.store import VectorReader, VectorStore

DIM, CAP = 4, 3
COND = np.array([[10], [11]], np.int64)


def _same(a: LumLookup, b: LumLookup) -> None:
    for name in ("user", "user_found", "item", "item_found", "cond_index", "version", "covered"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 3),
            st.lists(st.integers(0, 6), min_size=1, max_size=5, unique=True),
            st.integers(0, 100),
        ),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.tuples(st.integers(0, 7), st.integers(0, 130)), min_size=1, max_size=20),
)
def test_the_reader_answers_as_the_reference(
    tmp_path_factory: pytest.TempPathFactory,
    writes: list[tuple[int, list[int], int]],
    queries: list[tuple[int, int]],
) -> None:
    root = tmp_path_factory.mktemp("vec")
    store = VectorStore(root / "db", keep=3, sync=False)
    mem = MemoryVectors(ConditionLayout(("cond",), COND, CAP, DIM), keep=3)
    store.agree_layout(COND, ("cond",), DIM, CAP)
    rng = np.random.default_rng(0)
    for version, users, covered in writes:
        if version not in mem.watermarks:
            items, vecs = np.arange(5), rng.normal(size=(5, DIM)).astype(np.float32)
            store.add_version(version, 10 * version, items, vecs)
            mem.add_version(version, watermark=10 * version, items=items, item_vectors=vecs)
        u = np.array(users)
        c = np.full(len(users), covered)
        v = rng.normal(size=(len(users), len(COND), DIM)).astype(np.float32)
        store.write(version, u, c, v, np.ones(len(users), np.int64), computed_ms=1)
        mem.add(version, u, c, v, computed_ms=1)
    store.close()
    reader = VectorReader(root / "db", root / "scratch")
    try:
        users = np.array([q[0] for q in queries])
        ts = np.array([q[1] for q in queries])
        items = users % 6
        conds = np.where(users % 2, 10, 99)[:, None]
        _same(reader.lookup(users, items, conds, ts), mem.lookup(users, items, conds, ts))
    finally:
        reader.close()


def test_a_reader_follows_the_writer_and_counts(tmp_path: Path) -> None:
    store = VectorStore(tmp_path / "db", sync=False)
    metrics = Metrics(CollectorRegistry())
    reader = VectorReader(tmp_path / "db", tmp_path / "scratch", metrics=metrics, consumer="svc")
    try:
        assert reader.layout is None  # nothing written yet
        got = reader.lookup(np.array([1]), np.array([0]), np.array([[10]]), np.array([50]))
        assert not got.user_found.any()
        store.agree_layout(COND, ("cond",), DIM, CAP)
        store.add_version(1, 20, np.arange(3), np.ones((3, DIM), np.float32))
        store.write(1, np.array([1]), np.array([30]), np.ones((1, 2, DIM)), np.array([4]))
        reader.refresh()
        got = reader.lookup(
            np.array([1, 1]), np.array([0, 7]), np.array([[11], [10]]), np.array([31, 30])
        )
        assert got.user_found.tolist() == [True, False]  # the second is at its covered time
        assert got.item_found.tolist() == [True, False]
        assert got.cond_index.tolist() == [1, 0]
        assert got.user.shape == (2, CAP, DIM)
        assert got.user[0, 2].tolist() == [0.0] * DIM  # the unused third row
        reg = metrics.registry
        found = {"consumer": "svc", "part": "user", "outcome": "found"}
        assert reg.get_sample_value("lumstream_vectors_lookups_total", found) == 1
        assert reg.get_sample_value("lumstream_vectors_age_seconds_count", {"consumer": "svc"}) == 1
        assert reg.get_sample_value("lumstream_vectors_version", {"consumer": "svc"}) == 1
        assert list(reader.users()) == [1]
    finally:
        reader.close()
        store.close()


def test_retention_of_records_and_item_tables(tmp_path: Path) -> None:
    store = VectorStore(tmp_path / "db", keep=2, keep_versions=2, sync=False)
    store.agree_layout(COND, ("cond",), DIM, CAP)
    for v in (1, 2, 3):
        store.add_version(v, 0, np.arange(2), np.full((2, DIM), v, np.float32))
        store.write(v, np.array([5]), np.array([10 * v]), np.ones((1, 2, DIM)), np.array([v]))
    recs = store.records([5], DIM)[5]
    assert recs.head["version"].tolist() == [2, 3]
    assert store.summarised(3, DIM) == {5: 3}
    store.close()
    reader = VectorReader(tmp_path / "db", tmp_path / "scratch")
    try:
        assert sorted(reader.versions()) == [1, 2, 3]
        assert reader._items_of(1) is None  # dropped beyond keep_versions
        assert reader._items_of(3) is not None
    finally:
        reader.close()


def test_the_layout_contract_and_bad_bytes(tmp_path: Path) -> None:
    store = VectorStore(tmp_path / "db", sync=False)
    layout, left_out = store.agree_layout(COND, ("cond",), DIM, 2)
    assert (len(layout), left_out) == (2, 0)
    layout, left_out = store.agree_layout(np.array([[12], [10]]), ("cond",), DIM, 2)
    assert (layout.conditions[:, 0].tolist(), left_out) == ([10, 11], 1)  # full: left out
    with pytest.raises(LayoutError):
        store.agree_layout(COND, ("cond", "cat"), DIM, 2)
    with pytest.raises(LayoutError, match="width"):
        store.agree_layout(COND, ("cond",), DIM * 2, 2)
    store.close()
    with pytest.raises(VectorFormatError):
        decode_records(b"LCQ2\x05\x00\x00\x00", DIM)
    with pytest.raises(VectorFormatError):
        decode_records(b"junk", DIM)


def test_write_returns_how_far_each_user_moved_from_another_version(tmp_path: Path) -> None:
    store = VectorStore(tmp_path / "db", keep=4, sync=False)
    store.agree_layout(COND, ("cond",), DIM, CAP)
    items, vecs = np.arange(2), np.ones((2, DIM), np.float32)
    for version in (1, 2):
        store.add_version(version, 10 * version, items, vecs)
    a = np.zeros((2, len(COND), DIM), np.float32)
    a[:, :, 0] = 1.0
    ones = np.ones(2, np.int64)
    first = store.write(1, np.array([5, 6]), np.array([20, 20]), a, ones, computed_ms=1)
    assert np.isnan(first).all()  # nothing before
    same = store.write(1, np.array([5]), np.array([25]), a[:1], ones[:1], computed_ms=2)
    assert np.isnan(same).all()  # the same version: not a move between versions
    b = a.copy()
    b[0, :, 0], b[0, :, 1] = 0.0, 1.0  # user 5 turns by 90 degrees, user 6 stays
    moved = store.write(2, np.array([5, 6]), np.array([30, 30]), b, ones, computed_ms=3)
    assert moved.tolist() == pytest.approx([1.0, 0.0])
    store.close()
