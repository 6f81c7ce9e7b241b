"""Dead letters keep the original bytes, carry reason and source in headers, and are counted."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from monitoring.metrics import Metrics
from streams.config import KafkaConfig
from streams.contracts.deadletters import (
    H_TRUNCATED,
    MAX_DETAIL_CHARS,
    SourceRef,
    decode_deadletter,
)
from streams.kafka.producer import make_producer
from streams.sinks.deadletters import DeadLetterWriter, read_deadletters


@dataclass
class FakeProducer:
    sent: list[tuple[str, bytes | None, bytes, tuple[tuple[str, bytes], ...]]] = field(
        default_factory=list
    )

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        self.sent.append((topic, key, value, headers))

    def flush(self, timeout_s: float | None = None) -> None:
        pass


@dataclass
class Record:
    """The attributes of a kafka-python consumer record that are read."""

    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    topic: str = "lum.deadletter"
    partition: int = 0
    offset: int = 0
    timestamp: int = 0


def _rejected(metrics: Metrics, stage: str, reason: str) -> float:
    return (
        metrics.registry.get_sample_value(
            "lumstream_events_rejected_total", {"stage": stage, "reason": reason}
        )
        or 0.0
    )


def test_headers_original_bytes_and_metric(metrics: Metrics) -> None:
    fake = FakeProducer()
    writer = DeadLetterWriter(fake, "dl", metrics)
    writer.send(
        b'{"user_id": 7',
        b"7",
        "malformed_json",
        "line 1: unexpected end",
        SourceRef("lum.events", 2, 41),
        stage="ingest",
    )
    writer.send(b"x", None, "missing_field", "ts: missing", None, stage="import")
    topic, key, value, headers = fake.sent[0]
    assert (topic, key, value) == ("dl", b"7", b'{"user_id": 7')
    assert dict(headers) == {
        "lum.reason": b"malformed_json",
        "lum.stage": b"ingest",
        "lum.detail": b"line 1: unexpected end",
        "lum.source.topic": b"lum.events",
        "lum.source.partition": b"2",
        "lum.source.offset": b"41",
    }
    assert "lum.source.topic" not in dict(fake.sent[1][3])
    assert _rejected(metrics, "ingest", "malformed_json") == 1
    assert _rejected(metrics, "import", "missing_field") == 1
    assert writer.count == 2


def test_oversized_original_is_truncated_with_a_header(metrics: Metrics) -> None:
    fake = FakeProducer()
    writer = DeadLetterWriter(fake, "dl", metrics, max_message_bytes=4096)
    original = bytes(range(256)) * 40  # 10,240 bytes
    writer.send(original, b"k" * 5000, "oversized", "d" * 5000, None, stage="ingest")
    _, key, value, headers = fake.sent[0]
    h = dict(headers)
    assert h[H_TRUNCATED] == b"10240"
    assert original.startswith(value)
    assert 0 < len(value) < 4096
    assert key is not None
    assert len(key) == 1024
    assert len(h["lum.detail"].decode()) == MAX_DETAIL_CHARS
    assert len(value) + len(key) + sum(len(k) + len(v) for k, v in headers) <= 4096


def test_decode_tolerates_foreign_records() -> None:
    dl = decode_deadletter(Record(b"raw", None, [("other", b"1"), ("lum.truncated", b"x")]))
    assert (dl.value, dl.reason, dl.detail, dl.source, dl.truncated_from) == (
        b"raw",
        "",
        "",
        None,
        None,
    )


@pytest.mark.integration
def test_dead_letter_round_trip(kafka_cfg: KafkaConfig, metrics: Metrics) -> None:
    bad = b'{"user_id": "\xff\xfe", "ts": NaN}'  # not UTF-8, not JSON
    huge = b"{" + b"x" * (kafka_cfg.max_message_bytes + 10)
    with make_producer(kafka_cfg, kafka_cfg.bootstrap_servers, metrics=metrics) as producer:
        writer = DeadLetterWriter.from_config(producer, kafka_cfg, metrics)
        writer.send(
            bad,
            b"user-9",
            "non_utf8",
            "user_id: invalid start byte 0xff",
            SourceRef(kafka_cfg.topic_events, 3, 1042),
            stage="ingest",
        )
        writer.send(huge, None, "oversized", f"{len(huge)} bytes", None, stage="import")
        writer.flush()
    letters = sorted(
        read_deadletters(kafka_cfg, kafka_cfg.bootstrap_servers), key=lambda d: d.reason
    )
    assert [d.reason for d in letters] == ["non_utf8", "oversized"]
    first, second = letters
    assert (first.value, first.key, first.stage) == (bad, b"user-9", "ingest")
    assert first.detail == "user_id: invalid start byte 0xff"
    assert first.source == SourceRef(kafka_cfg.topic_events, 3, 1042)
    assert first.truncated_from is None
    assert first.at.topic == kafka_cfg.topic_deadletter
    assert first.timestamp_ms > 0
    assert second.truncated_from == len(huge)
    assert huge.startswith(second.value)
    assert second.source is None
    assert second.key is None
    assert _rejected(metrics, "ingest", "non_utf8") == 1
    assert _rejected(metrics, "import", "oversized") == 1
