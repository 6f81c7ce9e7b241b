"""Bad input never becomes a 5xx: a corpus of hand-written and Hypothesis-generated bad
requests (malformed JSON, wrong types, missing fields, empty/oversized candidate lists,
oversized bodies, NaN/inf, unknown conditions, duplicates, lone surrogates...) each gets a
4xx with a reason and is counted; the service is healthy and scores after it."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.metrics import sample
from support.ranker import samples
from support.serving import one_per_user, service, trained, write_histories

from monitoring.metrics import Metrics
from serving.api import Candidate, RankRequest
from serving.client import RankClient
from serving.config import ServingConfig

CFG = ServingConfig(max_candidates=50, max_body_bytes=16_384, max_id_chars=64)
GOOD: dict[str, Any] = {
    "user_id": "7",
    "condition": "cat1",
    "candidates": [{"item_id": "1", "category": "cat1"}, {"item_id": 2}],
}


def _with(**changes: Any) -> bytes:
    body = dict(GOOD)
    for k, v in changes.items():
        if v is _DROP:
            body.pop(k)
        else:
            body[k] = v
    return json.dumps(body).encode()


_DROP = object()

HAND: list[bytes] = [
    b"",
    b"{",
    b"}",
    b"null",
    b"[]",
    b"42",
    b'"text"',
    b"\xff\xfe\x00",
    b"\xef\xbb\xbf" + json.dumps(GOOD).encode(),
    json.dumps(GOOD).encode()[:-1],
    json.dumps(GOOD).encode() + b"garbage",
    b'{"user_id": "7", "candidates": [{"item_id": NaN}]}',
    b'{"user_id": "7", "candidates": [{"item_id": Infinity}]}',
    b'{"user_id": "7", "candidates": [{"item_id": "1"}], "k": 1e999}',
    b'{"user_id": "7", "candidates": [{"item_id": "1"}], "k": -Infinity}',
    b'{"user_id": "7", "user_id": [], "candidates": [{"item_id": "1"}]}',
    b'{"user_id": "\\ud800", "candidates": [{"item_id": "1"}]}',
    b'{"user_id": "7", "candidates": [{"item_id": "\\udfff"}]}',
    b"[" * 5000 + b"]" * 5000,
    b'{"user_id": ' + b"[" * 3000 + b"]" * 3000 + b', "candidates": []}',
    _with(user_id=_DROP),
    _with(candidates=_DROP),
    _with(user_id=None),
    _with(user_id=""),
    _with(user_id="   "),
    _with(user_id=-1),
    _with(user_id=1.5),
    _with(user_id=True),
    _with(user_id=10**30),
    _with(user_id=2**63),
    _with(user_id="u" * 65),
    _with(user_id={"id": 1}),
    _with(candidates=[]),
    _with(candidates={}),
    _with(candidates="1,2"),
    _with(candidates=[1, 2]),
    _with(candidates=[{}]),
    _with(candidates=[{"item_id": None}]),
    _with(candidates=[{"item_id": ""}]),
    _with(candidates=[{"item_id": "x" * 65}]),
    _with(candidates=[{"item_id": -5}]),
    _with(candidates=[{"item_id": 2.0}]),
    _with(candidates=[{"item_id": [1]}]),
    _with(candidates=[{"item_id": "1", "category": ""}]),
    _with(candidates=[{"item_id": "1", "category": 1.5}]),
    _with(candidates=[{"item_id": "1", "price": 3}]),
    _with(candidates=[{"item_id": "1"}, {"item_id": "1"}]),
    _with(candidates=[{"item_id": "1"}, {"item_id": 1}]),
    _with(candidates=[{"item_id": str(i)} for i in range(51)]),
    _with(k=0),
    _with(k=-1),
    _with(k=1.5),
    _with(k="3"),
    _with(k=True),
    _with(k=51),
    _with(condition=""),
    _with(condition="no-such-condition"),
    _with(condition=123456),
    _with(condition=["cat1"]),
    _with(request_id=""),
    _with(request_id="r" * 200),
    _with(request_id=5),
    _with(extra="field"),
    _with(candidates=[{"item_id": "y" * 60, "category": "c" * 60}] * 300),  # > 16 KiB
    b" " * 20_000,
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ("user_id", "candidates", "condition", "k", "request_id", "other")


@st.composite
def broken_requests(draw: st.DrawFn) -> bytes:
    """A valid request with one field replaced, dropped or added, or raw junk bytes."""
    kind = draw(st.sampled_from(["replace", "drop", "candidate", "bytes", "json"]))
    body: dict[str, Any] = json.loads(json.dumps(GOOD))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        value = draw(json_values)
        return json.dumps(value).encode()
    if kind == "drop":
        body.pop(draw(st.sampled_from(["user_id", "candidates"])))
    elif kind == "replace":
        body[draw(st.sampled_from(FIELDS))] = draw(
            json_values.filter(lambda v: not isinstance(v, str) or len(v) == 0 or len(v) > 64)
        )
    else:
        cand = draw(st.dictionaries(st.sampled_from(["item_id", "category", "x"]), json_values))
        body["candidates"] = [*body["candidates"], cand]
    return json.dumps(body).encode()


def _post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", "/v1/rank", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_bad_requests_get_4xx_with_reasons(tmp_path: Path, metrics: Metrics) -> None:
    statuses: list[int] = []
    with trained(tmp_path, steps=128) as t:
        t.publish()
        write_histories(t.paths.store, one_per_user(samples().slice(640, 1000), 3)).close()
        with service(t.paths, CFG, metrics) as (_, srv):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)

            def check(body: bytes) -> None:
                status, data = _post(conn, body)
                assert status < 500, (body[:200], status, data[:300])
                if status != 200:
                    err = orjson.loads(data)
                    assert err["error"]
                    assert err["detail"]
                statuses.append(status)

            for body in HAND:
                check(body)
                assert statuses[-1] in (400, 413, 422), (body[:100], statuses[-1])

            @settings(
                max_examples=250,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
            )
            @given(broken_requests())
            def generated(body: bytes) -> None:
                check(body)

            generated()
            conn.request("GET", "/v1/rank")
            assert conn.getresponse().status == 405
            conn.close()
            with RankClient(srv.url) as c:
                assert c.raw("GET", "/healthz")[0] == 200
                assert c.ready().status == "ready"
                ok = c.rank(RankRequest("7", [Candidate("1", "cat1")], condition="cat1"))
                assert len(ok.items) == 1
    bad = [s for s in statuses if s >= 400]
    assert len(bad) >= 200
    rejected = sample(metrics, "lumstream_serving_rejected_total", reason="invalid")
    assert rejected == len(bad)
    counted = sample(
        metrics, "lumstream_serving_request_seconds_count", endpoint="rank", status="bad_request"
    )
    assert counted == len(bad)
