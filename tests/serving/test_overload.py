"""Overload: beyond ``max_inflight`` admitted requests the answer is an immediate 503 with
Retry-After (no unbounded queue); past ``deadline_ms`` it is a 504, never a late 200.

The scoring thread is held deterministically: the service's event-time clock (read on the
scoring thread inside every request) waits on a gate the test opens."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from support.metrics import sample
from support.ranker import samples
from support.serving import one_per_user, service, trained, write_histories

from monitoring.metrics import Metrics
from serving.api import Candidate, RankRequest
from serving.client import RankClient, RankError
from serving.config import ServingConfig

REQ = RankRequest("7", [Candidate(str(i)) for i in range(20)])


class GatedClock:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self) -> int:
        self.gate.wait(30)
        return int(time.time() * 1000)


def _outcome(url: str, out: list[object]) -> None:
    with RankClient(url, timeout_s=30) as c:
        try:
            out.append(c.rank(REQ))
        except RankError as exc:
            out.append(exc)


def _wait_inflight(metrics: Metrics, n: int) -> None:
    deadline = time.monotonic() + 10
    while sample(metrics, "lumstream_serving_inflight_requests") != n:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_beyond_max_inflight_is_an_immediate_503(tmp_path: Path, metrics: Metrics) -> None:
    clock = GatedClock()
    cfg = ServingConfig(max_inflight=2, deadline_ms=30_000, retry_after_s=2)
    with trained(tmp_path, steps=128) as t:
        t.publish()
        write_histories(t.paths.store, one_per_user(samples().slice(640, 1000), 2)).close()
        with service(t.paths, cfg, metrics, clock=clock) as (_, srv):
            clock.gate.clear()
            admitted: list[object] = []
            threads = [threading.Thread(target=_outcome, args=(srv.url, admitted)) for _ in (1, 2)]
            for th in threads:
                th.start()
            _wait_inflight(metrics, 2)  # one scoring (held), one queued for the thread
            with RankClient(srv.url) as c:
                for _ in range(3):
                    with pytest.raises(RankError) as refused:
                        c.rank(REQ)
                    assert refused.value.status == 503
                    assert refused.value.error == "overloaded"
                    assert refused.value.retry_after == "2"
                assert c.raw("GET", "/healthz")[0] == 200  # the loop still answers
            clock.gate.set()
            for th in threads:
                th.join(timeout=30)
    assert [type(x).__name__ for x in admitted] == ["RankResponse", "RankResponse"]
    assert sample(metrics, "lumstream_serving_rejected_total", reason="overload") == 3
    assert (
        sample(
            metrics, "lumstream_serving_request_seconds_count", endpoint="rank", status="overloaded"
        )
        == 3
    )


def test_past_the_deadline_is_a_504_not_a_late_200(tmp_path: Path, metrics: Metrics) -> None:
    clock = GatedClock()
    cfg = ServingConfig(deadline_ms=300)
    with trained(tmp_path, steps=128) as t:
        t.publish()
        write_histories(t.paths.store, one_per_user(samples().slice(640, 1000), 2)).close()
        with service(t.paths, cfg, metrics, clock=clock) as (_, srv):
            clock.gate.clear()
            late: list[object] = []
            threads = [threading.Thread(target=_outcome, args=(srv.url, late)) for _ in (1, 2)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=30)
            clock.gate.set()
            with RankClient(srv.url) as c:
                assert len(c.rank(REQ).items) == 20  # healthy again
    assert [getattr(x, "status", 200) for x in late] == [504, 504]
    assert sample(metrics, "lumstream_serving_rejected_total", reason="deadline") == 2
