"""The event contract of lum.events: schema, validation with precise reasons, wire format.

An event is one compact JSON object (see docs/wire-format.md)::

    {"action":"click","condition":"Comedy","event_id":"e-1","features":{"category":"Comedy"},
     "item_id":"42","ts":1767225600000,"user_id":"7"}

Rules, checked by :func:`decode` (raw bytes off the wire) and :func:`validate` (an already
parsed object, used by the importers and the generator), both giving an :class:`Event`:

- ``event_id``, ``user_id``, ``item_id``, ``condition``: non-empty strings of at most
  ``max_id_chars`` characters; a JSON integer is accepted and normalised to its decimal
  string (bool is a wrong type).
- ``action``: one of ``EventConfig.actions``.
- ``ts``: event time in ms since the epoch, an integer in
  ``[min_ts_ms, now_ms + max_future_ms]``; a float with an integral value (``1.7e12``) is
  accepted and normalised to int, any other float is a wrong type.
- ``features`` (optional, may be null): a flat object of at most ``max_features`` keys,
  values str | int | float | bool (finite), string keys and values at most
  ``max_id_chars`` characters. ``features["category"]`` is the item category; an integer
  category is normalised to its decimal string.
- Served-list features (written by serving/served_log.py on impressions, and by clients on
  the clicks that answer them): ``features["request_id"]`` (the ranking request that
  showed the item; a non-empty string, an integer is normalised to its decimal string),
  ``features["position"]`` (0-based rank shown at, an integer in ``[0, 2**31)``) and
  ``features["randomized"]`` (bool: the list's order was randomised for exploration).
  ``ranker_version`` / ``backbone_version`` are plain string features.
- Unknown top-level fields are rejected (``unknown_field``): a misspelt field must not be
  dropped silently; free-form data belongs in ``features``.

Example:
    >>> from streams.config import EventConfig
    >>> ev = decode(b'{"event_id":"e1","user_id":7,"item_id":"42","action":"click",'
    ...             b'"condition":"Comedy","ts":1700000000000}', EventConfig())
    >>> ev.user_id, event_key(ev)
    ('7', b'7')
    >>> decode(encode(ev), EventConfig()) == ev
    True
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from streams.config import EventConfig

FeatureValue = str | int | float | bool

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what the wire format (orjson) writes exactly
# features of a served impression and of the click that answers it (docs/serving.md)
REQUEST_ID = "request_id"
POSITION = "position"
RANDOMIZED = "randomized"
RANKER_VERSION = "ranker_version"
BACKBONE_VERSION = "backbone_version"
MAX_POSITION = 2**31 - 1
REQUIRED = ("event_id", "user_id", "item_id", "action", "condition", "ts")
FIELDS = frozenset((*REQUIRED, "features"))


class Reason(enum.StrEnum):
    """Why an event was rejected: metric label and dead-letter reason."""

    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_FIELD = "empty_field"
    FIELD_TOO_LONG = "field_too_long"
    UNKNOWN_ACTION = "unknown_action"
    TS_OUT_OF_RANGE = "ts_out_of_range"
    OVERSIZED = "oversized"
    NON_FINITE = "non_finite"
    NON_UTF8 = "non_utf8"
    UNKNOWN_FIELD = "unknown_field"
    TOO_MANY_FEATURES = "too_many_features"
    DUPLICATE = "duplicate"
    OUT_OF_RANGE = "out_of_range"


class EventError(ValueError):
    """A rejected event.

    Args:
        reason: the machine-readable :class:`Reason`.
        detail: which field, what was expected and what came.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Event:
    """One valid click/impression event (build it with :func:`validate` or :func:`decode`).

    Args:
        event_id: idempotency key.
        user_id / item_id: raw ids (strings; ``streams.contracts.ids.stable_id`` maps them
            to int64).
        action: one of ``EventConfig.actions``.
        condition: the LUM condition token (scenario, category or search term).
        ts: event time, ms since the epoch.
        features: optional flat context; ``features["category"]`` is the item category.
    """

    event_id: str
    user_id: str
    item_id: str
    action: str
    condition: str
    ts: int
    features: Mapping[str, FeatureValue] | None = field(default=None, hash=False)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _got(value: object) -> str:
    """``null``, or the type and a short repr of ``value``, for error details."""
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _check_utf8(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EventError(
            Reason.NON_UTF8, f"{name}: not encodable as UTF-8 (lone surrogate)"
        ) from None


def _text(name: str, value: object, limit: int) -> str:
    """The slow path of a string field: normalise an int, or raise naming ``name``."""
    if isinstance(value, str):
        if not value or value.isspace():
            raise EventError(Reason.EMPTY_FIELD, f"{name}: empty string")
        if len(value) > limit:
            raise EventError(
                Reason.FIELD_TOO_LONG, f"{name}: {len(value)} characters, at most {limit}"
            )
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
        if len(text) > limit:
            raise EventError(Reason.FIELD_TOO_LONG, f"{name}: {len(text)} digits, at most {limit}")
        return text
    if isinstance(value, float) and not math.isfinite(value):
        raise EventError(Reason.NON_FINITE, f"{name}: expected a string, got {value!r}")
    raise EventError(
        Reason.WRONG_TYPE,
        f"{name}: expected a string or integer, got {_got(value)}",
    )


def _timestamp(value: object, cfg: EventConfig, now_ms: int | None) -> int:
    """The slow path of ``ts``: normalise an integral float, or raise."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EventError(Reason.NON_FINITE, f"ts: expected integer ms, got {value!r}")
        if not value.is_integer():
            raise EventError(
                Reason.WRONG_TYPE, f"ts: expected integer ms, got fractional {value!r}"
            )
        ts = int(value)
    elif type(value) is int:
        ts = value
    else:
        raise EventError(
            Reason.WRONG_TYPE,
            f"ts: expected integer ms, got {_got(value)}",
        )
    hi = (time.time_ns() // 1_000_000 if now_ms is None else now_ms) + cfg.max_future_ms
    if not cfg.min_ts_ms <= ts <= hi:
        shown = str(ts) if abs(ts) < 10**20 else f"{str(ts)[:12]}... ({len(str(ts))} digits)"
        raise EventError(
            Reason.TS_OUT_OF_RANGE,
            f"ts: {shown} outside [{cfg.min_ts_ms}, {hi}] (min_ts_ms, now + max_future_ms)",
        )
    return ts


def _bad_feature(key: object, value: object, limit: int) -> EventError:
    """The precise error for one features entry that failed the fast check."""
    if not isinstance(key, str):
        return EventError(Reason.WRONG_TYPE, f"features: key {key!r} is not a string")
    if not key:
        return EventError(Reason.EMPTY_FIELD, "features: empty key")
    if len(key) > limit:
        return EventError(
            Reason.FIELD_TOO_LONG, f"features: key of {len(key)} characters, at most {limit}"
        )
    name = f"features.{key}"
    if isinstance(value, str):
        return EventError(
            Reason.FIELD_TOO_LONG, f"{name}: {len(value)} characters, at most {limit}"
        )
    if isinstance(value, float):
        return EventError(Reason.NON_FINITE, f"{name}: {value!r}")
    if type(value) is int:
        return EventError(
            Reason.WRONG_TYPE, f"{name}: integer of {len(str(value))} digits is beyond 64 bits"
        )
    return EventError(
        Reason.WRONG_TYPE,
        f"{name}: expected str, int, float or bool, got {_got(value)}",
    )


def _features(value: object, cfg: EventConfig, from_json: bool) -> dict[str, FeatureValue]:
    """Check ``features``; a dict fresh from orjson is kept, anything else is copied."""
    if from_json and type(value) is dict:
        out: dict[str, FeatureValue] = value
    elif isinstance(value, Mapping):
        out = dict(value)
    else:
        raise EventError(
            Reason.WRONG_TYPE, f"features: expected an object, got {_type_name(value)}"
        )
    if len(out) > cfg.max_features:
        raise EventError(
            Reason.TOO_MANY_FEATURES, f"features: {len(out)} keys, at most {cfg.max_features}"
        )
    limit = cfg.max_id_chars
    if from_json:  # keys are str, floats finite, strings valid UTF-8 (orjson guarantees)
        for key, v in out.items():
            t = type(v)
            if (
                (t is str and len(v) > limit)  # type: ignore[arg-type]
                or (t is not str and t is not int and t is not float and t is not bool)
                or (t is int and not _INT_MIN <= v <= _INT_MAX)  # type: ignore[operator]
                or not 0 < len(key) <= limit
            ):
                raise _bad_feature(key, v, limit)
    else:
        for key, v in out.items():
            t = type(v)
            if t is str:
                ok = len(v) <= limit  # type: ignore[arg-type]
            elif t is float:
                ok = math.isfinite(v)  # type: ignore[arg-type]
            elif t is int:
                ok = _INT_MIN <= v <= _INT_MAX  # type: ignore[operator]
            else:
                ok = t is bool
            if not ok or type(key) is not str or not 0 < len(key) <= limit:
                raise _bad_feature(key, v, limit)
            if not key.isascii() or (t is str and not v.isascii()):  # type: ignore[union-attr]
                _check_utf8(f"features.{key}", key)
                if t is str:
                    _check_utf8(f"features.{key}", v)  # type: ignore[arg-type]
    category = out.get("category")
    if category is not None and (type(category) is not str or not category or category.isspace()):
        out["category"] = _text("features.category", category, limit)
    if REQUEST_ID in out or POSITION in out or RANDOMIZED in out:
        _served_features(out, limit)
    return out


def _served_features(out: dict[str, FeatureValue], limit: int) -> None:
    """Check (and normalise) request_id, position and randomized in place."""
    rid = out.get(REQUEST_ID)
    if rid is not None and (type(rid) is not str or not rid or rid.isspace()):
        out[REQUEST_ID] = _text("features.request_id", rid, limit)
    pos = out.get(POSITION)
    if pos is not None and (type(pos) is not int or not 0 <= pos <= MAX_POSITION):
        if type(pos) is int:
            raise EventError(
                Reason.OUT_OF_RANGE,
                f"features.position: {pos} outside [0, {MAX_POSITION}]",
            )
        raise EventError(
            Reason.WRONG_TYPE, f"features.position: expected an integer >= 0, got {_got(pos)}"
        )
    flag = out.get(RANDOMIZED)
    if flag is not None and type(flag) is not bool:
        raise EventError(
            Reason.WRONG_TYPE, f"features.randomized: expected true or false, got {_got(flag)}"
        )


# Event() of a frozen dataclass pays object.__setattr__ per field; the slot descriptors'
# setters build the same object about twice as fast on the decode hot path.
_NEW = object.__new__
_SET = tuple(Event.__dict__[f.name].__set__ for f in dataclasses.fields(Event))
_S0, _S1, _S2, _S3, _S4, _S5, _S6 = _SET


def _event(
    event_id: str,
    user_id: str,
    item_id: str,
    action: str,
    condition: str,
    ts: int,
    features: dict[str, FeatureValue] | None,
) -> Event:
    ev: Event = _NEW(Event)
    _S0(ev, event_id)
    _S1(ev, user_id)
    _S2(ev, item_id)
    _S3(ev, action)
    _S4(ev, condition)
    _S5(ev, ts)
    _S6(ev, features)
    return ev


def _build(obj: object, cfg: EventConfig, now_ms: int | None, from_json: bool) -> Event:
    if type(obj) is not dict:
        if not isinstance(obj, Mapping):
            raise EventError(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {_type_name(obj)}")
        obj = dict(obj)
    assert isinstance(obj, dict)
    try:
        event_id = obj["event_id"]
        user_id = obj["user_id"]
        item_id = obj["item_id"]
        action = obj["action"]
        condition = obj["condition"]
        ts = obj["ts"]
    except KeyError as exc:
        raise EventError(
            Reason.MISSING_FIELD, f"{exc.args[0]}: required field is missing"
        ) from None
    n = len(obj)
    if n != 6 and (n != 7 or "features" not in obj):
        unknown = sorted(str(k) for k in obj if k not in FIELDS)
        raise EventError(
            Reason.UNKNOWN_FIELD,
            f"{unknown[0]}: not a field of the event contract (put free-form data in features)",
        )
    limit = cfg.max_id_chars
    if type(action) is not str or action not in cfg.actions:
        if not isinstance(action, str):
            raise EventError(
                Reason.WRONG_TYPE,
                f"action: expected a string, got {_got(action)}",
            )
        raise EventError(
            Reason.UNKNOWN_ACTION,
            f"action: {action[:40]!r} is not one of {', '.join(cfg.actions)}",
        )
    # Fast path: well-formed strings pass three cheap checks; the rest goes to _text.
    if type(event_id) is not str or not 0 < len(event_id) <= limit or event_id.isspace():
        event_id = _text("event_id", event_id, limit)
    if type(user_id) is not str or not 0 < len(user_id) <= limit or user_id.isspace():
        user_id = _text("user_id", user_id, limit)
    if type(item_id) is not str or not 0 < len(item_id) <= limit or item_id.isspace():
        item_id = _text("item_id", item_id, limit)
    if type(condition) is not str or not 0 < len(condition) <= limit or condition.isspace():
        condition = _text("condition", condition, limit)
    if (
        type(ts) is not int
        or ts < cfg.min_ts_ms
        or ts > (time.time_ns() // 1_000_000 if now_ms is None else now_ms) + cfg.max_future_ms
    ):
        ts = _timestamp(ts, cfg, now_ms)
    features = obj.get("features")
    if features is not None:
        features = _features(features, cfg, from_json)
    if not from_json:  # orjson already guarantees valid UTF-8 for parsed input
        for name, text in (
            ("event_id", event_id),
            ("user_id", user_id),
            ("item_id", item_id),
            ("action", action),
            ("condition", condition),
        ):
            if not text.isascii():
                _check_utf8(name, text)
    return _event(event_id, user_id, item_id, action, condition, ts, features)


def validate(obj: object, cfg: EventConfig, now_ms: int | None = None) -> Event:
    """Check an already parsed object (dict) against the contract.

    Args:
        obj: the candidate event (a mapping of field name to value).
        cfg: the contract's limits.
        now_ms: wall-clock time for the future bound (default: now).
    Raises:
        EventError: with the first violated rule as reason and a precise detail.
    """
    return _build(obj, cfg, now_ms, from_json=False)


def _json_error(raw: bytes, exc: orjson.JSONDecodeError) -> EventError:
    """Classify an orjson parse failure: non_utf8, non_finite or malformed_json."""
    msg = exc.msg
    if "UTF-8" in msg:
        return EventError(Reason.NON_UTF8, "payload is not valid UTF-8")
    if "surrogate" in msg:  # a \uD800-style escape that no UTF-8 string can hold
        return EventError(Reason.NON_UTF8, f"{msg} at char {exc.pos}")
    if "infinity" in msg:  # a number literal that overflows a double, e.g. 1e400
        return EventError(Reason.NON_FINITE, f"number overflows to infinity at char {exc.pos}")
    text = raw.decode("utf-8", "replace")
    tail = text[max(exc.pos - 1, 0) : exc.pos + 9]
    if "NaN" in tail or "Infinity" in tail:
        return EventError(Reason.NON_FINITE, f"NaN/Infinity literal at char {exc.pos}")
    return EventError(Reason.MALFORMED_JSON, f"{msg} at char {exc.pos}")


BOM = b"\xef\xbb\xbf"
_ID_FIELDS = ("event_id", "user_id", "item_id", "condition")
_BIG = float(2**63)


def loads(raw: bytes) -> object:
    """Parse one JSON value as the contract reads it; raises EventError (non_utf8,
    non_finite, malformed_json); no size limit and no schema check.

    - A leading UTF-8 byte-order mark is ignored (RFC 8259 allows parsers to).
    - An integer beyond 64 bits keeps its exact digits: orjson reads such a literal as a
      float, so the value is read again with msgspec, which keeps big integers exact (an id
      becomes its decimal string; a feature is then rejected as beyond 64 bits); also in
      the events of a JSON array (a batch posted to ``/v1/events``).
    """
    if raw[:3] == BOM:
        raw = raw[3:]
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _json_error(raw, exc) from None
    if (type(obj) is dict and _maybe_big(obj)) or (
        type(obj) is list and any(type(o) is dict and _maybe_big(o) for o in obj)
    ):
        obj = msgspec.json.decode(raw)  # valid JSON (orjson said so): exact integers
    return obj


def _maybe_big(obj: dict[str, Any]) -> bool:
    """A float that may stand for an integer literal beyond 64 bits (orjson's reading)."""
    values = [obj.get(k) for k in _ID_FIELDS]
    features = obj.get("features")
    if type(features) is dict:
        values.extend(features.values())
    return any(type(v) is float and abs(v) >= _BIG and v.is_integer() for v in values)


def decode(raw: bytes, cfg: EventConfig, now_ms: int | None = None) -> Event:
    """Raw bytes off the wire -> :class:`Event`; the size is checked before parsing.

    Raises:
        EventError: oversized, non_utf8, malformed_json, non_finite, or any
            :func:`validate` reason.
    """
    if len(raw) > cfg.max_event_bytes:
        raise EventError(
            Reason.OVERSIZED, f"{len(raw)} bytes, at most {cfg.max_event_bytes} (max_event_bytes)"
        )
    # orjson rejects non-UTF-8 input and lone surrogates, so strings need no re-check.
    return _build(loads(raw), cfg, now_ms, from_json=True)


def to_dict(event: Event) -> dict[str, Any]:
    """The event as a plain dict (``features`` omitted when None)."""
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "action": event.action,
        "condition": event.condition,
        "ts": event.ts,
    }
    if event.features is not None:
        out["features"] = dict(event.features)
    return out


_DUMPS = orjson.dumps
_SORT = orjson.OPT_SORT_KEYS


def encode(event: Event) -> bytes:
    """Canonical compact JSON (keys sorted at every level, no spaces): equal events give
    equal bytes. Assumes a valid event (build it with :func:`validate`)."""
    return _DUMPS(to_dict(event), option=_SORT)


def event_key(event: Event) -> bytes:
    """The Kafka message key: the user id as UTF-8 (all of a user's events on one
    partition, in order)."""
    return event.user_id.encode("utf-8")
