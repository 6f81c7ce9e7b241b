"""`lumstream replay`: archived events -> lum.events (produce) or straight into a store (backfill).

    lumstream replay events.jsonl.gz --rate 5000                  # re-produce, rate-limited
    lumstream replay logs/ --mode backfill --samples-out s.lsb --deadletters-out d.jsonl
    lumstream replay kafka:lum.events --from-ts 2026-01-01T00:00Z --to-ts 2026-01-02T00:00Z \\
        --mode backfill --store data/backfill/jan1

Both modes resume after an interruption: run the same command again. Ctrl-C (or SIGTERM)
stops after the current batch, leaving a clean resume point (exit 130). See docs/replay.md.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lumstream.config import Config
    from monitoring.metrics import Metrics
    from streams.config import ReplayConfig
    from streams.replay.produce import ReplayStats
    from streams.replay.sources import EventSource

HELP = "replay event logs or a Kafka time range into lum.events, or backfill a store from them"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="an event log (.jsonl, .ndjson, .gz, .parquet), a directory or glob of them "
        "(replayed in name order), or kafka:TOPIC",
    )
    p.add_argument(
        "--mode",
        choices=("produce", "backfill"),
        default="produce",
        help="produce: re-produce into Kafka (default); backfill: apply to a store directly",
    )
    p.add_argument(
        "--topic", metavar="T", help="produce: target topic (default kafka.topic_events)"
    )
    p.add_argument(
        "--rate", type=float, metavar="R", help="produce: events/s (default replay.rate)"
    )
    p.add_argument(
        "--from-ts", metavar="T", help="kafka:TOPIC only: first event time, ms or ISO 8601 (UTC)"
    )
    p.add_argument("--to-ts", metavar="T", help="kafka:TOPIC only: end time (exclusive)")
    p.add_argument(
        "--store",
        type=Path,
        metavar="DIR",
        help="backfill: store directory (default replay.store or <data_dir>/backfill/store)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="backfill: partitions to spread events over (default kafka.partitions)",
    )
    p.add_argument(
        "--samples-out",
        type=Path,
        metavar="FILE",
        help="backfill: write samples to this sample file instead of kafka.topic_samples",
    )
    p.add_argument(
        "--deadletters-out",
        type=Path,
        metavar="FILE",
        help="backfill: write dead letters as JSON lines instead of kafka.topic_deadletter",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="produce: checkpoint file (default <data_dir>/replay/produce-<hash>.json)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="produce: forget the checkpoint and replay everything again",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


class _Bar:
    """A tqdm bar with ETA, made on the first report (so a resumed run starts part-way)."""

    def __init__(self, source: EventSource, enabled: bool, desc: str) -> None:
        self.source, self.enabled, self.desc = source, enabled, desc
        self.bar: Any = None

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.source.total(),
                initial=done,
                desc=self.desc,
                unit=f" {self.source.unit}",
                unit_scale=True,
                file=sys.stderr,
                mininterval=0.5,
                dynamic_ncols=True,
            )
        elif done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C / SIGTERM set the event (stop at the next batch); a second Ctrl-C aborts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nreplay: stopping after the current batch...", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _replay_config(cfg: Config, args: argparse.Namespace) -> ReplayConfig:
    from core.settings import build
    from streams.config import ReplayConfig

    base = cfg.replay
    if args.rate is None:
        return base
    return build(ReplayConfig, {"rate": args.rate}, source="--rate", base=base)


def _default_checkpoint(cfg: Config, source: EventSource, topic: str) -> Path:
    digest = hashlib.sha256(f"{source.key()}>{topic}".encode()).hexdigest()[:12]
    return cfg.paths.data_dir / "replay" / f"produce-{digest}.json"


def _produce(
    cfg: Config,
    rcfg: ReplayConfig,
    args: argparse.Namespace,
    source: EventSource,
    bootstrap: str,
    metrics: Metrics,
    stop: threading.Event,
    bar: _Bar,
) -> tuple[ReplayStats, str]:
    from streams.replay.produce import replay_produce

    topic = args.topic or cfg.kafka.topic_events
    checkpoint = args.checkpoint or _default_checkpoint(cfg, source, topic)
    if args.restart:
        checkpoint.unlink(missing_ok=True)
    print(f"replay: {source.name} -> topic {topic}, checkpoint {checkpoint}", file=sys.stderr)
    stats = replay_produce(
        source,
        cfg.kafka,
        bootstrap,
        checkpoint,
        topic=topic,
        cfg=rcfg,
        metrics=metrics,
        stop=stop,
        progress=bar,
    )
    return stats, f"topic {topic} (checkpoint {checkpoint})"


def _backfill(
    cfg: Config,
    rcfg: ReplayConfig,
    args: argparse.Namespace,
    source: EventSource,
    bootstrap: str | None,
    metrics: Metrics,
    stop: threading.Event,
    bar: _Bar,
) -> tuple[ReplayStats, str]:
    from contextlib import ExitStack

    from streams.replay.backfill import Backfill
    from streams.sinks.deadletters import DeadLetterFile, DeadLetterSink, KafkaDeadLetterSink
    from streams.sinks.samples import KafkaSampleSink, SampleFileWriter, SampleSink

    root = args.store or (
        Path(rcfg.store) if rcfg.store else cfg.paths.data_dir / "backfill" / "store"
    )
    partitions = args.partitions or cfg.kafka.partitions
    bf = Backfill(
        source, root, partitions, cfg.store, cfg.worker, cfg.events, cfg=rcfg, metrics=metrics
    )
    sync, fresh = cfg.store.sync_writes, not bf.resuming
    with ExitStack() as stack:
        producer = None
        if bootstrap is not None and (args.samples_out is None or args.deadletters_out is None):
            from streams.kafka.producer import Producer

            producer = Producer(cfg.kafka, bootstrap, metrics=metrics)
            stack.callback(producer.close)
        samples: SampleSink
        dead: DeadLetterSink
        if args.samples_out is not None:
            samples = SampleFileWriter(args.samples_out, sync=sync, must_be_new=fresh)
        else:
            assert producer is not None
            samples = KafkaSampleSink(producer, cfg.kafka.topic_samples)
        stack.callback(samples.close)
        if args.deadletters_out is not None:
            dead = DeadLetterFile(args.deadletters_out, metrics, sync=sync, must_be_new=fresh)
        else:
            from streams.sinks.deadletters import DeadLetterWriter

            assert producer is not None
            dead = KafkaDeadLetterSink(DeadLetterWriter.from_config(producer, cfg.kafka, metrics))
        stack.callback(dead.close)
        print(
            f"replay: backfill of {source.name} into {root} ({partitions} partitions"
            f"{', resuming' if bf.resuming else ''})",
            file=sys.stderr,
        )
        stats = bf.run(samples, dead, stop=stop, progress=bar)
    outs = [
        f"store {root}",
        f"samples {args.samples_out or 'topic ' + cfg.kafka.topic_samples}",
        f"dead letters {args.deadletters_out or 'topic ' + cfg.kafka.topic_deadletter}",
    ]
    return stats, ", ".join(outs)


def _check(cfg: Config, args: argparse.Namespace) -> tuple[int | None, int | None]:
    from core.times import parse_time
    from streams.replay.sources import ReplayError

    if args.mode == "backfill" and (args.topic or args.checkpoint or args.restart):
        raise ReplayError("--topic, --checkpoint and --restart are for --mode produce")
    if args.mode == "produce" and (
        args.store or args.partitions or args.samples_out or args.deadletters_out
    ):
        raise ReplayError(
            "--store, --partitions, --samples-out and --deadletters-out are for --mode backfill"
        )
    if args.partitions is not None and args.partitions < 1:
        raise ReplayError(f"--partitions must be >= 1, got {args.partitions}")
    from_ts = parse_time(args.from_ts) if args.from_ts else None
    to_ts = parse_time(args.to_ts) if args.to_ts else None
    return from_ts, to_ts


def _needs_kafka(args: argparse.Namespace) -> bool:
    return (
        args.mode == "produce"
        or args.source.startswith("kafka:")
        or args.samples_out is None
        or args.deadletters_out is None
    )


def _execute(
    cfg: Config, args: argparse.Namespace, metrics: Metrics, stop: threading.Event
) -> tuple[ReplayStats, str]:
    from contextlib import AbstractContextManager, nullcontext

    from lumstream.cluster import cluster
    from streams.kafka.topics import TopicSpec, ensure_topics, topic_specs
    from streams.replay.sources import ReplayError, open_source

    from_ts, to_ts = _check(cfg, args)
    rcfg = _replay_config(cfg, args)
    source: EventSource | None = None
    if not args.source.startswith("kafka:"):  # check files before any broker starts
        source = open_source(args.source, from_ts=from_ts, to_ts=to_ts)
    needs_kafka = _needs_kafka(args)
    if needs_kafka and not cfg.kafka.bootstrap_servers and args.mode == "backfill":
        from streams.kafka.broker import running_broker

        if running_broker(cfg.layout.broker_run_file) is None:
            raise ReplayError(
                "no Kafka cluster: set kafka.bootstrap_servers or start `lumstream broker`, "
                "or backfill to files with --samples-out FILE --deadletters-out FILE"
            )
    kafka: AbstractContextManager[str | None] = (
        cluster(cfg, metrics, note_if_embedded=True) if needs_kafka else nullcontext(None)
    )
    with kafka as bootstrap:
        if bootstrap is not None:
            specs = topic_specs(cfg.kafka)
            if args.topic and args.topic not in {s.name for s in specs}:
                specs.append(
                    TopicSpec(args.topic, cfg.kafka.partitions, cfg.kafka.replication_factor)
                )
            ensure_topics(cfg.kafka, bootstrap, specs)
        if source is None:
            source = open_source(
                args.source, kafka=cfg.kafka, bootstrap=bootstrap, from_ts=from_ts, to_ts=to_ts
            )
        bar = _Bar(source, not args.quiet and sys.stderr.isatty(), args.mode)
        try:
            if args.mode == "produce":
                assert bootstrap is not None
                return _produce(cfg, rcfg, args, source, bootstrap, metrics, stop, bar)
            return _backfill(cfg, rcfg, args, source, bootstrap, metrics, stop, bar)
        finally:
            bar.close()


def run(cfg: Config, args: argparse.Namespace) -> int:
    import orjson

    from monitoring.metrics import default_metrics
    from monitoring.server import serve_metrics
    from streams.kafka.producer import ProduceError
    from streams.replay.sources import ReplayError

    metrics = default_metrics()
    server = serve_metrics(cfg.metrics, metrics.registry)
    try:
        with _stop_on_signals() as stop:
            stats, where = _execute(cfg, args, metrics, stop)
    except (ReplayError, FileExistsError, OSError) as exc:
        print(f"lumstream replay: {exc}", file=sys.stderr)
        return 2
    except ProduceError as exc:
        print(f"lumstream replay: {exc}; run the same command again to resume", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.close()
    if args.json:
        print(orjson.dumps({**stats.to_dict(), "output": where}).decode())
    else:
        print(f"{stats.summary()}\n  output: {where}")
    return 0 if stats.complete else 130
