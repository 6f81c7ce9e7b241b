"""Accepted events/s of ``POST /v1/events`` (serving/events_http.py), with its baseline.

One run on this machine: a fresh embedded broker, the endpoint in its own process (an
aiohttp app with :func:`serving.events_http.add_event_routes` and, as the baseline, an
empty ``POST /noop`` that reads the body and answers 202 without Kafka), and a client in
this process:

- **closed loop**: ``--concurrency`` clients, each posting its next request as soon as the
  previous one is answered, for ``--duration`` s: single events, then batches of
  ``--batch`` events; the same against ``/noop`` (the HTTP stack's own cost);
- **open loop**: requests sent on a fixed schedule at each of ``--rates`` requests/s of
  single events (latency measured from the *scheduled* send time, so a slow server
  cannot hide its queue), and batches at ``--batch-rates``.

Every answer is checked: an accepted request is a 202 (Kafka acknowledged its events).

Usage::

    python bench/events_api.py                  # a table
    python bench/events_api.py --duration 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from bench.machine import machine
from monitoring.metrics import Metrics
from serving.loop_config import EventsApiConfig
from streams.config import BrokerConfig, EventConfig, KafkaConfig
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.consumer import end_offsets
from streams.kafka.topics import ensure_topics

USERS = 1000


def serve(port: int, bootstrap: str, max_batch: int) -> None:
    """The server process: /v1/events and /noop on 127.0.0.1:port."""
    from aiohttp import web

    from serving.events_http import add_event_routes

    async def noop(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"accepted": 0}, status=202)

    app = web.Application()
    cfg = EventsApiConfig(max_batch=max_batch, max_body_bytes=16 * 1024 * 1024)
    add_event_routes(
        app,
        cfg,
        KafkaConfig(bootstrap_servers=bootstrap),
        bootstrap,
        EventConfig(),
        metrics=Metrics(CollectorRegistry()),
        linger_ms=1,
    )
    app.router.add_post("/noop", noop)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Bodies:
    """Distinct valid events (fresh ids and times), encoded as single or batch bodies."""

    def __init__(self, batch: int) -> None:
        self.n = 0
        self.batch = batch

    def _event(self) -> dict[str, Any]:
        self.n += 1
        return {
            "event_id": f"bench-{os.getpid()}-{self.n}",
            "user_id": str(self.n % USERS),
            "item_id": str(self.n % 997),
            "action": "click",
            "condition": "home",
            "ts": time.time_ns() // 1_000_000,
            "features": {"request_id": f"r{self.n // 10}", "position": self.n % 10},
        }

    def single(self) -> bytes:
        return orjson.dumps(self._event())

    def many(self) -> bytes:
        return orjson.dumps([self._event() for _ in range(self.batch)])


def _summary(lat: list[float], ok: int, bad: int, events: int, seconds: float) -> dict[str, Any]:
    arr = np.asarray(lat) * 1000 if lat else np.zeros(1)
    return {
        "accepted_events": events,
        "requests": ok + bad,
        "errors": bad,
        "requests_per_s": ok / seconds,
        "events_per_s": events / seconds,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
    }


async def closed_loop(
    url: str, make: Any, per_request: int, concurrency: int, duration: float
) -> dict[str, Any]:
    import aiohttp

    lat: list[float] = []
    counts = {"ok": 0, "bad": 0}
    end = time.perf_counter() + duration

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < end:
            body = make()
            t0 = time.perf_counter()
            async with session.post(url, data=body) as resp:
                await resp.read()
                counts["ok" if resp.status == 202 else "bad"] += 1
            lat.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    return _summary(lat, counts["ok"], counts["bad"], counts["ok"] * per_request, seconds)


async def open_loop(
    url: str, make: Any, per_request: int, rate: float, duration: float
) -> dict[str, Any]:
    import aiohttp

    lat: list[float] = []
    counts = {"ok": 0, "bad": 0}
    n = int(rate * duration)

    async def one(session: aiohttp.ClientSession, scheduled: float, body: bytes) -> None:
        try:
            async with session.post(url, data=body) as resp:
                await resp.read()
                counts["ok" if resp.status == 202 else "bad"] += 1
        except aiohttp.ClientError:
            counts["bad"] += 1
        lat.append(time.perf_counter() - scheduled)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        tasks = []
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, scheduled, make())))
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - start
    out = _summary(lat, counts["ok"], counts["bad"], counts["ok"] * per_request, seconds)
    out["target_requests_per_s"] = rate
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server on port {port} did not start")


async def measure(base: str, args: argparse.Namespace) -> dict[str, Any]:
    bodies = Bodies(args.batch)
    events, noop = f"{base}/v1/events", f"{base}/noop"
    c, d = args.concurrency, args.duration
    out: dict[str, Any] = {"closed": {}, "open": {}}
    # warm-up: connections, the producer's metadata
    out["warmup"] = await closed_loop(events, bodies.single, 1, 2, 0.5)
    out["closed"]["noop_single"] = await closed_loop(noop, bodies.single, 1, c, d)
    out["closed"]["single"] = await closed_loop(events, bodies.single, 1, c, d)
    out["closed"]["noop_batch"] = await closed_loop(noop, bodies.many, args.batch, c, d)
    out["closed"]["batch"] = await closed_loop(events, bodies.many, args.batch, c, d)
    for rate in args.rates:
        out["open"][f"single@{rate:g}"] = await open_loop(events, bodies.single, 1, rate, d)
    for rate in args.batch_rates:
        out["open"][f"batch@{rate:g}"] = await open_loop(events, bodies.many, args.batch, rate, d)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--batch", type=int, default=100, help="events per batch request")
    parser.add_argument(
        "--rates", type=float, nargs="*", default=[200.0, 500.0, 1000.0], help="open loop req/s"
    )
    parser.add_argument(
        "--batch-rates", type=float, nargs="*", default=[20.0, 50.0], help="open loop batch req/s"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "BOOTSTRAP", "MAX_BATCH"))
    args = parser.parse_args(argv)
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], int(args.serve[2]))
        return 0
    metrics = Metrics(CollectorRegistry())
    with EmbeddedBroker(BrokerConfig(), metrics=metrics) as broker:
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap)
        ensure_topics(kafka, broker.bootstrap)
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), broker.bootstrap, str(args.batch)],
            env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        try:
            _wait_up(port)
            results = asyncio.run(measure(f"http://127.0.0.1:{port}", args))
            on_topic = sum(end_offsets(kafka, broker.bootstrap, kafka.topic_events).values())
        finally:
            server.terminate()
            server.wait(30)
    result = {
        "config": {
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "batch": args.batch,
            "partitions": kafka.partitions,
            "server": "one aiohttp process, librdkafka linger.ms=1, acks=all",
        },
        "machine": machine(),
        **results,
    }
    errors = sum(r["errors"] for part in ("closed", "open") for r in result[part].values())
    # every acknowledged event is on the topic (the no-op cases produce nothing)
    acked = result["warmup"]["accepted_events"] + sum(
        r["accepted_events"]
        for part in ("closed", "open")
        for case, r in result[part].items()
        if not case.startswith("noop")
    )
    result["events_acknowledged"] = acked
    result["events_on_topic"] = on_topic
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        _print_table(result)
        print(f"acknowledged events: {acked:,}; on lum.events: {on_topic:,}")
    if on_topic < acked:
        return 1
    return 0 if errors == 0 else 1


def _print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"machine: {m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}, "
        f"load {m['load_average_1m']}"
    )
    print("config: " + ", ".join(f"{k}={v}" for k, v in r["config"].items()))
    head = f"{'mode':<8} {'case':<14} {'target/s':>9} {'req/s':>9} {'events/s':>10} "
    head += f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}"
    print(head)
    for mode in ("closed", "open"):
        for case, x in r[mode].items():
            target = f"{x['target_requests_per_s']:g}" if "target_requests_per_s" in x else "-"
            print(
                f"{mode:<8} {case:<14} {target:>9} {x['requests_per_s']:>9,.0f} "
                f"{x['events_per_s']:>10,.0f} {x['p50_ms']:>8.2f} {x['p99_ms']:>8.2f} "
                f"{x['max_ms']:>8.1f} {x['errors']:>7}"
            )


if __name__ == "__main__":
    sys.exit(main())
