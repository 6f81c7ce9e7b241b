"""`lumstream generate`: the synthetic click stream to Kafka (default) or an event-log file.

Flags override the ``[generator]`` config section; docs/generator.md describes the ground
truth. Serves /metrics while it runs and counts ``lumstream_events_produced``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from core.settings import ConfigError, build

if TYPE_CHECKING:
    from lumstream.config import Config
    from monitoring.metrics import Metrics
    from streams.generator import ClickStream

HELP = (
    "stream synthetic click events (condition-dependent interests, delayed clicks, drift) "
    "to Kafka or a file"
)

# flag dest -> GeneratorConfig field
_OVERRIDES = {
    "events": "events",
    "duration": "duration_s",
    "rate": "rate",
    "seed": "seed",
    "drift_at": "drift_at",
    "malformed_fraction": "malformed_fraction",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write an event log (.jsonl, .jsonl.gz, "
        ".ndjson, .parquet) instead of producing to Kafka",
    )
    p.add_argument("--topic", help="Kafka topic (default: kafka.topic_events)")
    p.add_argument(
        "--events",
        type=int,
        metavar="N",
        help="events to generate; 0 = until --duration or Ctrl-C (default: generator.events)",
    )
    p.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop after S seconds of wall-clock time (default: generator.duration_s)",
    )
    p.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="target events/s, 0 = as fast as possible (default: generator.rate)",
    )
    p.add_argument("--seed", type=int, help="random seed (default: generator.seed)")
    p.add_argument(
        "--drift-at",
        type=float,
        metavar="F",
        help="interests shift after this fraction of the run; <0 = never",
    )
    p.add_argument(
        "--malformed-fraction",
        type=float,
        metavar="F",
        help="fraction of deliberately malformed records (Kafka output only)",
    )
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")


class _Pump:
    """Moves batches from the stream to a writer: paced, time-bounded, with progress.

    Args:
        stream: the click stream (its stats drive the progress line and the summary).
        duration_s / rate: wall-clock bound and target events/s (0 = none).
        progress: show a tqdm bar on stderr.
    """

    def __init__(self, stream: ClickStream, duration_s: float, rate: float, progress: bool):
        self.stream, self.duration_s, self.rate, self.progress = stream, duration_s, rate, progress
        self.target = ""
        self.started = time.perf_counter()

    def run(self, batches: Iterator[list[Any]], write: Callable[[list[Any]], Any]) -> bool:
        """Write every batch; True when interrupted by Ctrl-C (the writer keeps what it has)."""
        from streams.generator.pacing import TokenBucket

        bucket = TokenBucket(self.rate) if self.rate > 0 else None
        stats = self.stream.stats
        bar = None
        if self.progress:
            from tqdm import tqdm

            total = self.stream.cfg.events or None
            bar = tqdm(
                total=total,
                unit="ev",
                unit_scale=True,
                dynamic_ncols=True,
                desc="generate",
                mininterval=0.5,
                file=sys.stderr,
            )
        self.started = time.perf_counter()
        deadline = time.monotonic() + self.duration_s if self.duration_s > 0 else None
        try:
            # the deadline is checked before a batch is taken: the stream counts what it yields
            while deadline is None or time.monotonic() < deadline:
                batch = next(batches, None)
                if batch is None:
                    break
                if bucket is not None:
                    bucket.acquire(len(batch))
                write(batch)
                if bar is not None:
                    bar.update(len(batch))
                    bar.set_postfix(clicks=stats.clicks, ctr=f"{stats.ctr:.2%}", refresh=False)
        except KeyboardInterrupt:
            return True
        finally:
            if bar is not None:
                bar.close()
        return False


def run(cfg: Config, args: argparse.Namespace) -> int:
    from monitoring.metrics import default_metrics
    from monitoring.server import serve_metrics
    from streams.generator import ClickStream

    overrides = {
        field: getattr(args, dest)
        for dest, field in _OVERRIDES.items()
        if getattr(args, dest) is not None
    }
    gen = build(type(cfg.generator), overrides, source="command line", base=cfg.generator)
    if args.out and gen.malformed_fraction > 0:
        raise ConfigError(
            "generator.malformed_fraction: malformed records go to Kafka only "
            "(event-log files hold valid events); drop --out or set it to 0"
        )
    metrics = default_metrics()
    server = serve_metrics(cfg.metrics, metrics.registry)
    try:
        pump = _Pump(ClickStream(gen), gen.duration_s, gen.rate, not args.no_progress)
        if args.out:
            interrupted = _to_file(pump, args.out, metrics)
        else:
            interrupted = _to_kafka(pump, cfg, args.topic, metrics)
    finally:
        if server is not None:
            server.close()
    _summary(pump, time.perf_counter() - pump.started, interrupted)
    return 130 if interrupted else 0


def _to_file(pump: _Pump, out: str, metrics: Metrics) -> bool:
    """Write the stream to an event log (atomically: the file appears when complete, or
    with what was written before Ctrl-C); True when interrupted."""
    from streams.generator.pacing import batch_size_for
    from streams.sinks.events import open_sink

    try:
        sink = open_sink(out, metrics=metrics, source="generator")
    except ValueError as exc:
        raise ConfigError(f"--out: {exc}") from None
    pump.target = out

    def write(batch: list[Any]) -> None:
        for event in batch:
            sink.write(event)

    try:
        interrupted = pump.run(
            pump.stream.event_batches(batch_size=batch_size_for(pump.rate)), write
        )
    except BaseException:
        sink.abort()
        raise
    sink.close()
    return interrupted


def _to_kafka(pump: _Pump, cfg: Config, topic: str | None, metrics: Metrics) -> bool:
    """Produce the stream to Kafka (topics created first); returns once every queued record
    is acknowledged; True when interrupted."""
    from lumstream.cluster import cluster
    from streams.generator.pacing import batch_size_for
    from streams.kafka.producer import make_producer
    from streams.kafka.topics import TopicSpec, ensure_topics, topic_specs
    from streams.sinks.events import KafkaEventSink

    name = topic or cfg.kafka.topic_events
    specs = topic_specs(cfg.kafka)
    if name not in {spec.name for spec in specs}:
        specs.append(TopicSpec(name, cfg.kafka.partitions, cfg.kafka.replication_factor))
    with cluster(cfg, metrics, note_if_embedded=True) as bootstrap:
        ensure_topics(cfg.kafka, bootstrap, specs)
        pump.target = f"{name} @ {bootstrap}"
        producer = make_producer(cfg.kafka, bootstrap, metrics=metrics)
        sink = KafkaEventSink(producer, name, source="generator", owns_producer=True)
        try:
            batches = pump.stream.pair_batches(batch_size=batch_size_for(pump.rate))
            return pump.run(batches, sink.write_many)
        finally:
            sink.close()  # flushes: what was queued before Ctrl-C is still delivered


def _summary(pump: _Pump, elapsed: float, interrupted: bool) -> None:
    s = pump.stream.stats
    rate = s.events / elapsed if elapsed > 0 else 0.0
    drift = "none" if s.drift_ts_ms is None else f"at event time {s.drift_ts_ms} ms"
    lines = [
        f"{'interrupted' if interrupted else 'done'}: {s.events:,} events -> {pump.target}",
        f"  impressions  {s.impressions:>12,}",
        f"  clicks       {s.clicks:>12,}   CTR {s.ctr:.2%}",
        f"  purchases    {s.purchases:>12,}",
        f"  malformed    {s.malformed:>12,}",
        f"  users        {s.users:>12,}",
        f"  drift        {drift}",
        f"  elapsed      {elapsed:>12.2f} s   {rate:,.0f} events/s",
    ]
    print("\n".join(lines))
