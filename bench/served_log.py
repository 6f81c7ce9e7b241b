"""The served-impressions log (serving/served_log.py): its cost on the request path and
how fast it ships, with its baseline.

One run on this machine, a fresh embedded broker:

- ``baseline_write``: encoding a list and one ``os.write`` to a file, nothing else (the
  least a durable-across-kill spool can cost per request);
- ``log_kafka_up``: :meth:`ServedLog.log` per list while the shipper runs beside it
  (expanding, validating, producing, acknowledging): the request path's cost, GIL
  contention with the shipper included;
- ``log_kafka_down``: the same with Kafka unreachable (the spool grows, shipping fails);
- ``ship``: lists and impressions per second from the first ``log`` until Kafka has
  acknowledged the last list.

Usage::

    python bench/served_log.py                 # a table
    python bench/served_log.py --lists 5000 --items 100 --json
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from bench.machine import machine
from monitoring.metrics import Metrics
from serving.loop_config import ServedLogConfig
from serving.served_log import ServedList, ServedLog
from streams.config import BrokerConfig, EventConfig, KafkaConfig
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import ensure_topics


def lists(n: int, items: int, tag: str) -> list[ServedList]:
    return [
        ServedList(
            request_id=f"{tag}-{i}",
            user_id=str(i % 1000),
            condition="home",
            items=[str((i * 7 + p) % 5000) for p in range(items)],
            categories=[f"c{p % 16}" for p in range(items)],
            ranker_version="r12",
            backbone_version="v3",
            ts_ms=time.time_ns() // 1_000_000,
        )
        for i in range(n)
    ]


def _pcts(seconds: list[float]) -> dict[str, float]:
    us = np.asarray(seconds) * 1e6
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "max_us": float(us.max()),
    }


def bench_baseline(batch: list[ServedList], root: Path) -> dict[str, float]:
    encode = msgspec.json.Encoder().encode
    fd = os.open(root / "baseline.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    lat = []
    try:
        for lst in batch:
            t0 = time.perf_counter()
            os.write(fd, encode(lst) + b"\n")
            lat.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return _pcts(lat)


def bench_log(
    batch: list[ServedList], root: Path, kafka: KafkaConfig, pause_s: float, wait_s: float
) -> dict[str, float]:
    metrics = Metrics(CollectorRegistry())
    cfg = ServedLogConfig(drain_s=0.0, retry_s=0.2)
    lat = []
    log = ServedLog(cfg, root, kafka, kafka.bootstrap_servers, EventConfig(), metrics=metrics)
    try:
        t_start = time.perf_counter()
        for lst in batch:
            t0 = time.perf_counter()
            log.log(lst)
            lat.append(time.perf_counter() - t0)
            if pause_s:
                time.sleep(pause_s)
        shipped = log.wait_shipped(wait_s)
        ship_s = time.perf_counter() - t_start
    finally:
        log.close()
    out = _pcts(lat)
    if shipped:
        out["ship_s"] = ship_s
        out["lists_per_s"] = len(batch) / ship_s
        out["events_per_s"] = (
            metrics.registry.get_sample_value("lumstream_served_log_events_shipped_total") or 0.0
        ) / ship_s
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lists", type=int, default=5000, help="served lists per measurement")
    parser.add_argument("--items", type=int, default=100, help="items per list")
    parser.add_argument(
        "--pause-ms", type=float, default=0.0, help="pause between lists (0: back to back)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    pause = args.pause_ms / 1000
    result: dict[str, Any] = {
        "config": {"lists": args.lists, "items": args.items, "pause_ms": args.pause_ms},
        "machine": machine(),
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(BrokerConfig(), metrics=Metrics(CollectorRegistry())) as broker,
    ):
        root = Path(tmp)
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap)
        ensure_topics(kafka, broker.bootstrap)
        result["baseline_write"] = bench_baseline(lists(args.lists, args.items, "b"), root)
        up = lists(args.lists, args.items, "up")
        result["log_kafka_up"] = bench_log(up, root / "up", kafka, pause, 120.0)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        down = KafkaConfig(bootstrap_servers=dead, request_timeout_ms=500)
        down_lists = lists(args.lists, args.items, "down")
        result["log_kafka_down"] = bench_log(down_lists, root / "down", down, pause, 0.0)
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        _print_table(result)
    return 0 if "lists_per_s" in result["log_kafka_up"] else 1


def _print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"machine: {m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}, "
        f"load {m['load_average_1m']}"
    )
    print("config: " + ", ".join(f"{k}={v}" for k, v in r["config"].items()))
    print(f"{'case':<16} {'p50 us':>8} {'p99 us':>8} {'max us':>9} {'lists/s':>9} {'events/s':>10}")
    for case in ("baseline_write", "log_kafka_up", "log_kafka_down"):
        x = r[case]
        lists_s = f"{x['lists_per_s']:,.0f}" if "lists_per_s" in x else "-"
        events_s = f"{x['events_per_s']:,.0f}" if "events_per_s" in x else "-"
        print(
            f"{case:<16} {x['p50_us']:>8.1f} {x['p99_us']:>8.1f} {x['max_us']:>9.1f} "
            f"{lists_s:>9} {events_s:>10}"
        )


if __name__ == "__main__":
    sys.exit(main())
