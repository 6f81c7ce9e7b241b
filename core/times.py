"""Event times on the command line: one grammar for every command that takes a time range.

A time is milliseconds since the epoch (``1767225600000``, underscores allowed) or ISO 8601
(``2026-01-31``, ``2026-01-31T12:00:00Z``; no offset means UTC). Commands take a range as
``--from TIME --to TIME`` (``--to`` exclusive, either side may be left out).

Example:
    >>> parse_time("2026-01-01T00:00:00Z"), parse_time("1_767_225_600_000")
    (1767225600000, 1767225600000)
    >>> time_range("2018-01-01", None)
    (1514764800000, None)
"""

from __future__ import annotations

from datetime import UTC, datetime


class TimeError(ValueError):
    """A time or range that cannot be read; the message says what was expected."""


def parse_time(text: str) -> int:
    """ms since the epoch from ``text`` (ms, or ISO 8601 with no offset meaning UTC)."""
    text = text.strip()
    try:
        return int(text.replace("_", ""))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise TimeError(
            f"{text!r} is neither ms since the epoch nor ISO 8601 (2026-01-31T12:00:00Z)"
        ) from None
    return round((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


def time_range(start: str | None, stop: str | None) -> tuple[int | None, int | None]:
    """``--from``/``--to`` as ms (None where left out); TimeError when ``--to`` comes
    before ``--from``."""
    lo = parse_time(start) if start else None
    hi = parse_time(stop) if stop else None
    if lo is not None and hi is not None and hi < lo:
        raise TimeError(f"--to {stop} is before --from {start}")
    return lo, hi
