"""Sample blocks on lum.samples: encode/decode round trip, slicing, and corrupt input."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contracts.samples import (
    HIST_DTYPE,
    MAGIC,
    SAMPLE_DTYPE,
    SampleBlock,
    SampleFormatError,
    decode_block,
    encode_block,
    split_blocks,
)

HEADER = struct.Struct("<4sqqqq")


def make_block(
    lengths: list[int], partition: int = 3, first_seq: int = 100, seed: int = 0
) -> SampleBlock:
    rng = np.random.default_rng(seed)
    n = len(lengths)
    rows = np.zeros(n, SAMPLE_DTYPE)
    rows["seq"] = np.arange(first_seq, first_seq + n)
    for name in ("user", "item", "cond", "cat", "ts", "offset"):
        rows[name] = rng.integers(0, 2**62, n)
    rows["eid"] = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2)
    rows["label"] = rng.integers(0, 2, n)
    hist = np.zeros(sum(lengths), HIST_DTYPE)
    for name in ("item", "cond", "cat", "ts"):
        hist[name] = rng.integers(-(2**62), 2**62, len(hist))
    hist["action"] = rng.integers(0, 3, len(hist))
    return SampleBlock(partition, rows, np.array(lengths, np.int32), hist)


def assert_same(a: SampleBlock, b: SampleBlock) -> None:
    assert a.partition == b.partition
    assert a.rows.tobytes() == b.rows.tobytes()
    assert a.hist_lengths.tolist() == b.hist_lengths.tolist()
    assert a.hist.tobytes() == b.hist.tobytes()


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), max_size=20),
    partition=st.integers(0, 10_000),
    seed=st.integers(0, 1000),
)
def test_encode_decode_round_trip(lengths: list[int], partition: int, seed: int) -> None:
    block = make_block(lengths, partition, seed=seed)
    raw = encode_block(block)
    back = decode_block(raw)
    assert_same(back, block)
    assert len(back) == len(lengths)
    assert encode_block(back) == raw


def test_header_layout() -> None:
    block = make_block([2, 0, 1], partition=7, first_seq=42)
    raw = encode_block(block)
    assert HEADER.unpack_from(raw) == (MAGIC, 7, 42, 3, 3)
    assert len(raw) == HEADER.size + 3 * SAMPLE_DTYPE.itemsize + 3 * 4 + 3 * HIST_DTYPE.itemsize


def test_slice_and_split_keep_rows_with_their_history() -> None:
    block = make_block([1, 0, 3, 2, 0, 4, 1])
    parts = split_blocks(block, 3)
    assert [len(p) for p in parts] == [3, 3, 1]
    assert np.concatenate([p.rows for p in parts]).tobytes() == block.rows.tobytes()
    assert np.concatenate([p.hist for p in parts]).tobytes() == block.hist.tobytes()
    middle = block.slice(2, 4)
    assert middle.rows["seq"].tolist() == [102, 103]
    assert middle.hist.tobytes() == block.hist[1:6].tobytes()
    for part in parts:
        assert_same(decode_block(encode_block(part)), part)
    assert split_blocks(make_block([]), 5) == []


def _with_header(raw: bytes, **fields: int) -> bytes:
    magic, part, first, n, n_hist = HEADER.unpack_from(raw)
    values = {"part": part, "first": first, "n": n, "n_hist": n_hist} | fields
    return (
        HEADER.pack(magic, values["part"], values["first"], values["n"], values["n_hist"])
        + raw[HEADER.size :]
    )


GOOD = encode_block(make_block([2, 1, 0, 3]))
LENGTHS_AT = HEADER.size + 4 * SAMPLE_DTYPE.itemsize


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "shorter than its header"),
        (GOOD[:20], "shorter than its header"),
        (b"LSB1" + GOOD[4:], "bad magic"),
        (b'{"event_id": "not a block"}' + b" " * 20, "bad magic"),
        (GOOD[:-1], "header says"),
        (GOOD + b"\0", "header says"),
        (_with_header(GOOD, n=-1), "negative sizes"),
        (_with_header(GOOD, n_hist=-5), "negative sizes"),
        (_with_header(GOOD, n=2**62), "header says"),
        # lengths that do not add up to n_hist, and a negative length
        (
            GOOD[:LENGTHS_AT] + struct.pack("<4i", 2, 1, 1, 3) + GOOD[LENGTHS_AT + 16 :],
            "do not add up",
        ),
        (
            GOOD[:LENGTHS_AT] + struct.pack("<4i", 2, 2, -1, 3) + GOOD[LENGTHS_AT + 16 :],
            "do not add up",
        ),
    ],
    ids=[
        "empty",
        "short",
        "magic",
        "json",
        "truncated",
        "trailing",
        "neg-n",
        "neg-hist",
        "huge-n",
        "bad-lengths",
        "neg-length",
    ],
)
def test_corrupt_blocks_raise_sample_format_error(raw: bytes, match: str) -> None:
    with pytest.raises(SampleFormatError, match=match):
        decode_block(raw)


def test_every_truncation_is_rejected() -> None:
    for cut in range(len(GOOD)):
        with pytest.raises(SampleFormatError):
            decode_block(GOOD[:cut])


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_sample_format_error(raw: bytes) -> None:
    try:
        block = decode_block(MAGIC + raw)
    except SampleFormatError:
        return
    assert int(block.hist_lengths.sum()) == len(block.hist)


def test_history_without_rows_is_rejected() -> None:
    # n = 0 rows but one history row: the lengths (none) do not add up to n_hist
    raw = HEADER.pack(MAGIC, 0, 0, 0, 1) + bytes(HIST_DTYPE.itemsize)
    try:
        block = decode_block(raw)
    except SampleFormatError:
        return
    raise AssertionError(f"accepted {len(block)} rows with {len(block.hist)} history rows")
