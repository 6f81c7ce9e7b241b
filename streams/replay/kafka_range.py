"""A Kafka topic between two timestamps as a replay source (``kafka:TOPIC``).

The range of each partition is ``[first offset with timestamp >= from_ts, first offset
with timestamp >= to_ts)`` (no ``from_ts``: the log start; no ``to_ts``: the end when the
range is resolved), which is what Kafka's ListOffsets-by-time (``offsets_for_times``)
answers. The broker's answer is checked against the records around it; where it is wrong
(tansu 0.6.0 answers offset 0 for every time) the offset is found by binary search over
record timestamps, which assumes they do not decrease within a partition (CreateTime of an
in-order producer, or LogAppendTime). While reading, a partition also stops at its first
record with timestamp >= ``to_ts``.

The ranges are resolved once and then pinned in the source's :meth:`identity`, so a resumed
run reads exactly the records the first run meant, whatever arrived since.

Partitions are merged into one deterministic order, by (record timestamp, partition,
offset): a resumed run continues the same sequence, and events of different partitions
interleave in time, as the label join wants. Positions are ``{"partition": next offset}``.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Self

from streams.config import KafkaConfig
from streams.contracts.deadletters import SourceRef
from streams.kafka.consumer import end_offsets, make_consumer
from streams.replay.base import Origin, ReplayError, user_key

_POLL_MS = 200
_BUFFER_RECORDS = 20_000  # per partition; a fuller partition is paused while others catch up


class KafkaRangeSource:
    """Records of ``topic`` in a time range, merged across partitions by timestamp.

    Args:
        kafka: client settings.
        bootstrap: the cluster.
        topic: the topic to read.
        from_ts / to_ts: the range in ms (None: open on that side).
        poll_records: records per poll.
    """

    unit = "records"

    def __init__(
        self,
        kafka: KafkaConfig,
        bootstrap: str,
        topic: str,
        from_ts: int | None = None,
        to_ts: int | None = None,
        *,
        poll_records: int = 5_000,
    ) -> None:
        if from_ts is not None and to_ts is not None and to_ts < from_ts:
            raise ReplayError(f"--to {to_ts} is before --from {from_ts}")
        self.kafka, self.bootstrap, self.topic = kafka, bootstrap, topic
        self.from_ts, self.to_ts = from_ts, to_ts
        self.poll_records = poll_records
        self.name = f"kafka:{topic}"
        self.timeout_s = max(kafka.request_timeout_ms / 1000.0, 10.0)
        self._ranges: dict[int, tuple[int, int]] | None = None

    def key(self) -> str:
        return f"kafka:{self.topic}:{self.from_ts}:{self.to_ts}"

    @property
    def ranges(self) -> dict[int, tuple[int, int]]:
        """``{partition: (start, stop)}``, resolved on first use."""
        if self._ranges is None:
            self._ranges = self._resolve()
        return self._ranges

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "kafka",
            "topic": self.topic,
            "from_ts": self.from_ts,
            "to_ts": self.to_ts,
            "ranges": {str(p): list(r) for p, r in sorted(self.ranges.items())},
        }

    def adopt(self, stored: Mapping[str, Any]) -> None:
        asked = ("kafka", self.topic, self.from_ts, self.to_ts)
        had = tuple(stored.get(k) for k in ("kind", "topic", "from_ts", "to_ts"))
        if had != asked:
            raise ReplayError(
                f"this run started from another source: {had[0]} {had[1]} "
                f"[{had[2]}, {had[3]}), not kafka {self.topic} [{self.from_ts}, {self.to_ts})"
            )
        self._ranges = {int(p): (int(r[0]), int(r[1])) for p, r in stored["ranges"].items()}

    def total(self) -> int:
        return sum(stop - start for start, stop in self.ranges.values())

    def open(self, position: Mapping[str, Any] | None) -> KafkaRangeReader:
        return KafkaRangeReader(self, position)

    def origin(self, where: Origin) -> SourceRef:
        return SourceRef(self.topic, where[0], where[1])

    # -- resolving the range -------------------------------------------------------------
    def _resolve(self) -> dict[int, tuple[int, int]]:
        from kafka import TopicPartition

        ends = end_offsets(self.kafka, self.bootstrap, self.topic)
        if not ends:
            raise ReplayError(f"topic {self.topic} does not exist or has no partitions")
        consumer = make_consumer(self.kafka, self.bootstrap, max_poll_records=1)
        try:
            tps = {p: TopicPartition(self.topic, p) for p in ends}
            begins = {
                tp.partition: int(o)
                for tp, o in consumer.beginning_offsets(list(tps.values())).items()
            }
            out: dict[int, tuple[int, int]] = {}
            for p, tp in tps.items():
                lo, hi = begins[p], ends[p]
                start = (
                    lo
                    if self.from_ts is None
                    else self._first_at(consumer, tp, self.from_ts, lo, hi)
                )
                stop = (
                    hi
                    if self.to_ts is None
                    else self._first_at(consumer, tp, self.to_ts, start, hi)
                )
                out[p] = (start, stop)
            return out
        finally:
            consumer.close()

    def _first_at(self, consumer: Any, tp: Any, ts: int, lo: int, hi: int) -> int:
        """The first offset in [lo, hi] whose record has timestamp >= ts (hi: none)."""
        if lo >= hi:
            return hi
        hint = _broker_answer(consumer, tp, ts, lo, hi)
        if hint is not None and self._verified(consumer, tp, ts, hint, lo, hi):
            return hint
        while lo < hi:  # first o with "the first record at or after o has ts >= ts, or none"
            mid = (lo + hi) // 2
            rec = self._record_at(consumer, tp, mid, hi)
            if rec is None or rec[1] >= ts:
                hi = mid
            else:
                lo = rec[0] + 1
        return lo

    def _verified(self, consumer: Any, tp: Any, ts: int, hint: int, lo: int, hi: int) -> bool:
        if hint < hi:
            at = self._record_at(consumer, tp, hint, hi)
            if at is None or at[0] != hint or at[1] < ts:
                return False
        if hint > lo:
            before = self._record_at(consumer, tp, hint - 1, hi)
            if before is None or before[0] != hint - 1 or before[1] >= ts:
                return False
        return True

    def _record_at(self, consumer: Any, tp: Any, offset: int, end: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record at or after ``offset``; None past ``end``."""
        if offset >= end:
            return None
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for rec in consumer.poll(timeout_ms=_POLL_MS, max_records=1).get(tp, ()):
                if rec.offset >= offset:
                    return None if rec.offset >= end else (int(rec.offset), int(rec.timestamp))
            if consumer.position(tp) >= end:
                return None
        raise ReplayError(f"{tp.topic}[{tp.partition}]: no record at offset {offset} (timeout)")


