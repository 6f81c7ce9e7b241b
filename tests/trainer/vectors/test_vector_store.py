"""Condition-query vector records: round trip, corrupt bytes, secondary readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.vectors.store import (
    UserVectors,
    VectorFormatError,
    VectorReader,
    VectorStore,
    decode_vectors,
    encode_vectors,
)


def _vectors(n: int = 3, d: int = 4) -> UserVectors:
    rng = np.random.default_rng(0)
    return UserVectors(
        7,
        1_767_225_600_000,
        np.arange(n, dtype=np.int64) + 10,
        rng.normal(size=(n, d)).astype(np.float32),
    )


def test_round_trip() -> None:
    v = _vectors()
    back = decode_vectors(encode_vectors(v))
    assert back.version == 7
    assert back.computed_ms == v.computed_ms
    assert np.array_equal(back.conditions, v.conditions)
    assert np.array_equal(back.vectors, v.vectors)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"", "shorter than its header"),
        (b"XXXX" + bytes(24), "not a condition-query vector record"),
        (encode_vectors(_vectors())[:-1], "header says"),
    ],
)
def test_corrupt_records_are_refused(raw: bytes, needle: str) -> None:
    with pytest.raises(VectorFormatError, match=needle):
        decode_vectors(raw)


def test_writer_and_secondary_reader(tmp_path: Path) -> None:
    store = VectorStore(tmp_path / "vectors", sync=False)
    users = np.array([1, 2**62 + 5], np.int64)
    conds = np.array([3, 4], np.int64)
    vecs = np.ones((2, 2, 8), np.float32)
    vecs[1] *= 2
    records = store.write(users, 1, 1000, conds, vecs)
    assert [k for k, _ in records] == [b"1", str(2**62 + 5).encode()]
    reader = VectorReader(tmp_path / "vectors", tmp_path / "scratch")
    got = reader.get(2**62 + 5)
    assert got is not None
    assert got.version == 1
    assert float(got.vectors.max()) == 2.0
    assert reader.get(99) is None
    store.write(np.array([99], np.int64), 2, 2000, conds, vecs[:1])
    assert reader.get(99) is None  # not caught up yet
    reader.refresh()
    later = reader.get(99)
    assert later is not None
    assert later.version == 2
    store.set_state(full_pass_ms=5)
    assert store.state() == {"full_pass_ms": 5}
    reader.close()
    store.close()
