"""Replay sources by name: event-log files (order, positions, identity), keys, times."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.replay import T0, event

from streams.config import EventConfig
from streams.contracts.events import Event, decode, encode
from streams.replay.base import user_key
from streams.replay.sources import EventLogSource, ReplayError, expand_paths, open_source
from streams.sinks.events import open_sink

# -- keys and times ----------------------------------------------------------------------


def test_user_key_is_the_event_key_of_the_importers() -> None:
    ev = decode(event("e1", 7, 3, "click", T0), EventConfig())
    assert user_key(encode(ev)) == b"7"
    assert user_key(b'{"user_id": 42, "x": 1}') == b"42"  # an integer id: decimal string
    assert user_key(b'{"user_id": "u\\u00e9"}') == "ué".encode()
    tricky = {
        b'{"features":{"user_id":"x"},"user_id":"y"}': b"y",
        b'{"user_id":"y","features":{"user_id":"x"}}': b"y",
        b'{"user_id":"y","z":{"user_id":"x"}}': b"y",
        b'{"a":"b","user_id":"q\\"x"}': b'q"x',
        b'{"user_id": "spaced"}': b"spaced",
    }
    for raw, want in tricky.items():
        assert user_key(raw) == want
    for bad in (b"{not json", b"[1,2]", b'{"user_id": true}', b'{"user_id": 1.5}', b"\xff\xfe"):
        assert user_key(bad) is None


# -- files -------------------------------------------------------------------------------


def _events(n: int, start: int = 0) -> list[Event]:
    cfg = EventConfig()
    return [decode(event(f"e{i}", i % 5, i, "click", T0 + i), cfg) for i in range(start, start + n)]


def _write(path: Path, events: list[Event]) -> Path:
    with open_sink(path) as sink:
        for ev in events:
            sink.write(ev)
    return path


def _read_all(src: EventLogSource, position: dict[str, int] | None = None) -> list[tuple]:
    with src.open(position) as reader:
        return list(reader)


def test_paths_file_directory_glob_and_errors(tmp_path: Path) -> None:
    b = _write(tmp_path / "b.jsonl", _events(2))
    a = _write(tmp_path / "a.parquet", _events(2))
    (tmp_path / "notes.txt").write_text("not a log")
    assert expand_paths(str(b)) == [b.resolve()]
    assert expand_paths(str(tmp_path)) == [a.resolve(), b.resolve()]  # by name
    assert expand_paths(str(tmp_path / "*.jsonl")) == [b.resolve()]
    with pytest.raises(ReplayError, match="no such file"):
        expand_paths(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ReplayError, match="not an event log"):
        expand_paths(str(tmp_path / "notes.txt"))
    with pytest.raises(ReplayError, match="no event logs"):
        expand_paths(str(tmp_path / "*.csv"))


def test_files_are_read_in_order_with_keys_and_origins(tmp_path: Path) -> None:
    first = _events(3)
    second = _events(4, start=3)
    a = _write(tmp_path / "a.jsonl.gz", first)
    b = _write(tmp_path / "b.parquet", second)
    src = open_source(f"file:{tmp_path}")
    assert isinstance(src, EventLogSource)
    got = _read_all(src)
    assert [v for _, v, _ in got] == [encode(e) for e in first + second]
    assert [k for k, _, _ in got] == [e.user_id.encode() for e in first + second]
    assert [o for _, _, o in got] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (1, 4)]
    assert src.total() == 7
    assert src.origin((1, 2)).topic == f"file:{b.resolve()}"
    assert src.origin((0, 3)).offset == 3
    assert a.exists()


def test_positions_resume_after_the_last_record(tmp_path: Path) -> None:
    log = tmp_path / "e.jsonl"
    lines = [encode(e) for e in _events(6)]
    log.write_bytes(lines[0] + b"\n\n" + b"\n".join(lines[1:]))  # a blank line, no final \n
    src = EventLogSource(expand_paths(str(log)))
    assert src.total() == 7  # physical lines
    full = _read_all(src)
    assert [o[1] for _, _, o in full] == [1, 3, 4, 5, 6, 7]
    with src.open(None) as reader:
        it = iter(reader)
        head = [next(it) for _ in range(3)]
        position = reader.position()
        assert reader.done() == 4
    assert position == {"file": 0, "line": 4}
    assert head + _read_all(src, position) == full
    with src.open(position) as reader:
        list(reader)
        assert reader.done() == src.total()
        assert reader.position() == {"file": 1, "line": 0}
    assert _read_all(src, {"file": 1, "line": 0}) == []


def test_identity_changes_when_a_log_changes(tmp_path: Path) -> None:
    log = _write(tmp_path / "e.jsonl", _events(5))
    src = EventLogSource(expand_paths(str(log)))
    stored = src.identity()
    EventLogSource(expand_paths(str(log))).adopt(stored)  # the same file: fine
    with log.open("ab") as fh:
        fh.write(encode(_events(1, start=9)[0]) + b"\n")
    with pytest.raises(ReplayError, match="differ"):
        EventLogSource(expand_paths(str(log))).adopt(stored)


def test_open_source_by_name(tmp_path: Path) -> None:
    log = _write(tmp_path / "e.jsonl", _events(1))
    assert isinstance(open_source(str(log)), EventLogSource)
    with pytest.raises(ReplayError, match="time range"):
        open_source(str(log), from_ts=T0)
    with pytest.raises(ReplayError, match="needs a cluster"):
        open_source("kafka:lum.events")
    with pytest.raises(ReplayError, match="needs a topic"):
        open_source("kafka:")