def _broker_answer(consumer: Any, tp: Any, ts: int, lo: int, hi: int) -> int | None:
    """What ListOffsets-by-time says (None when the broker cannot answer)."""
    try:
        found = consumer.offsets_for_times({tp: ts}).get(tp)
    except Exception:  # an old broker without ListOffsets v1: the search will do
        return None
    return hi if found is None else min(max(int(found.offset), lo), hi)


class KafkaRangeReader:
    """One pass over a :class:`KafkaRangeSource` from per-partition offsets, merged by time."""

    def __init__(self, source: KafkaRangeSource, position: Mapping[str, Any] | None) -> None:
        self.source = source
        ranges = source.ranges
        self._stop = {p: stop for p, (_, stop) in ranges.items()}
        self._start = {p: start for p, (start, _) in ranges.items()}
        self._pos = dict(self._start)
        if position:
            self._pos.update({int(p): int(o) for p, o in position.items()})
        self._consumer: Any = None

    def position(self) -> dict[str, Any]:
        return {str(p): o for p, o in sorted(self._pos.items())}

    def done(self) -> int:
        return sum(min(self._pos[p], self._stop[p]) - self._start[p] for p in self._pos)

    def __iter__(self) -> Iterator[tuple[bytes | None, bytes, Origin]]:
        from kafka import TopicPartition

        src = self.source
        tps = {
            p: TopicPartition(src.topic, p)
            for p in sorted(self._pos)
            if self._pos[p] < self._stop[p]
        }
        if not tps:
            return
        self._consumer = consumer = make_consumer(
            src.kafka, src.bootstrap, max_poll_records=src.poll_records
        )
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            consumer.seek(tp, self._pos[p])
        buffers: dict[int, deque[Any]] = {p: deque() for p in tps}
        fetching = set(tps)  # partitions with records left to fetch
        paused: set[int] = set()
        heads: list[tuple[int, int, int]] = []  # (timestamp, partition, offset) of each head
        to_ts = src.to_ts
        while True:
            waiting = [p for p in fetching if not buffers[p]]
            if waiting:
                self._fill(consumer, tps, buffers, fetching, paused, waiting)
                for p in waiting:
                    if buffers[p]:
                        rec = buffers[p][0]
                        heapq.heappush(heads, (int(rec.timestamp), p, int(rec.offset)))
                continue
            if not heads:
                return
            _, p, _ = heapq.heappop(heads)
            rec = buffers[p].popleft()
            if to_ts is not None and rec.timestamp >= to_ts:  # the partition ends here
                buffers[p].clear()
                if p in fetching:
                    fetching.discard(p)
                    consumer.pause(tps[p])
                self._stop[p] = self._pos[p]
                continue
            self._pos[p] = int(rec.offset) + 1
            if buffers[p]:
                nxt = buffers[p][0]
                heapq.heappush(heads, (int(nxt.timestamp), p, int(nxt.offset)))
            value = bytes(rec.value or b"")  # a tombstone is dead-lettered downstream
            yield (rec.key if rec.key is not None else user_key(value)), value, (p, rec.offset)

    def _fill(
        self,
        consumer: Any,
        tps: dict[int, Any],
        buffers: dict[int, deque[Any]],
        fetching: set[int],
        paused: set[int],
        waiting: list[int],
    ) -> None:
        """Poll until every partition in ``waiting`` has a record or nothing left."""
        deadline = time.monotonic() + self.source.timeout_s
        while any(p in fetching and not buffers[p] for p in waiting):
            if time.monotonic() > deadline:
                late = [p for p in waiting if p in fetching and not buffers[p]]
                raise ReplayError(
                    f"{self.source.topic}: partitions {late} returned no records before "
                    f"their end offsets {[self._stop[p] for p in late]} (timeout)"
                )
            for tp, records in consumer.poll(timeout_ms=_POLL_MS).items():
                p, stop = tp.partition, self._stop[tp.partition]
                if p not in fetching:
                    continue
                buffers[p].extend(r for r in records if r.offset < stop)
            for p in list(fetching):
                if consumer.position(tps[p]) >= self._stop[p]:
                    fetching.discard(p)  # everything up to the stop offset is buffered
                    consumer.pause(tps[p])
                    paused.add(p)
            for p in fetching:  # keep memory bounded: pause the partitions far ahead
                full = len(buffers[p]) >= _BUFFER_RECORDS
                if full and p not in paused:
                    consumer.pause(tps[p])
                    paused.add(p)
                elif not full and p in paused:
                    consumer.resume(tps[p])
                    paused.discard(p)

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
