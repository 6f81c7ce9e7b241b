"""The project's Prometheus rule files (``monitoring/rules/*.yml``), and the same rules on a
faster clock for short runs.

The files are the production rules: ``for: 15m`` on a drift alert, ``rate(...[30m])`` in a
calibration ratio. A test or a demo that lives a minute cannot wait for them, so
:func:`scaled_rule_files` writes copies whose durations (every ``for:``, every range
``[5m]`` and every ``offset 30m``) are divided by a factor, leaving thresholds alone
(staleness thresholds in seconds too): with ``factor=120`` a drift
alert needs 7.5 s instead of 15 minutes, and a 30-minute calibration window becomes 15 s.
The rules are otherwise the very same text.

Example:
    >>> scale_durations("for: 15m\\nexpr: rate(x[30m]) > 1", 120)
    'for: 7500ms\\nexpr: rate(x[15000ms]) > 1'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

RULES_DIR = Path(__file__).resolve().parent / "rules"

_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 31536000.0,
}
_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
_PART = re.compile(r"(\d+)(ms|[smhdwy])")
_FOR = re.compile(rf"^(\s*for:\s*)({_DURATION})(\s*)$", re.MULTILINE)
_RANGE = re.compile(rf"\[({_DURATION})(:{_DURATION})?\]")
_OFFSET = re.compile(rf"\boffset\s+({_DURATION})")


def rule_files(directory: Path = RULES_DIR) -> list[Path]:
    """The rule files in ``directory``, sorted."""
    return sorted(directory.glob("*.yml"))


def duration_s(text: str) -> float:
    """Seconds of a Prometheus duration (``1h30m``, ``7500ms``).

    Raises:
        ValueError: not a duration.
    """
    if not re.fullmatch(_DURATION, text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNITS[u] for n, u in _PART.findall(text))


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def scale_durations(
    text: str, factor: float, min_range_s: float = 0.0, min_for_s: float = 0.0
) -> str:
    """``text`` (a rule file) with every ``for:``, range selector and ``offset`` divided by
    ``factor``; a range never shorter than ``min_range_s`` (a few scrapes, or ``rate`` has
    nothing to work with), a non-zero ``for:`` never shorter than ``min_for_s`` (a few
    evaluations: one slow scrape must not make a process "down")."""
    if factor <= 0:
        raise ValueError(f"factor {factor}: must be positive")

    def for_(m: re.Match[str]) -> str:
        scaled = duration_s(m.group(2)) / factor
        if scaled > 0:
            scaled = max(scaled, min_for_s)
        return f"{m.group(1)}{_ms(scaled)}{m.group(3)}"

    def range_(m: re.Match[str]) -> str:
        scaled = max(duration_s(m.group(1)) / factor, min_range_s)
        step = m.group(2)
        if step:
            step = ":" + _ms(max(duration_s(step[1:]) / factor, 0.001))
        return f"[{_ms(scaled)}{step or ''}]"

    def offset(m: re.Match[str]) -> str:
        return f"offset {_ms(duration_s(m.group(1)) / factor)}"

    return _OFFSET.sub(offset, _RANGE.sub(range_, _FOR.sub(for_, text)))


def scaled_rule_files(
    files: Sequence[Path],
    factor: float,
    out_dir: Path,
    *,
    min_range_s: float = 2.0,
    min_for_s: float = 0.0,
) -> list[Path]:
    """Copies of ``files`` in ``out_dir`` with durations divided by ``factor`` (see
    :func:`scale_durations`); ``factor`` 1 copies them unchanged."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for path in files:
        text = path.read_text()
        if factor != 1:
            text = scale_durations(text, factor, min_range_s, min_for_s)
        target = out_dir / path.name
        target.write_text(text)
        out.append(target)
    return out
