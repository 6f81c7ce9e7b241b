"""The one grammar of times and time ranges on the command line."""

from __future__ import annotations

import pytest

from core.times import TimeError, parse_time, time_range

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def test_parse_time_takes_ms_and_iso_8601() -> None:
    assert parse_time("1767225600000") == T0
    assert parse_time("1_767_225_600_000") == T0
    assert parse_time("2026-01-01T00:00:00Z") == T0
    assert parse_time("2026-01-01T00:00:00") == T0  # no offset: UTC
    assert parse_time("2026-01-01") == T0
    assert parse_time("2026-01-01T01:00:00+01:00") == T0
    with pytest.raises(TimeError, match="ISO 8601"):
        parse_time("yesterday")


def test_ranges_are_open_on_either_side_and_ordered() -> None:
    assert time_range(None, None) == (None, None)
    assert time_range("2026-01-01", None) == (T0, None)
    assert time_range(None, "1000") == (None, 1000)
    assert time_range("1000", "1000") == (1000, 1000)
    with pytest.raises(TimeError, match="before --from"):
        time_range("2000", "1000")
