"""Produce rate of the synthetic generator into a fresh embedded broker, plus baselines.

Measures, in one run on this machine:

- ``generator``: the generator alone, pre-encoded (key, value) records, no Kafka;
- ``generator_events``: the generator building :class:`streams.contracts.events.Event` objects;
- ``kafka_only``: producing already generated records (the producer's own bound);
- ``end_to_end``: generator -> producer -> embedded tansu broker, timed until flushed
  (``events_per_s``, the headline figure);
- ``serialization``: the wire-format comparison of bench/serialization.py.

Usage::

    python bench/produce.py                 # a table
    python bench/produce.py --events 500000 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serialization import format_table, run_comparison

from bench.machine import machine
from lumstream.config import Config, load
from monitoring.metrics import Metrics
from streams.generator import ClickStream
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.producer import make_producer
from streams.kafka.topics import ensure_topics
from streams.sinks.events import KafkaEventSink


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def bench_generator(cfg: Config, n: int) -> dict[str, float]:
    """Generator alone: pre-encoded records and Event objects."""
    gen = dataclasses.replace(cfg.generator, events=n)
    t0 = time.perf_counter()
    stream = ClickStream(gen)
    build_s = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), time.process_time()
    produced = sum(len(batch) for batch in stream.pair_batches())
    pairs_s, pairs_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    stream = ClickStream(gen, world=stream.world)
    t0 = time.perf_counter()
    built = sum(len(batch) for batch in stream.event_batches())
    events_s = time.perf_counter() - t0
    return {
        "world_build_s": build_s,
        "generator_events_per_s": _rate(produced, pairs_s),
        # per CPU second of this process: the figure to trust on a shared, loaded machine
        "generator_events_per_cpu_s": _rate(produced, pairs_cpu_s),
        "generator_objects_per_s": _rate(built, events_s),
        "ctr": stream.stats.ctr,
    }


def bench_kafka(cfg: Config, n: int) -> dict[str, float]:
    """Generator -> embedded broker end to end, and producing pre-generated records."""
    metrics = Metrics(CollectorRegistry())
    gen = dataclasses.replace(cfg.generator, events=n)
    world = ClickStream(gen).world
    with EmbeddedBroker(cfg.broker, metrics=metrics) as broker:
        bootstrap = broker.bootstrap
        ensure_topics(cfg.kafka, bootstrap)
        topic = cfg.kafka.topic_events
        with make_producer(cfg.kafka, bootstrap, metrics=metrics) as producer:
            sink = KafkaEventSink(producer, topic, source="bench")
            t0 = time.perf_counter()
            for batch in ClickStream(gen, world=world).pair_batches():
                sink.write_many(batch)
            sink.flush()
            end_to_end_s = time.perf_counter() - t0
            batches = list(
                ClickStream(dataclasses.replace(gen, seed=gen.seed + 1), world=world).pair_batches()
            )
            t0 = time.perf_counter()
            for batch in batches:
                sink.write_many(batch)
            sink.flush()
            kafka_only_s = time.perf_counter() - t0
    # acknowledged by the broker (acks=all), counted by the producer on delivery. tansu
    # 0.6.0's ListOffsets(latest) lags behind acknowledged records, so end offsets are no check.
    labels = {"topic": topic, "source": "bench"}
    acked = metrics.registry.get_sample_value("lumstream_events_produced_total", labels) or 0
    return {
        "events_per_s": _rate(n, end_to_end_s),
        "end_to_end_s": end_to_end_s,
        "kafka_only_events_per_s": _rate(n, kafka_only_s),
        "records_acked": int(acked),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per measurement")
    parser.add_argument(
        "--serialization-events",
        type=int,
        default=50_000,
        help="events for the serialisation comparison",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    cfg = load()
    result: dict[str, Any] = {
        "events": args.events,
        "config": {
            k: getattr(cfg.generator, k)
            for k in (
                "seed",
                "users",
                "items",
                "categories",
                "slate_size",
                "base_ctr",
                "malformed_fraction",
            )
        }
        | {"partitions": cfg.kafka.partitions},
        "machine": machine(),
    }
    result |= bench_generator(cfg, args.events)
    result |= bench_kafka(cfg, args.events)
    result["serialization"] = run_comparison(args.serialization_events)
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        _print_table(result)
    return 0 if result["records_acked"] == 2 * args.events else 1


def _print_table(r: dict[str, Any]) -> None:
    rows = [
        (
            "machine",
            f"{r['machine']['platform']}, {r['machine']['cpu_count']} CPUs, "
            f"Python {r['machine']['python']}, load {r['machine']['load_average_1m']}",
        ),
        ("config", ", ".join(f"{k}={v}" for k, v in r["config"].items())),
        ("events per measurement", f"{r['events']:,}"),
        ("world build", f"{r['world_build_s']:.2f} s"),
        ("generator, encoded records", f"{r['generator_events_per_s']:>12,.0f} events/s"),
        ("  per CPU second", f"{r['generator_events_per_cpu_s']:>12,.0f} events/s"),
        ("generator, Event objects", f"{r['generator_objects_per_s']:>12,.0f} events/s"),
        ("producer only (pre-generated)", f"{r['kafka_only_events_per_s']:>12,.0f} events/s"),
        ("generator -> broker, flushed", f"{r['events_per_s']:>12,.0f} events/s"),
        ("records acknowledged", f"{r['records_acked']:,} (expected {2 * r['events']:,})"),
        ("CTR", f"{r['ctr']:.2%}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print()
    print(format_table(r["serialization"]))


if __name__ == "__main__":
    sys.exit(main())
