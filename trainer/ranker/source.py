"""Where the ranker's samples come from, and exactly-once assembly into global batches.

A :class:`SampleSource` yields :class:`~streams.kafka.consumer.Message` s (topic partition,
offset, value, next offset) and can be positioned. Backends:
:class:`streams.kafka.consumer.PositionedConsumer` (``lum.samples``, every partition
assigned, positions from the checkpoint, not a consumer group),
:class:`SampleFileSource` (a file of length-prefixed sample blocks: ``<u4 little-endian length>
<block>`` repeated; the offset is the byte position) and :class:`MemorySampleSource` (tests).

:class:`Assembler` decodes blocks (a corrupt one is counted and skipped), drops samples
already taken (``seq`` <= the high-water mark of their source partition: re-sent samples
after a worker crash, or re-read ones after a restart) and hands out rows in arrival order.
For a checkpoint it says where to resume: per topic partition the offset of the oldest
message that still has rows not learned, and per source partition the last learned
``seq``. Restarting there re-reads a little and skips what was learned: no sample is
skipped or learned twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from monitoring.metrics import Metrics
from streams.contracts.samplefile import iter_frames
from streams.contracts.samples import SampleBlock, SampleFormatError, decode_block, encode_block
from streams.kafka.consumer import Message
from trainer.ranker.batch import Samples
from trainer.ranker.seen import MAX_HOLES, SeenSeqs

log = logging.getLogger(__name__)


class SampleSource(Protocol):
    """Anything that yields lum.samples records."""

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Up to ``max_messages`` records (waiting up to ``timeout_s`` for the first)."""
        ...

    def seek(self, positions: dict[int, int]) -> None:
        """Continue each listed partition at its offset (others from their start)."""
        ...

    def exhausted(self) -> bool:
        """True when nothing more will ever come (finite sources at their end)."""
        ...

    def lag(self) -> dict[int, int]:
        """Records (or bytes, for files) behind the end, per partition."""
        ...

    def close(self) -> None: ...


