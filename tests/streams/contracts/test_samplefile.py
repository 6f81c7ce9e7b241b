"""Sample files: the round trip, exactly once per (partition, seq), torn tails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streams.contracts.samplefile import MAGIC, iter_sample_file
from streams.contracts.samples import HIST_DTYPE, SAMPLE_DTYPE, SampleBlock, SampleFormatError
from streams.sinks.samples import SampleFileWriter


def block(partition: int, first: int, n: int) -> SampleBlock:
    rows = np.zeros(n, SAMPLE_DTYPE)
    rows["seq"] = np.arange(first, first + n)
    rows["user"] = partition
    rows["item"] = rows["seq"] * 10
    lengths = (np.arange(n) % 3).astype(np.int32)
    hist = np.zeros(int(lengths.sum()), HIST_DTYPE)
    hist["item"] = np.arange(len(hist))
    return SampleBlock(partition, rows, lengths, hist)


def seqs(path: Path) -> list[tuple[int, int]]:
    return [(b.partition, int(s)) for b in iter_sample_file(path) for s in b.rows["seq"]]


def test_round_trip_keeps_blocks_and_history(tmp_path: Path) -> None:
    path = tmp_path / "s.lsb"
    written = [block(0, 0, 5), block(1, 0, 3), block(0, 5, 4)]
    with SampleFileWriter(path, sync=False) as out:
        for b in written:
            out.write(b)
        assert out.written == 12
    got = list(iter_sample_file(path))
    assert len(got) == 3
    for a, b in zip(written, got, strict=True):
        assert a.partition == b.partition
        assert a.rows.tobytes() == b.rows.tobytes()
        assert a.hist_lengths.tobytes() == b.hist_lengths.tobytes()
        assert a.hist.tobytes() == b.hist.tobytes()


def test_rows_already_in_the_file_are_dropped_after_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.lsb"
    with SampleFileWriter(path, sync=False) as out:
        out.write(block(0, 0, 5))
        out.write(block(1, 0, 2))
    with SampleFileWriter(path, sync=False) as out:
        assert out.next_seq == {0: 5, 1: 2}
        out.write(block(0, 0, 5))  # re-emitted after a crash: all there
        out.write(block(0, 3, 4))  # overlaps: rows 3, 4 there, 5, 6 new
        out.write(block(1, 2, 1))
        assert out.written == 3
    assert seqs(path) == [(0, s) for s in range(5)] + [(1, 0), (1, 1)] + [(0, 5), (0, 6), (1, 2)]
    sliced = list(iter_sample_file(path))[2]
    assert sliced.hist_lengths.tolist() == block(0, 3, 4).hist_lengths[2:].tolist()


def test_a_torn_last_frame_is_ignored_then_cut(tmp_path: Path) -> None:
    path = tmp_path / "s.lsb"
    with SampleFileWriter(path, sync=False) as out:
        out.write(block(0, 0, 4))
        out.write(block(0, 4, 4))
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # a crash in the middle of the second frame
    assert seqs(path) == [(0, s) for s in range(4)]
    with SampleFileWriter(path, sync=False) as out:
        assert out.next_seq == {0: 4}
        out.write(block(0, 4, 4))
    assert path.read_bytes() == whole


def test_new_files_and_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "s.lsb"
    with SampleFileWriter(path, must_be_new=True, sync=False):
        pass
    assert path.read_bytes() == MAGIC
    with SampleFileWriter(path, must_be_new=True, sync=False) as out:  # empty: still new
        out.write(block(2, 0, 1))
    with pytest.raises(FileExistsError, match="already holds samples"):
        SampleFileWriter(path, must_be_new=True)
    other = tmp_path / "other.bin"
    other.write_bytes(b"not samples at all")
    with pytest.raises(SampleFormatError, match="magic"):
        list(iter_sample_file(other))
    with pytest.raises(SampleFormatError, match="magic"):
        SampleFileWriter(other)
