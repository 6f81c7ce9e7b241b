"""POST /v1/events on a standalone aiohttp app against the real embedded broker: accepted
events are on lum.events when the answer comes, bad ones get a 4xx naming the field and
the reason (per event in a batch), limits hold, duplicates are harmless, and a Kafka
outage is a 503 with Retry-After, never a 5xx crash or a false acknowledgement."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from monitoring.metrics import Metrics
from serving.events_http import add_event_routes
from serving.loop_config import EventsApiConfig
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.kafka.consumer import read_topic
from streams.worker.processor import open_processor

pytestmark = pytest.mark.integration

NOW = time.time_ns() // 1_000_000


def ev(eid: str, **over: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "event_id": eid,
        "user_id": "u1",
        "item_id": "i1",
        "action": "click",
        "condition": "home",
        "ts": NOW,
        "features": {"request_id": "req-1", "position": 2},
    }
    obj.update(over)
    return obj


Call = Callable[[TestClient[Any, Any]], Awaitable[None]]


def run_app(
    kafka: KafkaConfig,
    metrics: Metrics,
    call: Call,
    cfg: EventsApiConfig | None = None,
) -> None:
    async def main() -> None:
        app = web.Application()
        add_event_routes(
            app,
            cfg or EventsApiConfig(ack_timeout_s=5.0),
            kafka,
            kafka.bootstrap_servers,
            EventConfig(),
            metrics=metrics,
            linger_ms=1,
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            await call(client)

    asyncio.run(main())


def on_topic(kafka: KafkaConfig) -> list[dict[str, Any]]:
    records = read_topic(kafka, kafka.bootstrap_servers, kafka.topic_events, timeout_s=10)
    return [orjson.loads(r.value) for r in records]


def test_one_event_and_a_batch_are_on_the_topic_when_acknowledged(
    kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    answers: list[tuple[int, Any]] = []

    async def call(client: TestClient[Any, Any]) -> None:
        for body in (ev("e1"), [ev("e2"), ev("e3", user_id=42)]):
            resp = await client.post("/v1/events", data=orjson.dumps(body))
            answers.append((resp.status, await resp.json()))

    run_app(kafka_cfg, metrics, call)
    assert answers[0] == (
        202,
        {
            "accepted": 1,
            "rejected": 0,
            "results": [{"index": 0, "status": "accepted", "event_id": "e1"}],
        },
    )
    assert answers[1][0] == 202
    assert answers[1][1]["accepted"] == 2
    got = {e["event_id"]: e for e in on_topic(kafka_cfg)}
    assert set(got) == {"e1", "e2", "e3"}
    assert got["e3"]["user_id"] == "42"  # normalised by the contract
    assert got["e1"]["features"] == {"request_id": "req-1", "position": 2}
    value = metrics.registry.get_sample_value
    assert value("lumstream_events_api_events_total", {"outcome": "accepted"}) == 3
    assert value("lumstream_events_api_requests_total", {"status": "202"}) == 2
    assert (
        value(
            "lumstream_events_produced_total", {"topic": kafka_cfg.topic_events, "source": "http"}
        )
        == 3
    )
    assert value("lumstream_events_api_ack_seconds_count") == 2


BAD_EVENTS = [
    ({k: v for k, v in ev("b").items() if k != "user_id"}, "missing_field", "user_id"),
    (ev("b", user_id=[1]), "wrong_type", "user_id"),
    (ev("b", user_id=""), "empty_field", "user_id"),
    (ev("b", item_id="x" * 500), "field_too_long", "item_id"),
    (ev("b", action="like"), "unknown_action", "action"),
    (ev("b", ts=1), "ts_out_of_range", "ts"),
    (ev("b", ts="soon"), "wrong_type", "ts"),
    (ev("b", colour="red"), "unknown_field", "colour"),
    (ev("b", features={"position": -3}), "out_of_range", "features.position"),
    (ev("b", features={"randomized": "no"}), "wrong_type", "features.randomized"),
    (ev("b", features={"request_id": ""}), "empty_field", "features.request_id"),
    (ev("b", features={f"k{i}": i for i in range(40)}), "too_many_features", "features"),
    (ev("b", features={"note": "x" * 5000}), "field_too_long", "features.note"),
    ("just a string", "not_an_object", None),
    (17, "not_an_object", None),
]


def test_bad_events_get_a_400_naming_field_and_reason(
    kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    singles: list[tuple[int, Any]] = []
    batch: list[tuple[int, Any]] = []

    async def call(client: TestClient[Any, Any]) -> None:
        for body, _, _ in BAD_EVENTS:
            if not isinstance(body, dict):
                continue
            resp = await client.post("/v1/events", data=orjson.dumps(body))
            singles.append((resp.status, await resp.json()))
        mixed = [ev("ok-1"), *(b for b, _, _ in BAD_EVENTS), ev("ok-2")]
        resp = await client.post("/v1/events", data=orjson.dumps(mixed))
        batch.append((resp.status, await resp.json()))

    run_app(kafka_cfg, metrics, call)
    dict_cases = [(r, f) for b, r, f in BAD_EVENTS if isinstance(b, dict)]
    for (status, body), (reason, field) in zip(singles, dict_cases, strict=True):
        assert status == 400, body
        assert body["accepted"] == 0
        result = body["results"][0]
        assert (result["status"], result["reason"], result["field"]) == ("rejected", reason, field)
        assert result["detail"]
    status, body = batch[0]
    assert status == 400
    assert body["accepted"] == 2
    assert body["rejected"] == len(BAD_EVENTS)
    results = body["results"]
    assert results[0] == {"index": 0, "status": "accepted", "event_id": "ok-1"}
    assert results[-1]["event_id"] == "ok-2"
    assert [(r["reason"], r["field"]) for r in results[1:-1]] == [(r, f) for _, r, f in BAD_EVENTS]
    # the accepted events of the mixed batch were produced, nothing else
    assert sorted(e["event_id"] for e in on_topic(kafka_cfg)) == ["ok-1", "ok-2"]
    value = metrics.registry.get_sample_value
    assert value("lumstream_events_rejected_total", {"stage": "http", "reason": "wrong_type"}) == 6


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b'{"event_id": "e1",', 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b'{"event_id": NaN}', 400, "non_finite"),
        (b"\xff\xfe", 400, "non_utf8"),
        (b"[]", 400, "empty_batch"),
        (b"null", 400, "not_an_object"),
        (orjson.dumps([ev(f"e{i}") for i in range(11)]), 413, "batch_too_large"),
        (b"[" + b" " * 5000 + b"]", 413, "oversized"),
    ],
)
def test_bodies_that_are_wrong_as_a_whole(
    kafka_cfg: KafkaConfig, metrics: Metrics, body: bytes, status: int, reason: str
) -> None:
    got: list[tuple[int, Any]] = []

    async def call(client: TestClient[Any, Any]) -> None:
        resp = await client.post("/v1/events", data=body)
        got.append((resp.status, await resp.json()))

    cfg = EventsApiConfig(max_batch=10, max_body_bytes=4096)
    run_app(kafka_cfg, metrics, call, cfg)
    assert got[0][0] == status
    assert got[0][1]["error"] == reason
    assert got[0][1]["detail"]


def test_a_duplicate_event_id_is_harmless(
    tmp_path: Path, kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    statuses: list[int] = []

    async def call(client: TestClient[Any, Any]) -> None:
        for _ in range(2):
            resp = await client.post("/v1/events", data=orjson.dumps(ev("same")))
            statuses.append(resp.status)

    run_app(kafka_cfg, metrics, call)
    assert statuses == [202, 202]
    records = read_topic(kafka_cfg, kafka_cfg.bootstrap_servers, kafka_cfg.topic_events)
    assert len(records) == 2
    assert len({r.partition for r in records}) == 1  # key = user id: one partition
    proc = open_processor(
        tmp_path,
        records[0].partition,
        StoreConfig(sync_writes=False),
        WorkerConfig(),
        EventConfig(),
        metrics,
    )
    try:
        result = proc.process(
            [r.offset for r in records], [r.key for r in records], [r.value for r in records]
        )
    finally:
        proc.close()
    assert result.applied == 1
    assert [d.reason for d in result.dead_letters] == ["duplicate"]


def test_kafka_down_is_a_503_with_retry_after(metrics: Metrics) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = KafkaConfig(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=300)
    got: list[tuple[int, Any, str | None]] = []

    async def call(client: TestClient[Any, Any]) -> None:
        resp = await client.post("/v1/events", data=orjson.dumps(ev("e1")))
        got.append((resp.status, await resp.json(), resp.headers.get("Retry-After")))
        resp = await client.post("/v1/events", data=b"{")  # bad input still a 400
        got.append((resp.status, await resp.json(), None))

    run_app(down, metrics, call, EventsApiConfig(ack_timeout_s=0.5, retry_after_s=2))
    assert got[0][0] == 503
    assert got[0][1]["error"] == "kafka_unavailable"
    assert got[0][2] == "2"
    assert got[1][0] == 400
    value = metrics.registry.get_sample_value
    assert value("lumstream_events_api_events_total", {"outcome": "unavailable"}) == 1
    assert value("lumstream_events_api_requests_total", {"status": "503"}) == 1


def _hostile_bodies(n: int, seed: int = 11) -> list[bytes]:
    """Valid events mutated at random: fields dropped, retyped, stretched, nested, the
    bytes truncated or flipped, arrays of them, big integers, BOMs."""
    rng = random.Random(seed)
    weird: list[Any] = [
        None,
        True,
        -1,
        0,
        2**64,
        10**30,
        1.5,
        1e308,
        "",
        " ",
        "x" * 300,
        "\u00e9",
        [],
        {},
        [1, 2],
        {"a": {"b": 1}},
    ]
    out: list[bytes] = []
    for i in range(n):
        obj: dict[str, Any] = ev(f"h{i}")
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            key = rng.choice([*obj.keys(), "features", "extra"])
            if op < 0.3:
                obj.pop(key, None)
            elif op < 0.7:
                obj[key] = rng.choice(weird)
            else:
                feats = obj.get("features") if isinstance(obj.get("features"), dict) else {}
                feats = dict(feats)
                feats[rng.choice(["position", "request_id", "randomized", "k"])] = rng.choice(weird)
                obj["features"] = feats
        try:
            raw = orjson.dumps(obj)
        except TypeError:  # an int orjson will not write: the JSON text by hand
            raw = str(obj).encode()
        r = rng.random()
        if r < 0.15:
            raw = raw[: rng.randint(0, len(raw))]
        elif r < 0.25:
            b = bytearray(raw)
            b[rng.randrange(len(b))] = rng.randrange(256)
            raw = bytes(b)
        elif r < 0.4:
            raw = b"[" + b",".join([raw, orjson.dumps(ev(f"ok{i}"))]) + b"]"
        elif r < 0.45:
            raw = b"\xef\xbb\xbf" + raw
        out.append(raw)
    return out


def test_a_hostile_corpus_never_gets_a_5xx(kafka_cfg: KafkaConfig, metrics: Metrics) -> None:
    bodies = _hostile_bodies(240)
    bodies += [b"[" + b",".join([orjson.dumps(ev("big"))[:-1] + b',"k":1}'] * 3) + b"]"]
    bodies.append(
        b'[{"event_id":123456789012345678901,"user_id":"u","item_id":"i",'
        b'"action":"click","condition":"c","ts":%d}]' % NOW
    )
    statuses: list[int] = []
    answers: list[Any] = []

    async def call(client: TestClient[Any, Any]) -> None:
        for body in bodies:
            resp = await client.post("/v1/events", data=body)
            statuses.append(resp.status)
            answers.append(await resp.json())
        health = await client.post("/v1/events", data=orjson.dumps(ev("after")))
        statuses.append(health.status)

    run_app(kafka_cfg, metrics, call)
    assert set(statuses) <= {202, 400, 413}, sorted(set(statuses))
    assert statuses[-1] == 202  # still serving after the corpus
    assert statuses.count(400) > 100
    for status, body in zip(statuses, answers, strict=False):
        if status == 400 and "results" in body:
            for r in body["results"]:
                assert r["status"] == "accepted" or (r["reason"] and r["detail"])
        elif status != 202:
            assert body["error"]
            assert body["detail"]
    # a 21-digit integer id in a batch keeps its digits, as it does in a single event
    assert answers[-1]["results"][0]["event_id"] == "123456789012345678901"
