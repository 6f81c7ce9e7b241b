"""Where sample blocks go: the :class:`SampleSink` protocol, the samples topic and sample
files.

Everything written is durable once :meth:`SampleSink.flush` returns. Both sinks take the
blocks a worker (or a backfill) emits again after a crash: Kafka consumers drop repeats by
(partition, seq); :class:`SampleFileWriter` drops them itself, so a file holds each
(partition, seq) once, in order (the processor is deterministic, so the repeated rows are
the same rows).

Example:
    >>> with SampleFileWriter(path) as out:  # doctest: +SKIP
    ...     out.write(block)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from streams.contracts.samplefile import FRAME_LEN, MAGIC, frames
from streams.contracts.samples import SampleBlock, block_header, encode_block
from streams.kafka.producer import Producer


class SampleSink(Protocol):
    """Takes sample blocks; everything written is durable once :meth:`flush` returns."""

    def write(self, block: SampleBlock) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class KafkaSampleSink:
    """Sample blocks to ``topic`` keyed ``p<partition>``, like the live worker's."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer, self.topic = producer, topic

    def write(self, block: SampleBlock) -> None:
        self.producer.send(self.topic, b"p%d" % block.partition, encode_block(block))

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()


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
            for pos, body in frames(fh, self.path):
                if must_be_new:
                    raise FileExistsError(
                        f"{self.path} already holds samples; remove it or write elsewhere"
                    )
                partition, first, n = block_header(body)
                self.next_seq[partition] = max(self.next_seq.get(partition, 0), first + n)
                end = pos + FRAME_LEN.size + len(body)
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
        self._fh.write(FRAME_LEN.pack(len(raw)) + raw)
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