# -- files --------------------------------------------------------------------------------------
class SampleFileSource:
    """A sample file, read once from the start (or from a checkpoint position).

    Args:
        path: a sample file (``streams.contracts.samplefile``: a backfill's ``--samples-out``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._it: Iterator[Message] = self._read(0)
        self._done = False
        self._pos = 0

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        out: list[Message] = []
        for msg in self._it:
            out.append(msg)
            self._pos = msg.next_offset
            if len(out) >= max_messages:
                return out
        self._done = True
        return out

    def _read(self, start: int) -> Iterator[Message]:
        return (Message(0, pos, body, nxt) for pos, body, nxt in iter_frames(self.path, start))

    def seek(self, positions: dict[int, int]) -> None:
        self._pos = positions.get(0, 0)
        self._it = self._read(self._pos)
        self._done = False

    def exhausted(self) -> bool:
        return self._done

    def lag(self) -> dict[int, int]:
        return {0: max(0, self.path.stat().st_size - self._pos)}

    def close(self) -> None:
        self._it = iter(())


class MemorySampleSource:
    """Pre-encoded messages held in memory (tests, benchmarks).

    Args:
        values: record values of topic partition 0, offsets 0, 1, ...
    """

    def __init__(self, values: list[bytes]) -> None:
        self.values = values
        self._next = 0

    @classmethod
    def of_blocks(cls, blocks: Iterable[SampleBlock]) -> MemorySampleSource:
        return cls([encode_block(b) for b in blocks])

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        end = min(len(self.values), self._next + max_messages)
        out = [Message(0, i, self.values[i], i + 1) for i in range(self._next, end)]
        self._next = end
        return out

    def seek(self, positions: dict[int, int]) -> None:
        self._next = positions.get(0, 0)

    def exhausted(self) -> bool:
        return self._next >= len(self.values)

    def lag(self) -> dict[int, int]:
        return {0: len(self.values) - self._next}

    def close(self) -> None:
        return None


# -- assembly -----------------------------------------------------------------------------------
class _Pending(NamedTuple):
    partition: int  # topic partition
    offset: int
    samples: Samples
    timestamp_ms: int  # the message's Kafka timestamp (0: none)


class Assembler:
    """Blocks in, deduplicated rows out in arrival order; resume positions for checkpoints.

    Args:
        seen: source partition -> the seqs already learned (from a checkpoint): a re-sent
            sample that fills a hole below the high-water mark is still taken.
        positions: topic partition -> offset to resume at (from a checkpoint).
        metrics: ``ranker_samples_skipped{reason=duplicate|corrupt_block}``.
        ts_range: keep only samples with ``from <= ts < to`` (replay of a time range).
    """

    def __init__(
        self,
        seen: dict[int, SeenSeqs] | None = None,
        positions: dict[int, int] | None = None,
        metrics: Metrics | None = None,
        ts_range: tuple[int, int] | None = None,
    ) -> None:
        self.learned_seen: dict[int, SeenSeqs] = {p: x.copy() for p, x in (seen or {}).items()}
        self._taken: dict[int, SeenSeqs] = {p: x.copy() for p, x in (seen or {}).items()}
        self._next: dict[int, int] = dict(positions or {})
        self._pending: deque[_Pending] = deque()
        self._rows = 0
        self.metrics, self.ts_range = metrics, ts_range
        self.last_arrival = time.monotonic()
        # topic partition -> Kafka timestamp (ms) of the newest message read
        self.read_timestamps: dict[int, int] = {}
        # the Kafka timestamp (ms, 0: none) of each row of the last :meth:`take`
        self.taken_timestamps = np.zeros(0, np.int64)

    def _skip(self, reason: str, n: int) -> None:
        if n and self.metrics is not None:
            self.metrics.ranker_samples_skipped.labels(reason=reason).inc(n)

    def add(self, messages: Iterable[Message]) -> None:
        """Decode and queue; corrupt blocks and already-taken samples are skipped."""
        for m in messages:
            self._next[m.partition] = m.next_offset
            if m.timestamp_ms > 0:
                self.read_timestamps[m.partition] = max(
                    m.timestamp_ms, self.read_timestamps.get(m.partition, 0)
                )
            try:
                block = decode_block(m.value)
            except SampleFormatError as exc:
                log.warning("lum.samples %d@%d: %s; skipped", m.partition, m.offset, exc)
                self._skip("corrupt_block", 1)
                continue
            s = Samples.from_block(block)
            taken = self._taken.setdefault(block.partition, SeenSeqs())
            seqs = s.rows["seq"]
            new = taken.unseen(seqs)
            self._skip("duplicate", int(len(s) - new.sum()))
            taken.add(seqs)
            keep = new
            if self.ts_range is not None:
                lo, hi = self.ts_range
                inside = (s.rows["ts"] >= lo) & (s.rows["ts"] < hi)
                # outside the range is never learned: settled now, so it leaves no hole
                self.learned_seen.setdefault(block.partition, SeenSeqs()).add(seqs[new & ~inside])
                keep = new & inside
            self._note_gaps(block.partition)
            s = s.select(keep)
            if len(s):
                self._pending.append(_Pending(m.partition, m.offset, s, m.timestamp_ms))
                self._rows += len(s)
                self.last_arrival = time.monotonic()

    def available(self) -> int:
        return self._rows

    def take(self, n: int) -> Samples:
        """Up to ``n`` rows from the front."""
        parts: list[Samples] = []
        stamps: list[np.ndarray] = []
        want = n
        while want > 0 and self._pending:
            head = self._pending[0]
            if len(head.samples) <= want:
                parts.append(head.samples)
                want -= len(head.samples)
                self._pending.popleft()
            else:
                parts.append(head.samples.slice(0, want))
                rest = head.samples.slice(want, len(head.samples))
                self._pending[0] = head._replace(samples=rest)
                want = 0
            stamps.append(np.full(len(parts[-1]), head.timestamp_ms, np.int64))
        out = Samples.concat(parts)
        self.taken_timestamps = np.concatenate(stamps) if stamps else np.zeros(0, np.int64)
        self._rows -= len(out)
        return out

    def _note_gaps(self, partition: int) -> None:
        taken = self._taken[partition]
        if self.metrics is not None:
            self.metrics.ranker_sample_gap.labels(partition=str(partition)).set(taken.missing())
        if taken.forgotten:
            log.warning(
                "lum.samples source partition %d: more than %d gaps; the oldest %d samples "
                "are no longer waited for",
                partition,
                MAX_HOLES,
                taken.forgotten,
            )
            self._skip("gap_forgotten", taken.forgotten)
            taken.forgotten = 0

    def learned(self, samples: Samples) -> None:
        """Mark a taken batch as learned (its rows will not be replayed after a restart)."""
        for p in np.unique(samples.partition).tolist():
            seqs = samples.rows["seq"][samples.partition == p]
            self.learned_seen.setdefault(int(p), SeenSeqs()).add(seqs)

    def positions(self) -> dict[int, int]:
        """Topic partition -> offset to resume at: the oldest message with rows not taken,
        else after the last message read."""
        out = dict(self._next)
        for pend in self._pending:
            out[pend.partition] = min(out.get(pend.partition, pend.offset), pend.offset)
        return out
