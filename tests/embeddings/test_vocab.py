"""embeddings.vocab: dense rows, min-count admission, OOV, stable extension, no pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embeddings.vocab import OOV, Vocab


def test_build_orders_by_count_and_admits_by_min_count() -> None:
    v = Vocab.build(np.array([7, 3, 3, 9, 9, 9, 1 << 62]), min_count=2)
    assert v.ids.tolist() == [9, 3]
    assert v.counts.tolist() == [3, 2]
    assert len(v) == 3  # OOV row + 2
    assert v.lookup(np.array([[9, 3], [7, 1 << 62]])).tolist() == [[1, 2], [OOV, OOV]]


def test_empty_vocab_maps_everything_to_oov() -> None:
    v = Vocab.build(np.zeros(0, np.int64))
    assert len(v) == 1
    assert v.lookup(np.array([1, 2])).tolist() == [0, 0]


def test_extend_keeps_rows_and_appends_new_ids() -> None:
    old = Vocab.build(np.array([5, 5, 6]))
    new = old.extend(np.array([6, 8, 8, 9]), min_count=2)
    assert new.ids.tolist() == [5, 6, 8]  # 9 seen once: not admitted
    assert new.lookup(old.ids).tolist() == old.lookup(old.ids).tolist()
    assert new.counts.tolist() == [2, 2, 2]


def test_id_of_inverts_lookup_and_rejects_oov_row() -> None:
    v = Vocab.build(np.array([11, 22, 33]))
    assert v.id_of(v.lookup(np.array([33, 11]))).tolist() == [33, 11]
    with pytest.raises(IndexError):
        v.id_of(np.array([0]))


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        Vocab(np.array([1, 2, 1]))


def test_save_load_roundtrip_without_pickle(tmp_path: Path) -> None:
    v = Vocab.build(np.array([4, 4, 2, 1 << 62]))
    v.save(tmp_path / "v.npz")
    assert Vocab.load(tmp_path / "v.npz") == v
    state = v.state("items")
    assert Vocab.from_state(state, "items") == v
    with pytest.raises(KeyError, match=r"items\.counts"):
        Vocab.from_state({"items.ids": v.ids}, "items")


def test_load_refuses_pickled_arrays(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, ids=np.array([object()], dtype=object), counts=np.array([1]))
    with pytest.raises(ValueError, match="pickle"):
        Vocab.load(path)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, (1 << 63) - 1), max_size=60),
    st.lists(st.integers(0, (1 << 63) - 1), max_size=20),
    st.integers(1, 3),
)
def test_lookup_matches_a_dict(ids: list[int], probes: list[int], min_count: int) -> None:
    v = Vocab.build(np.array(ids, np.int64), min_count=min_count)
    table = {int(i): r + 1 for r, i in enumerate(v.ids)}
    expect = [table.get(p, OOV) for p in ids + probes]
    assert v.lookup(np.array(ids + probes, np.int64)).tolist() == expect
    counts = {i: ids.count(i) for i in ids}
    assert sorted(table) == sorted(i for i, c in counts.items() if c >= min_count)
