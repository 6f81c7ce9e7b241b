"""The service reads the sequence store while a real worker (real broker, real RocksDB)
writes it: a click the worker has applied is in the history of the very next request."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry
from support.serving import STORE, service, trained

from monitoring.metrics import Metrics
from serving.api import Candidate, RankRequest
from serving.client import RankClient
from serving.config import ServingConfig
from streams.config import EventConfig, KafkaConfig, WorkerConfig
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.producer import Producer
from streams.worker.engine import run_worker


def _click(user: str, item: str, ts: int) -> tuple[bytes, bytes]:
    event = {
        "event_id": uuid.uuid4().hex,
        "user_id": user,
        "item_id": item,
        "action": "click",
        "condition": "cat1",
        "ts": ts,
        "features": {"category": "cat1"},
    }
    return user.encode(), orjson.dumps(event)


def _applied(m: Metrics) -> float:
    return sum(
        s.value
        for metric in m.registry.collect()
        if metric.name == "lumstream_worker_events_applied"
        for s in metric.samples
        if s.name.endswith("_total")
    )


@pytest.mark.integration
def test_a_click_applied_by_a_worker_is_seen_by_the_next_request(
    tmp_path: Path, kafka_cfg: KafkaConfig, broker: EmbeddedBroker, metrics: Metrics
) -> None:
    worker_metrics = Metrics(CollectorRegistry())
    stop = threading.Event()
    with trained(tmp_path, steps=256) as t:
        t.publish()
        worker = threading.Thread(
            target=run_worker,
            args=(
                kafka_cfg,
                STORE,
                WorkerConfig(batch_timeout_ms=20),
                EventConfig(),
                broker.bootstrap,
                t.paths.store,
                worker_metrics,
            ),
            kwargs={"stop": stop},
        )
        worker.start()
        user = "live-user-1"
        req = RankRequest(user, [Candidate("5", "cat1"), Candidate("6")], condition="cat1")
        now = int(time.time() * 1000)
        try:
            with (
                Producer(kafka_cfg, broker.bootstrap, metrics=Metrics(CollectorRegistry())) as p,
                service(t.paths, ServingConfig(), metrics) as (svc, srv),
                RankClient(srv.url) as client,
            ):
                for n in range(1, 9):
                    p.send(kafka_cfg.topic_events, *_click(user, str(10 + n), now - 5000 + n))
                    p.flush()
                    deadline = time.monotonic() + 60
                    while _applied(worker_metrics) < n:
                        assert time.monotonic() < deadline, "the worker did not apply the click"
                        time.sleep(0.02)
                    # applied (committed) by the worker: the very next request sees it
                    assert client.rank(req).history == n
                assert svc.not_ready() is None
        finally:
            stop.set()
            worker.join(timeout=30)
    assert not worker.is_alive()
