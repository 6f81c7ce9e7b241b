"""Event-log sinks (JSONL, gzip, Parquet): atomic writes and reading back."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics
from streams.config import EventConfig
from streams.contracts.eventlog import iter_event_log
from streams.contracts.events import Event, EventError, decode, encode
from streams.sinks.events import EventSink, JsonlSink, ParquetSink, open_sink

CFG = EventConfig()
NOW = 1_767_225_600_000
EVENTS = [
    Event("e1", "u1", "i1", "impression", "Comedy", NOW - 3, {"category": "Comedy", "page": 1}),
    Event("e2", "u1", "i1", "click", "Comedy", NOW - 2),
    Event("e3", "ü2", "i9", "purchase", "Sci-Fi", NOW - 1, {"price": 9.5, "promo": False}),
]


def _read_back(path: Path) -> list[tuple[int, Event]]:
    return [(n, decode(raw, CFG, now_ms=NOW)) for n, raw in iter_event_log(path)]


@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz", "events.parquet"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    sink: EventSink = open_sink(path)
    for ev in EVENTS:
        sink.write(ev)
    sink.close()
    assert sink.count == len(EVENTS)
    assert [ev for _, ev in _read_back(path)] == EVENTS
    assert [n for n, _ in _read_back(path)] == [1, 2, 3]


def test_jsonl_lines_are_the_wire_bytes(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    with JsonlSink(path) as sink:
        for ev in EVENTS:
            sink.write(ev)
    assert path.read_bytes() == b"".join(encode(ev) + b"\n" for ev in EVENTS)


def test_gzip_output_is_gzip(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl.gz"
    with JsonlSink(path) as sink:
        sink.write(EVENTS[0])
    assert gzip.decompress(path.read_bytes()) == encode(EVENTS[0]) + b"\n"


@pytest.mark.parametrize("name", ["e.jsonl", "e.jsonl.gz", "e.parquet"])
def test_write_is_atomic(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    sink = open_sink(path)
    sink.write(EVENTS[0])
    assert not path.exists()
    assert sink.tmp_path.exists()
    sink.close()
    assert path.exists()
    assert not sink.tmp_path.exists()
    sink.close()  # idempotent


@pytest.mark.parametrize("name", ["e.jsonl", "e.parquet"])
def test_abort_leaves_no_file_and_keeps_an_old_one(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with open_sink(path) as sink:
        sink.write(EVENTS[0])
    before = path.read_bytes()
    sink = open_sink(path)

    def fail_midway() -> None:
        with sink:
            sink.write(EVENTS[1])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_midway()
    assert path.read_bytes() == before
    assert not sink.tmp_path.exists()


def test_write_after_close_is_an_error(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "e.jsonl")
    sink.close()
    with pytest.raises(ValueError, match="after close"):
        sink.write(EVENTS[0])


def test_unknown_suffix_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.parquet"):
        open_sink(tmp_path / "events.csv")


def test_parquet_batches_into_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    with ParquetSink(path, batch_rows=2) as sink:
        for ev in EVENTS:
            sink.write(ev)
    meta = pq.read_metadata(path)
    assert meta.num_row_groups == 2
    table = pq.read_table(path)
    assert table.column("features").to_pylist() == [
        '{"category":"Comedy","page":1}',
        None,
        '{"price":9.5,"promo":false}',
    ]
    assert table.schema.field("ts").type == pa.int64()


def test_sinks_count_produced_events(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    with JsonlSink(tmp_path / "e.jsonl", metrics=metrics, source="test") as sink:
        for ev in EVENTS:
            sink.write(ev)
    value = metrics.registry.get_sample_value(
        "lumstream_events_produced_total", {"topic": "file", "source": "test"}
    )
    assert value == len(EVENTS)


def test_jsonl_reader_skips_blank_lines_and_keeps_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(encode(EVENTS[0]) + b"\n\n  \r\n{broken\r\n" + encode(EVENTS[1]))
    rows = list(iter_event_log(path))
    assert [n for n, _ in rows] == [1, 4, 5]
    assert rows[1][1] == b"{broken"
    assert decode(rows[2][1], CFG, now_ms=NOW) == EVENTS[1]


def test_parquet_reader_rejects_a_table_that_is_not_an_event_log(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"user_id": ["u"], "x": [1]}), path)
    with pytest.raises(ValueError, match="missing column"):
        list(iter_event_log(path))


def test_parquet_reader_nulls_and_corrupt_features_reach_decode(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    cols = {
        c: [getattr(EVENTS[0], c)] * 3
        for c in ("event_id", "user_id", "item_id", "action", "condition", "ts")
    }
    cols["user_id"] = ["u", None, "u"]
    pq.write_table(pa.table({**cols, "features": ['{"a":1}', None, "{oops"]}), path)
    rows = list(iter_event_log(path))
    assert decode(rows[0][1], CFG, now_ms=NOW).features == {"a": 1}
    with pytest.raises(EventError, match="user_id"):
        decode(rows[1][1], CFG, now_ms=NOW)
    with pytest.raises(EventError, match="malformed_json"):
        decode(rows[2][1], CFG, now_ms=NOW)
