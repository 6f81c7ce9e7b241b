"""The Kafka time-range source: exactly [from, to), merged by time, pinned, resumable."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics
from streams.config import KafkaConfig
from streams.kafka.consumer import read_topic
from streams.kafka.producer import Producer
from streams.replay.kafka_range import KafkaRangeSource
from streams.replay.sources import ReplayError, open_source

T0 = 1_767_225_600_000
N = 600


def produce(kafka_cfg: KafkaConfig, bootstrap: str) -> list[Any]:
    """N records over 4 partitions, timestamps T0 + 10*i (increasing in every partition),
    flushed in several batches; returns the topic's records."""
    with Producer(kafka_cfg, bootstrap, metrics=Metrics(CollectorRegistry())) as producer:
        for i in range(N):
            key = b"u%d" % (i % 13)
            value = b'{"n":%d}' % i
            producer.send(kafka_cfg.topic_events, key, value, timestamp_ms=T0 + 10 * i)
            if i % 97 == 0:
                producer.flush()
    records = read_topic(kafka_cfg, bootstrap, kafka_cfg.topic_events)
    assert len(records) == N
    return records


def read(src: KafkaRangeSource, position: dict[str, int] | None = None) -> list[tuple[Any, ...]]:
    with src.open(position) as reader:
        return list(reader)


@pytest.mark.integration
def test_a_time_range_is_exactly_the_records_in_it(kafka_cfg: KafkaConfig, broker: Any) -> None:
    records = produce(kafka_cfg, broker.bootstrap)
    by_place = {(r.partition, r.offset): r for r in records}
    lo, hi = T0 + 10 * 123 + 5, T0 + 10 * 456  # from between two records, to exactly on one
    src = open_source(
        f"kafka:{kafka_cfg.topic_events}",
        kafka=kafka_cfg,
        bootstrap=broker.bootstrap,
        from_ts=lo,
        to_ts=hi,
    )
    assert isinstance(src, KafkaRangeSource)
    got = read(src)
    want = {(r.partition, r.offset) for r in records if lo <= r.timestamp < hi}
    assert [o for _, _, o in got] != []
    assert {o for _, _, o in got} == want
    assert len(got) == len(want) == 456 - 124
    assert src.total() == len(want)
    stamps = [(by_place[o].timestamp, o[0], o[1]) for _, _, o in got]
    assert stamps == sorted(stamps)  # merged by time
    for key, value, o in got:
        assert (key, value) == (by_place[o].key, by_place[o].value)
    ranges = src.identity()["ranges"]
    assert set(ranges) == {"0", "1", "2", "3"}


@pytest.mark.integration
def test_open_ends_and_resume_from_a_position(kafka_cfg: KafkaConfig, broker: Any) -> None:
    records = produce(kafka_cfg, broker.bootstrap)
    src = KafkaRangeSource(
        kafka_cfg, broker.bootstrap, kafka_cfg.topic_events, from_ts=T0 + 10 * 500
    )
    assert len(read(src)) == 100
    src = KafkaRangeSource(kafka_cfg, broker.bootstrap, kafka_cfg.topic_events, to_ts=T0 + 10 * 50)
    assert len(read(src)) == 50
    whole = KafkaRangeSource(kafka_cfg, broker.bootstrap, kafka_cfg.topic_events)
    full = read(whole)
    assert len(full) == len(records)
    with whole.open(None) as reader:
        it = iter(reader)
        head = [next(it) for _ in range(211)]
        position = reader.position()
        assert reader.done() == 211
    assert head + read(whole, position) == full


@pytest.mark.integration
def test_ranges_are_pinned_and_checked_on_resume(kafka_cfg: KafkaConfig, broker: Any) -> None:
    produce(kafka_cfg, broker.bootstrap)
    topic = kafka_cfg.topic_events
    first = KafkaRangeSource(kafka_cfg, broker.bootstrap, topic, from_ts=T0)
    stored = first.identity()
    before = len(read(first))
    with Producer(kafka_cfg, broker.bootstrap, metrics=Metrics(CollectorRegistry())) as p:
        p.send(topic, b"u1", b"late", timestamp_ms=T0 + 10 * N)
    again = KafkaRangeSource(kafka_cfg, broker.bootstrap, topic, from_ts=T0)
    again.adopt(stored)
    assert len(read(again)) == before  # the resumed run reads the range the first one meant
    assert len(read(KafkaRangeSource(kafka_cfg, broker.bootstrap, topic, from_ts=T0))) == before + 1
    with pytest.raises(ReplayError, match="another source"):
        KafkaRangeSource(kafka_cfg, broker.bootstrap, topic, from_ts=T0 + 1).adopt(stored)
    with pytest.raises(ReplayError, match="before"):
        KafkaRangeSource(kafka_cfg, broker.bootstrap, topic, from_ts=T0 + 1, to_ts=T0)
    with pytest.raises(ReplayError, match="does not exist"):
        KafkaRangeSource(kafka_cfg, broker.bootstrap, topic + ".missing").total()


class FakeConsumer:
    """One partition of (offset, timestamp) records, with gaps; the broker's time lookup
    answers ``answer(ts)``."""

    def __init__(self, records: list[tuple[int, int]], answer: Any) -> None:
        self.records, self.answer, self.pos, self.fetches = records, answer, 0, 0

    def assign(self, tps: list[Any]) -> None:
        pass

    def seek(self, tp: Any, offset: int) -> None:
        self.pos = offset

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.fetches += 1
        for off, ts in self.records:
            if off >= self.pos:
                self.pos = off + 1
                return {"tp": [SimpleNamespace(offset=off, timestamp=ts)]}
        self.pos = max(self.pos, self.records[-1][0] + 1)
        return {}

    def position(self, tp: Any) -> int:
        return self.pos

    def offsets_for_times(self, query: dict[Any, int]) -> dict[Any, Any]:
        off = self.answer(next(iter(query.values())))
        return {"tp": None if off is None else SimpleNamespace(offset=off)}


@pytest.mark.parametrize("broker_is", ["right", "wrong", "unable"])
def test_first_offset_at_a_time_with_a_right_or_wrong_broker(broker_is: str) -> None:
    records = [(o, 1000 + 10 * o) for o in range(50) if o % 7 != 3]  # gaps: compacted away
    end = 50

    def truth(ts: int) -> int | None:
        return next((o for o, t in records if t >= ts), None)

    def answer(ts: int) -> int | None:
        if broker_is == "unable":
            raise RuntimeError("ListOffsets v1 unsupported")
        return truth(ts) if broker_is == "right" else 0  # tansu 0.6.0: always 0

    src = KafkaRangeSource(KafkaConfig(), "unused:9092", "t")
    for ts in (0, 1000, 1001, 1030, 1031, 1255, 1490, 1491, 5000):
        consumer = FakeConsumer(records, answer)
        got = src._first_at(consumer, "tp", ts, 0, end)
        want = truth(ts)
        # an offset inside a gap is as good as the record after it: the same records follow
        first_after = next((o for o, _ in records if o >= got), end)
        assert first_after == (end if want is None else want), ts
        if broker_is == "right" and (want is None or want % 7 != 4):
            assert consumer.fetches <= 2  # verified (unless a gap hides its predecessor)
