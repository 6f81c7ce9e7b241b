"""Sample files: lum.samples blocks in a local file (a backfill without Kafka).

Format (integers little-endian)::

    b"LSBFILE1"                      8-byte magic
    frame*                           u32 length | one sample block (length bytes)

A block is exactly a lum.samples message value (``streams.contracts.samples.encode_block``), so the
file holds what the topic would. A frame cut short by a crash can only be the last one:
:func:`iter_sample_file` stops before it and the writer
(:class:`streams.sinks.samples.SampleFileWriter`) truncates it when it reopens the file.

Example:
    >>> [len(b) for b in iter_sample_file(path)]  # doctest: +SKIP
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from streams.contracts.samples import SampleBlock, SampleFormatError, decode_block

MAGIC = b"LSBFILE1"
FRAME_LEN = struct.Struct("<I")


def frames(fh: BinaryIO, path: Path) -> Iterator[tuple[int, bytes]]:
    """(frame start, frame bytes) of the complete frames after the magic."""
    read = fh.read
    if read(len(MAGIC)) != MAGIC:
        raise SampleFormatError(f"{path}: not a lumstream sample file (bad magic)")
    pos = len(MAGIC)
    while True:
        head = read(FRAME_LEN.size)
        if len(head) < FRAME_LEN.size:
            return
        (size,) = FRAME_LEN.unpack(head)
        body = read(size)
        if len(body) < size:
            return
        yield pos, body
        pos += FRAME_LEN.size + size


def iter_frames(path: str | Path, start: int = 0) -> Iterator[tuple[int, bytes, int]]:
    """(frame start, block bytes, next frame start) from byte ``start`` (0: the first
    frame); a position returned as "next" resumes reading there."""
    path = Path(path)
    with path.open("rb") as fh:
        if start <= len(MAGIC):
            for pos, body in frames(fh, path):
                yield pos, body, pos + FRAME_LEN.size + len(body)
            return
        if fh.read(len(MAGIC)) != MAGIC:
            raise SampleFormatError(f"{path}: not a lumstream sample file (bad magic)")
        fh.seek(start)
        pos = start
        while True:
            head = fh.read(FRAME_LEN.size)
            if len(head) < FRAME_LEN.size:
                return
            (size,) = FRAME_LEN.unpack(head)
            body = fh.read(size)
            if len(body) < size:
                return
            yield pos, body, pos + FRAME_LEN.size + size
            pos += FRAME_LEN.size + size


def iter_sample_file(path: str | Path) -> Iterator[SampleBlock]:
    """The blocks of a sample file in order (a torn last frame is left out)."""
    path = Path(path)
    with path.open("rb") as fh:
        for _, body in frames(fh, path):
            yield decode_block(body)
