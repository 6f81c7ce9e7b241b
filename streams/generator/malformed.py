"""Deliberately malformed events: the raw bytes a broken producer would send.

Each kind takes a valid event (as a dict in wire order) and breaks it in one way;
``EXPECTED_REASON`` names the :class:`streams.contracts.events.Reason` that ``decode`` gives it
(with the default :class:`streams.config.EventConfig` and a clock before year 2036).

Example:
    >>> import numpy as np
    >>> base = {"action": "click", "condition": "cat1", "event_id": "g7-x0",
    ...         "features": {"category": "cat1"}, "item_id": "5", "ts": 1767225600000,
    ...         "user_id": "3"}
    >>> malformed_value("unknown_action", base, np.random.default_rng(0))[:18]
    b'{"action":"hover",'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

TEN_YEARS_MS = 10 * 365 * 86_400_000
TOO_LONG_ID_CHARS = 600  # beyond any sensible EventConfig.max_id_chars


@dataclass(frozen=True, slots=True)
class Malformed:
    """One malformed record as it goes on the wire.

    Args:
        key: the Kafka key (the base event's user id).
        value: the broken payload.
        kind: which breakage (a key of ``EXPECTED_REASON``).
    """

    key: bytes
    value: bytes
    kind: str


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _with(base: dict[str, Any], **changes: Any) -> bytes:
    return _dumps({**base, **changes})


def _truncated(base: dict[str, Any], rng: np.random.Generator) -> bytes:
    raw = _dumps(base)
    return raw[: int(rng.integers(1, len(raw) - 1))]


def _garbage(base: dict[str, Any], rng: np.random.Generator) -> bytes:
    # 0xff never occurs in UTF-8, so the payload is rejected before any parsing
    return b"\xff" + rng.integers(0, 256, size=int(rng.integers(8, 64)), dtype=np.uint8).tobytes()


def _missing_id(base: dict[str, Any], rng: np.random.Generator) -> bytes:
    return _dumps({k: v for k, v in base.items() if k != "user_id"})


def _replace_ts(base: dict[str, Any], literal: bytes) -> bytes:
    return _with(base, ts=0).replace(b'"ts":0', b'"ts":' + literal, 1)


KINDS: dict[str, Callable[[dict[str, Any], np.random.Generator], bytes]] = {
    "truncated": _truncated,
    "garbage": _garbage,
    "missing_id": _missing_id,
    "wrong_type": lambda b, rng: _with(b, ts=str(b["ts"])),
    "nan_ts": lambda b, rng: _replace_ts(b, b"NaN"),
    "overflow_ts": lambda b, rng: _replace_ts(b, b"1e400"),
    "unknown_action": lambda b, rng: _with(b, action="hover"),
    "future_ts": lambda b, rng: _with(b, ts=b["ts"] + TEN_YEARS_MS),
    "empty_id": lambda b, rng: _with(b, item_id=""),
    "too_long_id": lambda b, rng: _with(b, item_id="x" * TOO_LONG_ID_CHARS),
    "not_an_object": lambda b, rng: _dumps(list(b.values())),
    "unknown_field": lambda b, rng: _with(b, userId=b["user_id"]),
}
KIND_NAMES = tuple(KINDS)

EXPECTED_REASON = {
    "truncated": "malformed_json",
    "garbage": "non_utf8",
    "missing_id": "missing_field",
    "wrong_type": "wrong_type",
    "nan_ts": "non_finite",
    "overflow_ts": "non_finite",
    "unknown_action": "unknown_action",
    "future_ts": "ts_out_of_range",
    "empty_id": "empty_field",
    "too_long_id": "field_too_long",
    "not_an_object": "not_an_object",
    "unknown_field": "unknown_field",
}


def malformed_value(kind: str, base: dict[str, Any], rng: np.random.Generator) -> bytes:
    """The payload of ``base`` broken the ``kind`` way."""
    return KINDS[kind](base, rng)
