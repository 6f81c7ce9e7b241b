"""Hot swap: versions published while requests flow are picked up with zero errors, the
version sequence each client sees is monotone, and every response is scored entirely by
the version it names (its scores equal that version's own scores for the request)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from support.metrics import sample
from support.ranker import samples
from support.serving import Clock, one_per_user, service, trained, write_histories

from monitoring.metrics import Metrics
from serving.api import Candidate, RankRequest
from serving.client import RankClient, RankError
from serving.config import ServingConfig
from serving.models import load_served
from serving.service import RankService


def _wait_for(svc: RankService, name: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while svc.served is None or svc.served.name != name:
        assert time.monotonic() < deadline, f"{name} was not loaded"
        time.sleep(0.02)


def test_three_versions_published_under_requests(tmp_path: Path, metrics: Metrics) -> None:
    with trained(tmp_path, steps=256) as t:
        t.publish()
        chosen = one_per_user(samples().slice(640, 3000), 4)
        writer = write_histories(t.paths.store, chosen)
        user = str(int(chosen.rows["user"][0]))
        req = RankRequest(user, [Candidate(str(i), "cat1") for i in range(30)], condition="cat1")
        clock = Clock(int(chosen.rows["ts"].max()) + 1000)
        seen: list[list[tuple[int, dict[str, float]]]] = [[], []]
        errors: list[Exception] = []
        done = threading.Event()

        def keep_asking(out: list[tuple[int, dict[str, float]]], url: str) -> None:
            with RankClient(url) as c:
                while not done.is_set():
                    try:
                        r = c.rank(req)
                    except (RankError, OSError) as exc:
                        errors.append(exc)
                        continue
                    out.append((int(r.ranker_version[1:]), {i.item_id: i.score for i in r.items}))

        stop = threading.Event()
        try:
            with service(t.paths, ServingConfig(watch_s=0.05), metrics, clock=clock) as (svc, srv):
                svc.watch(stop)
                clients = [
                    threading.Thread(target=keep_asking, args=(out, srv.url)) for out in seen
                ]
                for c in clients:
                    c.start()
                for k in range(3):
                    t.train(256 + 128 * k, 384 + 128 * k)
                    path = t.publish()
                    _wait_for(svc, path.name)
                    n = sum(len(s) for s in seen)
                    while sum(len(s) for s in seen) < n + 5:  # requests on the new version
                        time.sleep(0.01)
                done.set()
                for c in clients:
                    c.join(timeout=30)
                # each version's own scores for the request, by the same service code
                want = {}
                for path in t.published:
                    svc._swap(load_served(path))
                    want[svc.served.number] = {  # type: ignore[union-attr]
                        i.item_id: i.score for i in svc.rank(req).items
                    }
        finally:
            done.set()
            stop.set()
            writer.close()
    assert errors == []
    for got in seen:
        versions = [v for v, _ in got]
        assert versions == sorted(versions), "a client saw an older version after a newer one"
    assert {v for got in seen for v, _ in got} == {1, 2, 3, 4}
    for got in seen:
        for v, scores in got:
            assert scores.keys() == want[v].keys()
            for item, s in scores.items():
                assert s == pytest.approx(want[v][item], abs=1e-6), (v, item)
    assert sample(metrics, "lumstream_serving_model_version") == 4


def test_a_pinned_version_stays(tmp_path: Path, metrics: Metrics) -> None:
    with trained(tmp_path, steps=128) as t:
        t.publish()
        t.publish()
        stop = threading.Event()
        cfg = ServingConfig(watch_s=0.05, pin_version="r1")
        try:
            with service(t.paths, cfg, metrics) as (svc, srv), RankClient(srv.url) as c:
                svc.watch(stop)
                t.publish()
                time.sleep(0.3)
                models = c.models()
                assert models.loaded is not None
                assert models.loaded.ranker_version == "r1"
                assert models.loaded.pinned
                assert models.available == ["r1", "r2", "r3"]
                assert c.rank(RankRequest("1", [Candidate("2")])).ranker_version == "r1"
        finally:
            stop.set()
