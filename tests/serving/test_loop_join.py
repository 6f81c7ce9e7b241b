"""The loop's pieces together on the real broker: lists logged by the served log and clicks
posted to /v1/events meet in the worker's label join; the sample of the clicked impression
is labelled 1 with the position it was shown at, the other showing of the same item 0."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from monitoring.metrics import Metrics
from serving.events_http import add_event_routes
from serving.explore import Explorer
from serving.loop_config import EventsApiConfig, ExploreConfig, ServedLogConfig
from serving.served_log import ServedList, ServedLog
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.contracts.ids import stable_id
from streams.kafka.consumer import read_topic
from streams.worker.decode import event_hash
from streams.worker.processor import open_processor

pytestmark = pytest.mark.integration


def post_click(kafka: KafkaConfig, metrics: Metrics, body: dict[str, Any]) -> int:
    status: list[int] = []

    async def main() -> None:
        app = web.Application()
        add_event_routes(
            app, EventsApiConfig(), kafka, kafka.bootstrap_servers, EventConfig(), metrics=metrics
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            resp = await client.post("/v1/events", data=orjson.dumps(body))
            status.append(resp.status)

    asyncio.run(main())
    return status[0]


def test_a_posted_click_joins_the_logged_impression_of_its_request(
    tmp_path: Path, kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    now = time.time_ns() // 1_000_000
    explorer = Explorer(ExploreConfig(share=1.0, seed=3))
    ranked = ["i1", "i2", "i3", "i4"]
    shown, randomized = explorer.apply("req-2", ranked)
    cfg = ServedLogConfig(ship_interval_s=0.01)
    with ServedLog(
        cfg,
        tmp_path / "spool",
        kafka_cfg,
        kafka_cfg.bootstrap_servers,
        EventConfig(),
        metrics=metrics,
    ) as log:
        log.log(ServedList("req-1", "u7", "home", ranked, ranker_version="r1", ts_ms=now))
        log.log(
            ServedList(
                "req-2",
                "u7",
                "home",
                shown,
                ranker_version="r1",
                randomized=randomized,
                ts_ms=now + 10,
            )
        )
        assert log.wait_shipped(20)
    slot = shown.index("i3")
    click = {
        "event_id": "click-1",
        "user_id": "u7",
        "item_id": "i3",
        "action": "click",
        "condition": "home",
        "ts": now + 500,
        "features": {"request_id": "req-2"},
    }
    assert post_click(kafka_cfg, metrics, click) == 202
    # a later event on the same partition, past the label window, closes the impressions
    tick = dict(click, event_id="tick", user_id="u7", item_id="zz", ts=now + 120_000)
    tick.pop("features")
    assert post_click(kafka_cfg, metrics, tick) == 202

    records = read_topic(kafka_cfg, kafka_cfg.bootstrap_servers, kafka_cfg.topic_events)
    assert len({r.partition for r in records}) == 1  # one user: one partition, in order
    proc = open_processor(
        tmp_path / "store",
        records[0].partition,
        StoreConfig(sync_writes=False),
        WorkerConfig(label_window_s=60.0),
        EventConfig(),
        metrics,
    )
    try:
        result = proc.process(
            [r.offset for r in records], [r.key for r in records], [r.value for r in records]
        )
        proc.commit()
    finally:
        proc.close()
    assert result.dead_letters == []
    assert result.samples is not None
    rows = result.samples.rows
    assert len(rows) == 8
    i3 = rows[rows["item"] == stable_id("i3")]
    by_eid = {int(r["eid"]): r for r in i3}
    clicked = by_eid[event_hash(f"req-2:{slot}")]
    other = by_eid[event_hash("req-1:2")]
    assert (int(clicked["label"]), int(clicked["slot"]), int(clicked["randomized"])) == (
        1,
        slot,
        1,
    )
    assert (int(other["label"]), int(other["slot"]), int(other["randomized"])) == (0, 2, 0)
    assert int(np.sum(rows["label"])) == 1
