"""Backfill sinks: the dead-letter file (exactly once, torn lines, read back)."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitoring.metrics import Metrics
from streams.contracts.deadletters import Rejected, SourceRef
from streams.sinks.deadletters import DeadLetterFile, read_deadletter_file


def dead(offset: int, value: bytes = b"{bad", key: bytes | None = b"7") -> Rejected:
    return Rejected(value, key, "malformed_json", f"at {offset}", offset)


def test_dead_letters_round_trip_with_origin_and_bytes(tmp_path: Path, metrics: Metrics) -> None:
    path = tmp_path / "dead.jsonl"
    out = DeadLetterFile(path, metrics, sync=False)
    out.write(dead(3, b"\xff\x00raw"), 1, SourceRef("file:/x/e.jsonl", 0, 17))
    out.write(dead(4, key=None), 1, SourceRef("lum.events", 2, 99))
    out.close()
    got = read_deadletter_file(path)
    assert got[0] == {
        "partition": 1,
        "offset": 3,
        "reason": "malformed_json",
        "detail": "at 3",
        "source": {"topic": "file:/x/e.jsonl", "partition": 0, "offset": 17},
        "key": b"7",
        "value": b"\xff\x00raw",
    }
    assert got[1]["key"] is None
    assert got[1]["source"]["offset"] == 99
    rejected = metrics.registry.get_sample_value(
        "lumstream_events_rejected_total", {"stage": "backfill", "reason": "malformed_json"}
    )
    assert rejected == 2


def test_reopen_skips_written_offsets_and_cuts_a_torn_line(
    tmp_path: Path, metrics: Metrics
) -> None:
    path = tmp_path / "dead.jsonl"
    out = DeadLetterFile(path, metrics, sync=False)
    for off in (1, 5):
        out.write(dead(off), 0, SourceRef("t", 0, off))
    out.write(dead(2), 3, SourceRef("t", 0, 2))
    out.close()
    path.write_bytes(path.read_bytes() + b'{"partition": 0, "off')  # a crash mid-line
    out = DeadLetterFile(path, metrics, sync=False)
    assert out.last_offset == {0: 5, 3: 2}
    for off in (1, 5, 6):  # a resumed batch emits 1 and 5 again
        out.write(dead(off), 0, SourceRef("t", 0, off))
    out.close()
    assert [(d["partition"], d["offset"]) for d in read_deadletter_file(path)] == [
        (0, 1),
        (0, 5),
        (3, 2),
        (0, 6),
    ]
    with pytest.raises(FileExistsError, match="already holds dead letters"):
        DeadLetterFile(path, metrics, must_be_new=True)
