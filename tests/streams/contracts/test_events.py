"""The event contract: a table of bad events with their reasons, and round trips."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.config import EventConfig
from streams.contracts.events import (
    Event,
    EventError,
    Reason,
    decode,
    encode,
    event_key,
    loads,
    to_dict,
    validate,
)

CFG = EventConfig()
NOW = 1_767_225_600_000  # 2026-01-01
GOOD: dict[str, Any] = {
    "event_id": "e-1",
    "user_id": "u1",
    "item_id": "42",
    "action": "click",
    "condition": "Comedy",
    "ts": NOW - 1000,
    "features": {"category": "Comedy", "page": 2, "price": 9.5, "promo": True},
}
REQUIRED = ("event_id", "user_id", "item_id", "action", "condition", "ts")


def with_(**changes: Any) -> bytes:
    obj = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in obj.items() if v is not DROP})


DROP = object()
LONG = "x" * (CFG.max_id_chars + 1)

BAD_RAW: list[tuple[str, bytes, Reason]] = [
    ("empty payload", b"", Reason.MALFORMED_JSON),
    ("truncated JSON", with_()[:-5], Reason.MALFORMED_JSON),
    ("trailing comma", b'{"a":1,}', Reason.MALFORMED_JSON),
    ("binary garbage", bytes(range(256))[128:200], Reason.NON_UTF8),
    (
        "latin-1 bytes in a string",
        with_(user_id="x").replace(b'"x"', b'"caf\xe9"'),
        Reason.NON_UTF8,
    ),
    ("lone surrogate escape", with_(user_id="x").replace(b'"x"', b'"\\ud800"'), Reason.NON_UTF8),
    ("array", b"[1, 2]", Reason.NOT_AN_OBJECT),
    ("string", b'"event"', Reason.NOT_AN_OBJECT),
    ("null", b"null", Reason.NOT_AN_OBJECT),
    (
        "oversized payload",
        with_(features={"pad": "y" * 100}).ljust(CFG.max_event_bytes + 1),
        Reason.OVERSIZED,
    ),
    (
        "oversized garbage is oversized, not malformed",
        b"\xff" * (CFG.max_event_bytes + 1),
        Reason.OVERSIZED,
    ),
    ("NaN literal in ts", with_(ts=1).replace(b'"ts":1', b'"ts":NaN'), Reason.NON_FINITE),
    (
        "Infinity literal in features",
        with_(features={"p": 1}).replace(b'"p":1', b'"p":Infinity'),
        Reason.NON_FINITE,
    ),
    (
        "-Infinity literal in ts",
        with_(ts=1).replace(b'"ts":1', b'"ts":-Infinity'),
        Reason.NON_FINITE,
    ),
    ("number overflowing to inf", with_(ts=1).replace(b'"ts":1', b'"ts":1e999'), Reason.NON_FINITE),
    ("unknown action", with_(action="like"), Reason.UNKNOWN_ACTION),
    ("action wrong case", with_(action="Click"), Reason.UNKNOWN_ACTION),
    ("unknown top-level field", with_(price=3), Reason.UNKNOWN_FIELD),
    ("misspelt field", with_(user_id=DROP, user="u1"), Reason.MISSING_FIELD),
    ("negative ts", with_(ts=-5), Reason.TS_OUT_OF_RANGE),
    ("ts before min_ts_ms", with_(ts=CFG.min_ts_ms - 1), Reason.TS_OUT_OF_RANGE),
    ("ts in seconds, not ms", with_(ts=1_700_000_000), Reason.TS_OUT_OF_RANGE),
    ("far-future ts", with_(ts=NOW + CFG.max_future_ms + 1), Reason.TS_OUT_OF_RANGE),
    (
        "ts beyond int64 (parsed as float)",
        with_(ts=1).replace(b'"ts":1', b'"ts":1' + b"0" * 30),
        Reason.TS_OUT_OF_RANGE,
    ),
    ("fractional ts", with_(ts=NOW - 0.5), Reason.WRONG_TYPE),
    ("ts as string", with_(ts=str(NOW)), Reason.WRONG_TYPE),
    ("ts as bool", with_(ts=True), Reason.WRONG_TYPE),
    (
        "too many features",
        with_(features={f"f{i}": i for i in range(CFG.max_features + 1)}),
        Reason.TOO_MANY_FEATURES,
    ),
    ("features not an object", with_(features=[1, 2]), Reason.WRONG_TYPE),
    ("nested feature value", with_(features={"ctx": {"a": 1}}), Reason.WRONG_TYPE),
    ("list feature value", with_(features={"tags": ["a"]}), Reason.WRONG_TYPE),
    ("null feature value", with_(features={"a": None}), Reason.WRONG_TYPE),
    ("empty feature key", with_(features={"": 1}), Reason.EMPTY_FIELD),
    ("huge feature key", with_(features={LONG: 1}), Reason.FIELD_TOO_LONG),
    ("huge feature string", with_(features={"a": LONG}), Reason.FIELD_TOO_LONG),
    ("empty category", with_(features={"category": ""}), Reason.EMPTY_FIELD),
    ("bool category", with_(features={"category": True}), Reason.WRONG_TYPE),
    ("float category", with_(features={"category": 1.5}), Reason.WRONG_TYPE),
]
for _field in REQUIRED:
    BAD_RAW.append((f"missing {_field}", with_(**{_field: DROP}), Reason.MISSING_FIELD))
    BAD_RAW.append((f"{_field} null", with_(**{_field: None}), Reason.WRONG_TYPE))
    BAD_RAW.append((f"{_field} list", with_(**{_field: ["a"]}), Reason.WRONG_TYPE))
    BAD_RAW.append((f"{_field} object", with_(**{_field: {"a": 1}}), Reason.WRONG_TYPE))
for _field in ("event_id", "user_id", "item_id", "condition"):
    BAD_RAW.append((f"{_field} bool", with_(**{_field: True}), Reason.WRONG_TYPE))
    BAD_RAW.append((f"{_field} float", with_(**{_field: 1.5}), Reason.WRONG_TYPE))
    BAD_RAW.append((f"{_field} empty", with_(**{_field: ""}), Reason.EMPTY_FIELD))
    BAD_RAW.append((f"{_field} blank", with_(**{_field: "  "}), Reason.EMPTY_FIELD))
    BAD_RAW.append((f"{_field} huge", with_(**{_field: LONG}), Reason.FIELD_TOO_LONG))


@pytest.mark.parametrize(
    ("raw", "reason"), [(r, why) for _, r, why in BAD_RAW], ids=[name for name, _, _ in BAD_RAW]
)
def test_bad_event_is_rejected_with_reason(raw: bytes, reason: Reason) -> None:
    with pytest.raises(EventError) as info:
        decode(raw, CFG, now_ms=NOW)
    assert info.value.reason is reason, info.value.detail
    assert info.value.detail
    assert str(info.value).startswith(f"{reason}: ")


@pytest.mark.parametrize("field", REQUIRED)
def test_detail_names_the_field(field: str) -> None:
    with pytest.raises(EventError, match=field):
        decode(with_(**{field: DROP}), CFG, now_ms=NOW)
    with pytest.raises(EventError, match=field):
        decode(with_(**{field: [1]}), CFG, now_ms=NOW)


def test_detail_of_a_bad_feature_names_the_key() -> None:
    with pytest.raises(EventError, match=r"features\.tags"):
        decode(with_(features={"tags": ["a"]}), CFG, now_ms=NOW)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ts": math.nan}, Reason.NON_FINITE),
        ({"ts": math.inf}, Reason.NON_FINITE),
        ({"user_id": math.nan}, Reason.NON_FINITE),
        ({"features": {"score": math.nan}}, Reason.NON_FINITE),
        ({"features": {"score": -math.inf}}, Reason.NON_FINITE),
        ({"user_id": "bad\ud800"}, Reason.NON_UTF8),
        ({"features": {"k": "bad\udcff"}}, Reason.NON_UTF8),
        ({"features": {1: "a"}}, Reason.WRONG_TYPE),
        ({"user_id": True}, Reason.WRONG_TYPE),
        ({"item_id": False}, Reason.WRONG_TYPE),
        ({"user_id": 10**200}, Reason.FIELD_TOO_LONG),
    ],
)
def test_validate_rejects_python_only_values(changes: dict[str, Any], reason: Reason) -> None:
    with pytest.raises(EventError) as info:
        validate({**GOOD, **changes}, CFG, now_ms=NOW)
    assert info.value.reason is reason


def test_validate_rejects_non_mapping() -> None:
    with pytest.raises(EventError) as info:
        validate(["a"], CFG, now_ms=NOW)
    assert info.value.reason is Reason.NOT_AN_OBJECT


def test_good_event_decodes() -> None:
    ev = decode(with_(), CFG, now_ms=NOW)
    assert ev == Event(
        "e-1",
        "u1",
        "42",
        "click",
        "Comedy",
        NOW - 1000,
        {"category": "Comedy", "page": 2, "price": 9.5, "promo": True},
    )


def test_int_ids_are_normalised_to_decimal_strings() -> None:
    ev = decode(with_(user_id=7, item_id=-3, event_id=0, condition=12), CFG, now_ms=NOW)
    assert (ev.user_id, ev.item_id, ev.event_id, ev.condition) == ("7", "-3", "0", "12")


def test_integer_ids_beyond_64_bits_keep_their_exact_digits() -> None:
    digits = "123456789012345678901"  # 21 digits: orjson alone would read a float
    raw = with_().replace(b'"u1"', digits.encode()).replace(b'"e-1"', (digits + "9").encode())
    ev = decode(raw, CFG, now_ms=NOW)
    assert (ev.user_id, ev.event_id) == (digits, digits + "9")
    long = "9" * (CFG.max_id_chars + 1)
    with pytest.raises(EventError) as info:
        decode(with_().replace(b'"u1"', long.encode()), CFG, now_ms=NOW)
    assert info.value.reason == Reason.FIELD_TOO_LONG
    big_feature = with_().replace(b'"page":2', b'"page":' + digits.encode())
    with pytest.raises(EventError, match="beyond 64 bits") as info:
        decode(big_feature, CFG, now_ms=NOW)
    assert info.value.reason == Reason.WRONG_TYPE


def test_a_leading_byte_order_mark_is_ignored() -> None:
    raw = with_()
    assert decode(b"\xef\xbb\xbf" + raw, CFG, now_ms=NOW) == decode(raw, CFG, now_ms=NOW)
    assert loads(b"\xef\xbb\xbf[1]") == [1]
    with pytest.raises(EventError) as info:  # a BOM in the middle is still not JSON
        decode(raw[:1] + b"\xef\xbb\xbf" + raw[1:], CFG, now_ms=NOW)
    assert info.value.reason == Reason.MALFORMED_JSON


def test_integral_float_ts_is_accepted_as_int() -> None:
    ev = decode(with_(ts=float(NOW)), CFG, now_ms=NOW)
    assert ev.ts == NOW
    assert type(ev.ts) is int


def test_int_category_is_normalised() -> None:
    assert decode(with_(features={"category": 5}), CFG, now_ms=NOW).features == {"category": "5"}


def test_features_may_be_absent_null_or_empty() -> None:
    assert decode(with_(features=DROP), CFG, now_ms=NOW).features is None
    assert decode(with_(features=None), CFG, now_ms=NOW).features is None
    assert decode(with_(features={}), CFG, now_ms=NOW).features == {}


def test_ts_bounds_are_inclusive() -> None:
    assert decode(with_(ts=CFG.min_ts_ms), CFG, now_ms=NOW).ts == CFG.min_ts_ms
    top = NOW + CFG.max_future_ms
    assert decode(with_(ts=top), CFG, now_ms=NOW).ts == top


def test_max_features_zero_allows_no_features() -> None:
    cfg = EventConfig(max_features=0)
    assert decode(with_(features={}), cfg, now_ms=NOW).features == {}
    with pytest.raises(EventError) as info:
        decode(with_(features={"a": 1}), cfg, now_ms=NOW)
    assert info.value.reason is Reason.TOO_MANY_FEATURES


def test_configured_actions_are_the_allowed_ones() -> None:
    cfg = EventConfig(actions=("view", "buy"))
    assert decode(with_(action="buy"), cfg, now_ms=NOW).action == "buy"
    with pytest.raises(EventError) as info:
        decode(with_(action="click"), cfg, now_ms=NOW)
    assert info.value.reason is Reason.UNKNOWN_ACTION


def test_default_clock_is_wall_time() -> None:
    assert decode(with_(ts=NOW), CFG).ts == NOW  # the test machine's clock is past 2026
    with pytest.raises(EventError):
        decode(with_(ts=4_102_444_800_000), CFG)  # 2100


def test_encode_is_canonical_compact_json() -> None:
    ev = Event("e", "u", "i", "click", "c", NOW, {"z": 1, "a": "x"})
    raw = encode(ev)
    assert raw == (
        b'{"action":"click","condition":"c","event_id":"e","features":{"a":"x","z":1},'
        b'"item_id":"i","ts":1767225600000,"user_id":"u"}'
    )
    assert encode(Event("e", "u", "i", "click", "c", NOW, {"a": "x", "z": 1})) == raw
    assert b"features" not in encode(Event("e", "u", "i", "click", "c", NOW))


def test_event_key_is_the_user_id() -> None:
    assert event_key(Event("e", "ü-7", "i", "click", "c", NOW)) == "ü-7".encode()


def test_events_with_features_are_hashable() -> None:
    a = Event("e", "u", "i", "click", "c", NOW, {"a": 1})
    assert hash(a) == hash(Event("e", "u", "i", "click", "c", NOW, {"a": 1}))


def test_reasons_are_unique_snake_case_labels() -> None:
    values = [r.value for r in Reason]
    assert len(set(values)) == len(values)
    assert all(v == v.lower() and " " not in v for v in values)
    assert Reason.DUPLICATE == "duplicate"


def test_loads_classifies_errors() -> None:
    assert loads(b'{"a":1}') == {"a": 1}
    for raw, reason in [
        (b"{", Reason.MALFORMED_JSON),
        (b"\xff", Reason.NON_UTF8),
        (b"[NaN]", Reason.NON_FINITE),
    ]:
        with pytest.raises(EventError) as info:
            loads(raw)
        assert info.value.reason is reason


ids = st.one_of(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=CFG.max_id_chars).filter(
        lambda s: not s.isspace()
    ),
    st.integers(min_value=-(10**18), max_value=10**18),
)
feature_values = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=CFG.max_id_chars),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
feature_keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=CFG.max_id_chars).filter(
    lambda k: k != "category"
)
events: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict,
    event_id=ids,
    user_id=ids,
    item_id=ids,
    action=st.sampled_from(CFG.actions),
    condition=ids,
    ts=st.integers(min_value=CFG.min_ts_ms, max_value=NOW),
    features=st.one_of(
        st.none(),
        st.dictionaries(feature_keys, feature_values, max_size=CFG.max_features - 1),
    ),
)


@given(events)
def test_round_trip(obj: dict[str, Any]) -> None:
    ev = validate(obj, CFG, now_ms=NOW)
    raw = encode(ev)
    assert decode(raw, CFG, now_ms=NOW) == ev
    assert encode(decode(raw, CFG, now_ms=NOW)) == raw
    assert validate(to_dict(ev), CFG, now_ms=NOW) == ev
    assert orjson.loads(raw) == to_dict(ev)
    assert isinstance(ev.user_id, str)
    assert isinstance(ev.ts, int)
