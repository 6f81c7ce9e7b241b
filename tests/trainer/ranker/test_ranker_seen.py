"""trainer.ranker.seen: a high-water mark with holes, against a plain set of seqs."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from trainer.ranker.seen import MAX_HOLES, SeenSeqs


@given(st.lists(st.lists(st.integers(0, 200), max_size=30), max_size=12))
def test_matches_a_set(batches: list[list[int]]) -> None:
    seen, ref = SeenSeqs(), set[int]()
    probe = np.arange(0, 205)  # seqs start at 0
    for b in batches:
        arr = np.array(b, dtype=np.int64)
        assert seen.unseen(arr).tolist() == [x not in ref for x in b]
        seen.add(arr)
        ref.update(b)
        assert seen.unseen(probe).tolist() == [x not in ref for x in probe.tolist()]
        assert all(a <= b < seen.top for a, b in seen.holes)
        assert all(x[1] + 1 < y[0] for x, y in zip(seen.holes, seen.holes[1:], strict=False))


def test_missing_counts_gaps_after_the_first_seq() -> None:
    seen = SeenSeqs()
    seen.add(np.arange(100, 110))  # a trainer that starts mid-partition
    assert seen.holes == [(0, 99)]
    assert seen.missing() == 0
    seen.add(np.arange(120, 130))
    assert seen.missing() == 10
    seen.add(np.arange(110, 115))
    assert seen.holes == [(0, 99), (115, 119)]
    assert seen.missing() == 5


def test_holes_are_bounded() -> None:
    seen = SeenSeqs()
    seen.add(np.arange(0, 2 * (MAX_HOLES + 10), 2))  # every other seq missing
    assert len(seen.holes) == MAX_HOLES
    assert seen.forgotten == 9
    assert not seen.unseen(np.array([1]))[0]  # forgotten: taken as seen
