"""Sample files: lum.samples blocks in a local file (a backfill without Kafka).

Format (integers little-endian)::

    b"LSBFILE1"                      8-byte magic
    frame*                           u32 length | one sample block (length bytes)

A block is exactly a lum.samples message value (``streams.samples.encode_block``), so the
file holds what the topic would. A frame cut short by a crash can only be the last one:
:func:`iter_sample_file` stops before it and :class:`SampleFileWriter` truncates it when it
reopens the file.

Exactly once: the writer knows, per source partition, the next ``seq`` the file holds and
drops the rows below it, which a backfill resumed after a crash emits again (the same rows:
the processor is deterministic). So the file has each (partition, seq) once, in order.

Example:
    >>> with SampleFileWriter(path) as out:  # doctest: +SKIP
    ...     out.write(block)
    >>> [len(b) for b in iter_sample_file(path)]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from streams.samples import SampleBlock, SampleFormatError, decode_block, encode_block

MAGIC = b"LSBFILE1"
_LEN = struct.Struct("<I")
_BLOCK_HEADER = struct.Struct("<4sqqqq")  # streams.samples: magic, partition, first seq, n, n_hist


def _frames(fh: BinaryIO, path: Path) -> Iterator[tuple[int, bytes]]:
    """(frame start, frame bytes) of the complete frames after the magic."""
    read = fh.read
    if read(len(MAGIC)) != MAGIC:
        raise SampleFormatError(f"{path}: not a lumstream sample file (bad magic)")
    pos = len(MAGIC)
    while True:
        head = read(_LEN.size)
        if len(head) < _LEN.size:
            return
        (size,) = _LEN.unpack(head)
        body = read(size)
        if len(body) < size:
            return
        yield pos, body
        pos += _LEN.size + size


def iter_frames(path: str | Path, start: int = 0) -> Iterator[tuple[int, bytes, int]]:
    """(frame start, block bytes, next frame start) from byte ``start`` (0: the first
    frame); a position returned as "next" resumes reading there."""
    path = Path(path)
    with path.open("rb") as fh:
        if start <= len(MAGIC):
            for pos, body in _frames(fh, path):
                yield pos, body, pos + _LEN.size + len(body)
            return
        if fh.read(len(MAGIC)) != MAGIC:
            raise SampleFormatError(f"{path}: not a lumstream sample file (bad magic)")
        fh.seek(start)
        pos = start
        while True:
            head = fh.read(_LEN.size)
            if len(head) < _LEN.size:
                return
            (size,) = _LEN.unpack(head)
            body = fh.read(size)
            if len(body) < size:
                return
            yield pos, body, pos + _LEN.size + size
            pos += _LEN.size + size


def write_sample_file(
    path: str | Path, blocks: Iterable[SampleBlock], *, append: bool = False, sync: bool = False
) -> int:
    """Write ``blocks`` to a sample file (a new one unless ``append``); returns how many."""
    with SampleFileWriter(path, sync=sync, must_be_new=not append) as out:
        n = 0
        for block in blocks:
            out.write(block)
            n += 1
    return n


def iter_sample_file(path: str | Path) -> Iterator[SampleBlock]:
    """The blocks of a sample file in order (a torn last frame is left out)."""
    path = Path(path)
    with path.open("rb") as fh:
        for _, body in _frames(fh, path):
            yield decode_block(body)


class SampleFileWriter:
    """Appends sample blocks to a sample file, exactly once per (partition, seq).

    Args:
        path: the file; created with its magic, or reopened (torn tail cut off).
        sync: fsync on :meth:`flush` (do when the store fsyncs its batches).
        must_be_new: refuse an existing file that holds frames (a fresh backfill must
            not mix its samples with another run's).
    """

    def __init__(self, path: str | Path, *, sync: bool = True, must_be_new: bool = False) -> None:
        self.path = Path(path)
        self.sync = sync
        self.next_seq: dict[int, int] = {}
        self.written = 0
        end = self._scan(must_be_new)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("r+b" if end else "wb")
        if end:
            self._fh.truncate(end)
            self._fh.seek(end)
        else:
            self._fh.write(MAGIC)

    def _scan(self, must_be_new: bool) -> int:
        """Where appending starts (0: a new file); fills :attr:`next_seq`."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0
        end = len(MAGIC)
        with self.path.open("rb") as fh:
            for pos, body in _frames(fh, self.path):
                if must_be_new:
                    raise FileExistsError(
                        f"{self.path} already holds samples; remove it or write elsewhere"
                    )
                _, partition, first, n, _ = _BLOCK_HEADER.unpack_from(body)
                self.next_seq[partition] = max(self.next_seq.get(partition, 0), first + n)
                end = pos + _LEN.size + len(body)
        return end

    def write(self, block: SampleBlock) -> None:
        """Append ``block`` less the rows the file already has."""
        n = len(block)
        if n == 0:
            return
        first = int(block.rows["seq"][0])
        have = self.next_seq.get(block.partition, 0) - first
        if have >= n:
            return
        if have > 0:
            block = block.slice(have, n)
        raw = encode_block(block)
        self._fh.write(_LEN.pack(len(raw)) + raw)
        self.next_seq[block.partition] = int(block.rows["seq"][-1]) + 1
        self.written += len(block)

    def flush(self) -> None:
        self._fh.flush()
        if self.sync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self.flush()
            self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
