"""The extension points the closed loop uses (``on_served`` and extra routes through
``AppHooks``), and following lum.model-updates: an announcement makes the service load the
new version at once, long before its next directory poll."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from support.ranker import samples
from support.serving import STORE, WORKER_HISTORY, one_per_user, trained, write_histories

from monitoring.config import MetricsConfig
from monitoring.metrics import Metrics
from serving.api import Candidate, RankRequest, RankResponse
from serving.client import RankClient
from serving.config import ServingConfig
from serving.process import AppHooks, ServeSpec, build_app
from serving.server import BackgroundServer
from serving.service import RankService
from streams.config import KafkaConfig
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.producer import Producer
from trainer.ranker.checkpoint import announce

served_lists: list[tuple[str, RankResponse]] = []  # (request id, response)


def hooks(service: RankService, metrics: Metrics) -> AppHooks:
    """A ``--hooks`` function: an extra route and an on_served that records."""

    async def ping(_: web.Request) -> web.Response:
        return web.json_response({"version": service.served.name if service.served else None})

    def add_routes(app: web.Application) -> None:
        app.router.add_get("/v1/ping", ping)

    def on_served(request: RankRequest, response: RankResponse) -> None:
        served_lists.append((request.request_id or "", response))

    return AppHooks(on_served=on_served, add_routes=add_routes)


def test_hooks_add_routes_and_see_every_served_list(tmp_path: Path, metrics: Metrics) -> None:
    with trained(tmp_path, steps=128) as t:
        t.publish()
        write_histories(t.paths.store, one_per_user(samples().slice(640, 1000), 2)).close()
        cfg = ServingConfig()
        spec = ServeSpec(
            cfg, STORE, WORKER_HISTORY, t.paths, MetricsConfig(), hooks=f"{__name__}:hooks"
        )
        svc = RankService(cfg, STORE, WORKER_HISTORY, t.paths, metrics)
        svc.watcher.check()
        try:
            with BackgroundServer(build_app(spec, svc, metrics)) as srv, RankClient(srv.url) as c:
                resp = c.rank(RankRequest("7", [Candidate("1"), Candidate("2")], request_id="a"))
                assert c.raw("GET", "/v1/ping") == (200, b'{"version": "r1"}')
        finally:
            svc.close()
    assert served_lists == [("a", resp)]


@pytest.mark.integration
def test_an_announcement_swaps_at_once(
    tmp_path: Path, kafka_cfg: KafkaConfig, broker: EmbeddedBroker, metrics: Metrics
) -> None:
    with trained(tmp_path, steps=128) as t:
        t.publish()
        cfg = ServingConfig(watch_s=120.0)  # only the announcement can make it look again
        svc = RankService(cfg, STORE, WORKER_HISTORY, t.paths, metrics)
        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            threads = svc.watch(stop, kafka_cfg, broker.bootstrap)
            deadline = time.monotonic() + 20
            while svc.served is None:  # the first check at start
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(1.0)  # the follower positioned at the topic's end
            path = t.publish()
            with Producer(kafka_cfg, broker.bootstrap, metrics=Metrics(CollectorRegistry())) as p:
                announce(lambda k, v: p.send(kafka_cfg.topic_model_updates, k, v), path, {})
                p.flush()
            deadline = time.monotonic() + 20
            while svc.served.name != path.name:
                assert time.monotonic() < deadline, "the announcement did not wake the watcher"
                time.sleep(0.02)
        finally:
            stop.set()
            svc.watcher.wake()
            for th in threads:
                th.join(timeout=10)
            svc.close()
