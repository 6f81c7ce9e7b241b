"""Labelled samples on lum.samples: columnar blocks, jagged history (KJT-shaped).

One Kafka message carries a *block* of samples from one source partition, so neither the
worker nor the trainer touches a Python object per sample. A block is:

    magic b"LSB2" | header (little-endian int64 x 4: partition, first_seq, n, n_hist)
    | fixed columns, n rows each  (SAMPLE_DTYPE, packed)
    | history lengths (n x int32)
    | history values, n_hist rows (HIST_DTYPE, packed)

``seq`` numbers samples per source partition in emission order; it is deterministic (the
label join's emission order is defined by event offsets, not by batch boundaries), so a
sample re-emitted after a worker crash carries the same (partition, seq) and consumers
skip it with a per-partition high-water mark.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"LSB2"  # LSB2: + slot, randomized (issue 14)
_HEADER = struct.Struct("<4sqqqq")

SAMPLE_DTYPE = np.dtype(
    [
        ("seq", "<i8"),  # per source partition, emission order
        ("eid", "<u8"),  # 64-bit hash of the impression's event_id
        ("user", "<i8"),  # stable ids (streams.contracts.ids)
        ("item", "<i8"),
        ("cond", "<i8"),
        ("cat", "<i8"),
        ("ts", "<i8"),  # impression event time (ms)
        ("offset", "<i8"),  # the impression's offset in its lum.events partition
        ("label", "u1"),  # 1 when a positive action followed inside the label window
        ("slot", "<i4"),  # the rank the item was shown at (features.position), -1 unknown
        ("randomized", "u1"),  # 1 when shown in a randomised (exploration) order
    ]
)

HIST_DTYPE = np.dtype(
    [
        ("item", "<i8"),
        ("cond", "<i8"),
        ("cat", "<i8"),
        ("ts", "<i8"),
        ("action", "u1"),
    ]
)


class SampleFormatError(ValueError):
    """A lum.samples message that is not a valid sample block."""


@dataclass(frozen=True)
class SampleBlock:
    """Samples of one source partition: fixed columns plus jagged history.

    Args:
        partition: the lum.events partition the samples came from.
        rows: (n,) SAMPLE_DTYPE.
        hist_lengths: (n,) int32, history events per sample (most recent last).
        hist: (sum(hist_lengths),) HIST_DTYPE, concatenated per sample.
    """

    partition: int
    rows: np.ndarray
    hist_lengths: np.ndarray
    hist: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def slice(self, start: int, stop: int) -> SampleBlock:
        offsets = np.concatenate(([0], np.cumsum(self.hist_lengths, dtype=np.int64)))
        return SampleBlock(
            self.partition,
            self.rows[start:stop],
            self.hist_lengths[start:stop],
            self.hist[offsets[start] : offsets[stop]],
        )


def encode_block(block: SampleBlock) -> bytes:
    n = len(block)
    first = int(block.rows["seq"][0]) if n else 0
    header = _HEADER.pack(MAGIC, block.partition, first, n, int(block.hist.shape[0]))
    return b"".join(
        (
            header,
            block.rows.astype(SAMPLE_DTYPE, copy=False).tobytes(),
            block.hist_lengths.astype("<i4", copy=False).tobytes(),
            block.hist.astype(HIST_DTYPE, copy=False).tobytes(),
        )
    )


def block_header(raw: bytes) -> tuple[int, int, int]:
    """(source partition, first seq, rows) of an encoded block, read from its header alone."""
    if len(raw) < _HEADER.size:
        raise SampleFormatError(f"sample block of {len(raw)} bytes is shorter than its header")
    magic, partition, first, n, _n_hist = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise SampleFormatError(f"bad magic {magic!r}: not a lumstream sample block")
    return partition, first, n


def decode_block(raw: bytes) -> SampleBlock:
    """Bytes from lum.samples -> SampleBlock; raises SampleFormatError on anything else."""
    if len(raw) < _HEADER.size:
        raise SampleFormatError(f"sample block of {len(raw)} bytes is shorter than its header")
    magic, partition, _first, n, n_hist = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise SampleFormatError(f"bad magic {magic!r}: not a lumstream sample block")
    if n < 0 or n_hist < 0:
        raise SampleFormatError(f"negative sizes in header (n={n}, n_hist={n_hist})")
    want = _HEADER.size + n * SAMPLE_DTYPE.itemsize + n * 4 + n_hist * HIST_DTYPE.itemsize
    if len(raw) != want:
        raise SampleFormatError(f"sample block is {len(raw)} bytes, header says {want}")
    pos = _HEADER.size
    rows = np.frombuffer(raw, SAMPLE_DTYPE, n, pos)
    pos += n * SAMPLE_DTYPE.itemsize
    lengths = np.frombuffer(raw, "<i4", n, pos)
    pos += n * 4
    hist = np.frombuffer(raw, HIST_DTYPE, n_hist, pos)
    if (n and lengths.min() < 0) or int(lengths.sum()) != n_hist:
        raise SampleFormatError("history lengths do not add up to the history size")
    return SampleBlock(partition, rows, lengths, hist)


def split_blocks(block: SampleBlock, max_rows: int) -> list[SampleBlock]:
    """Cut a block into messages of at most ``max_rows`` samples."""
    return [block.slice(i, min(i + max_rows, len(block))) for i in range(0, len(block), max_rows)]
