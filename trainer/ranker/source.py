"""Where the ranker's samples come from, and exactly-once assembly into global batches.

A :class:`SampleSource` yields :class:`Message` s (topic partition, offset, value, next
offset) and can be positioned. Backends: :class:`KafkaSource` (``lum.samples``, every
partition assigned, positions from the checkpoint, not a consumer group),
:class:`FileSource` (a file of length-prefixed sample blocks: ``<u4 little-endian length>
<block>`` repeated; the offset is the byte position) and :class:`MemorySource` (tests).

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
from typing import Any, NamedTuple, Protocol

import numpy as np

from monitoring.metrics import Metrics
from streams.samplefile import iter_frames
from streams.samples import SampleBlock, SampleFormatError, decode_block, encode_block
from trainer.ranker.batch import Samples

log = logging.getLogger(__name__)


class Message(NamedTuple):
    """One record: ``next_offset`` is where reading continues after it."""

    partition: int
    offset: int
    value: bytes
    next_offset: int


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
class FileSource:
    """A sample file, read once from the start (or from a checkpoint position).

    Args:
        path: a sample file (``streams.samplefile``: a backfill's ``--samples-out``).
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


class MemorySource:
    """Pre-encoded messages held in memory (tests, benchmarks).

    Args:
        values: record values of topic partition 0, offsets 0, 1, ...
    """

    def __init__(self, values: list[bytes]) -> None:
        self.values = values
        self._next = 0

    @classmethod
    def of_blocks(cls, blocks: Iterable[SampleBlock]) -> MemorySource:
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


class KafkaSource:
    """Every partition of the samples topic, positioned explicitly (offsets live in the
    ranker's checkpoint, so no consumer group is needed).

    Args:
        consumer: a kafka-python ``KafkaConsumer`` without subscriptions (see
            :func:`streams.kafka.make_consumer`); closed by :meth:`close`.
        topic: the samples topic.
        start: ``earliest`` or ``latest`` for partitions without a position.
        stop_at: finite mode (replay): partition -> end offset (from
            :func:`streams.kafka.end_offsets`, which knows tansu's listing quirk); exhausted
            once every partition reached it. None: never exhausted.
    """

    def __init__(
        self,
        consumer: Any,
        topic: str,
        start: str = "earliest",
        stop_at: dict[int, int] | None = None,
    ) -> None:
        from kafka import TopicPartition

        self.consumer, self.topic = consumer, topic
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        self.tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(self.tps)
        if start == "latest":
            consumer.seek_to_end(*self.tps)
        else:
            consumer.seek_to_beginning(*self.tps)
        self._end = stop_at
        self._buffer: deque[Message] = deque()

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        if len(self._buffer) < max_messages:
            got = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_messages)
            recs = sorted(
                (r for rs in got.values() for r in rs), key=lambda r: (r.partition, r.offset)
            )
            self._buffer.extend(Message(r.partition, r.offset, r.value, r.offset + 1) for r in recs)
        n = min(max_messages, len(self._buffer))
        return [self._buffer.popleft() for _ in range(n)]

    def seek(self, positions: dict[int, int]) -> None:
        self._buffer.clear()
        for tp in self.tps:
            if tp.partition in positions:
                self.consumer.seek(tp, positions[tp.partition])

    def finish_at(self, ends: dict[int, int]) -> None:
        """From now on finite: exhausted once every partition reached ``ends`` (a live
        source drained at shutdown; safe to call from another thread)."""
        self._end = dict(ends)

    def exhausted(self) -> bool:
        if self._end is None or self._buffer:
            return False
        return all(self.consumer.position(tp) >= self._end.get(tp.partition, 0) for tp in self.tps)

    def lag(self) -> dict[int, int]:
        out = {}
        for tp in self.tps:
            high = self.consumer.highwater(tp)
            if high is not None:
                out[tp.partition] = max(0, high - self.consumer.position(tp))
        return out

    def close(self) -> None:
        self.consumer.close()


# -- assembly -----------------------------------------------------------------------------------
class _Pending(NamedTuple):
    partition: int  # topic partition
    offset: int
    samples: Samples


class Assembler:
    """Blocks in, deduplicated rows out in arrival order; resume positions for checkpoints.

    Args:
        hwm: source partition -> last learned ``seq`` (from a checkpoint).
        positions: topic partition -> offset to resume at (from a checkpoint).
        metrics: ``ranker_samples_skipped{reason=duplicate|corrupt_block}``.
        ts_range: keep only samples with ``from <= ts < to`` (replay of a time range).
    """

    def __init__(
        self,
        hwm: dict[int, int] | None = None,
        positions: dict[int, int] | None = None,
        metrics: Metrics | None = None,
        ts_range: tuple[int, int] | None = None,
    ) -> None:
        self.learned_hwm: dict[int, int] = dict(hwm or {})
        self._taken_hwm: dict[int, int] = dict(hwm or {})
        self._next: dict[int, int] = dict(positions or {})
        self._pending: deque[_Pending] = deque()
        self._rows = 0
        self.metrics, self.ts_range = metrics, ts_range
        self.last_arrival = time.monotonic()

    def _skip(self, reason: str, n: int) -> None:
        if n and self.metrics is not None:
            self.metrics.ranker_samples_skipped.labels(reason=reason).inc(n)

    def add(self, messages: Iterable[Message]) -> None:
        """Decode and queue; corrupt blocks and already-taken samples are skipped."""
        for m in messages:
            self._next[m.partition] = m.next_offset
            try:
                block = decode_block(m.value)
            except SampleFormatError as exc:
                log.warning("lum.samples %d@%d: %s; skipped", m.partition, m.offset, exc)
                self._skip("corrupt_block", 1)
                continue
            s = Samples.from_block(block)
            hwm = self._taken_hwm.get(block.partition, -1)
            keep = s.rows["seq"] > hwm
            if self.ts_range is not None:
                lo, hi = self.ts_range
                keep &= (s.rows["ts"] >= lo) & (s.rows["ts"] < hi)
            self._skip("duplicate", int((s.rows["seq"] <= hwm).sum()))
            s = s.select(keep)
            if len(s):
                self._taken_hwm[block.partition] = max(hwm, int(s.rows["seq"].max()))
                self._pending.append(_Pending(m.partition, m.offset, s))
                self._rows += len(s)
                self.last_arrival = time.monotonic()

    def available(self) -> int:
        return self._rows

    def take(self, n: int) -> Samples:
        """Up to ``n`` rows from the front."""
        parts: list[Samples] = []
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
                self._pending[0] = _Pending(head.partition, head.offset, rest)
                want = 0
        out = Samples.concat(parts)
        self._rows -= len(out)
        return out

    def learned(self, samples: Samples) -> None:
        """Mark a taken batch as learned (its rows will not be replayed after a restart)."""
        for p in np.unique(samples.partition).tolist():
            seq = int(samples.rows["seq"][samples.partition == p].max())
            self.learned_hwm[int(p)] = max(self.learned_hwm.get(int(p), -1), seq)

    def positions(self) -> dict[int, int]:
        """Topic partition -> offset to resume at: the oldest message with rows not taken,
        else after the last message read."""
        out = dict(self._next)
        for pend in self._pending:
            out[pend.partition] = min(out.get(pend.partition, pend.offset), pend.offset)
        return out
