"""The demo pipeline (``lumstream demo``): everything on embedded defaults, live, for a
bounded time.

Starts the embedded broker, creates the topics, streams synthetic click events (with a
small share of malformed ones) into lum.events at a steady rate, and runs beside them:

- the stream worker: sequences to a fresh RocksDB store under ``<data_dir>/demo``,
  labelled samples to lum.samples, rejected events to lum.deadletter;
- two live rankers on lum.samples, the same streaming trainer without and with LUM
  features (:mod:`lumstream.pipeline.demo_rankers`);
- half-way through the traffic, one backbone refresh on the store as it is: train, publish
  v1, write the condition-query vectors, which the LUM ranker picks up for the samples
  that follow.

A live line shows the counts; a summary of each stage follows. Nothing outside
``<data_dir>/demo`` is touched.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config
    from lumstream.pipeline.demo_rankers import LiveRankers
    from monitoring.metrics import Metrics
    from monitoring.server import MetricsServer
    from streams.generator import ClickStream
    from streams.worker.applier import WorkerStats


@dataclass(frozen=True)
class DemoOptions:
    """What ``lumstream demo`` runs (its flags; generator.* settings apply to the rest).

    Args:
        duration_s: seconds of traffic to generate.
        rate: events per second the generator sends.
        skip_backbone: the stream stage only (no backbone refresh, no rankers).
        backbone_at: start the backbone refresh after this share of the traffic.
        malformed_fraction: share of deliberately broken events.
        users / items / categories / ctr: a small, dense world, so that users have enough
            clicks within seconds for the backbone to learn from.
    """

    duration_s: float = 20.0
    rate: float = 8_000.0
    skip_backbone: bool = False
    backbone_at: float = 0.5
    malformed_fraction: float = 0.002
    users: int = 500
    items: int = 1_000
    categories: int = 8
    ctr: float = 0.15


def run_demo(cfg: Config, opts: DemoOptions) -> bool:
    """Run the demo to its end, printing as it goes; True when every stage produced output."""
    from monitoring.metrics import default_metrics
    from monitoring.server import metrics_endpoint

    metrics = default_metrics()
    with metrics_endpoint(
        cfg.metrics, metrics.registry, role="demo", discovery_dir=cfg.layout.metrics_discovery
    ) as server:
        return _run(cfg, opts, metrics, server)


def _run(cfg: Config, opts: DemoOptions, metrics: Metrics, server: MetricsServer | None) -> bool:
    import torch

    from streams.generator import ClickStream, World
    from streams.generator.pacing import TokenBucket
    from streams.kafka.broker import EmbeddedBroker
    from streams.kafka.consumer import end_offsets
    from streams.kafka.producer import Producer
    from streams.kafka.topics import ensure_topics
    from streams.worker.confluent_engine import StreamWorker

    root = cfg.layout.demo
    shutil.rmtree(root, ignore_errors=True)  # the embedded broker starts empty: so does the store
    torch.set_num_threads(1)  # two rankers and a backbone share the machine's cores
    for noisy in ("torchrec", "torch.fx._symbolic_trace"):  # planner chatter, fx notes
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torchrec's deprecations
    gen_cfg = replace(
        cfg.generator,
        events=0,
        rate=opts.rate,
        malformed_fraction=opts.malformed_fraction,
        users=opts.users,
        items=opts.items,
        categories=opts.categories,
        base_ctr=opts.ctr,
    )
    # the LUM ranker is sized before any vector exists: pin the queried conditions
    conditions = tuple(World.condition_name(c) for c in range(gen_cfg.categories))
    cfg = replace(
        cfg,
        backbone=replace(
            cfg.backbone,
            condition_fields=("cond",),
            query_conditions=conditions,
            epochs=min(cfg.backbone.epochs, 3),
        ),
    )
    stream = ClickStream(gen_cfg)
    print(
        f"lumstream demo: {opts.duration_s:.0f} s of synthetic traffic at {opts.rate:,.0f} "
        f"events/s, {gen_cfg.users:,} users, {gen_cfg.items:,} items, "
        f"{gen_cfg.categories} categories",
        flush=True,
    )
    ok = False
    with EmbeddedBroker(cfg.broker, metrics, log_dir=root / "logs") as broker:
        print(f"  broker   {broker.bootstrap} (embedded tansu, in memory)")
        ensure_topics(cfg.kafka, broker.bootstrap)
        print(
            f"  topics   {cfg.kafka.topic_events}, {cfg.kafka.topic_samples}, "
            f"{cfg.kafka.topic_deadletter}, {cfg.kafka.topic_model_updates}"
        )
        if server is not None:
            print(f"  metrics  {server.url}")
        rankers = None if opts.skip_backbone else _rankers(cfg, root, broker.bootstrap, metrics)
        produced = [0]
        done = threading.Event()
        started = time.monotonic()

        def generate() -> None:
            bucket = TokenBucket(opts.rate)
            deadline = started + opts.duration_s
            with Producer(cfg.kafka, broker.bootstrap, metrics=metrics) as producer:
                for pairs in stream.pair_batches(batch_size=500):
                    bucket.acquire(len(pairs))
                    producer.send_many(cfg.kafka.topic_events, pairs, source="demo")
                    produced[0] += len(pairs)
                    if time.monotonic() >= deadline:
                        break
                producer.flush()
            done.set()

        tty = sys.stdout.isatty()
        live = _LiveLine(tty, started)

        def show(stats: WorkerStats, final: bool = False) -> None:
            lag = produced[0] - stats.applied - stats.dead_letters
            ranker = f"  {rankers.progress()}" if rankers is not None else ""
            live.show(
                f"produced {produced[0]:>8,}  applied {stats.applied:>8,}  samples "
                f"{stats.samples:>7,}  dead letters {stats.dead_letters:>4,}  lag {lag:>6,}"
                + ranker,
                final,
            )

        backbone: list[str | None] = []

        def refresh() -> None:
            done.wait(opts.duration_s * opts.backbone_at)
            live.newline()
            backbone.append(_backbone(cfg, root, metrics, broker.bootstrap))

        def consume() -> WorkerStats:
            stop = threading.Event()
            worker = StreamWorker(
                cfg.kafka,
                cfg.store,
                cfg.worker,
                cfg.events,
                broker.bootstrap,
                root / "store",
                metrics,
            )

            def stop_when_drained() -> None:
                while not stop.wait(0.25):
                    show(worker.stats)
                    caught_up = worker.stats.applied + worker.stats.dead_letters >= produced[0]
                    if done.is_set() and caught_up:
                        stop.set()

            watcher = threading.Thread(target=stop_when_drained, name="demo-watch", daemon=True)
            watcher.start()
            stats = worker.run(stop)
            watcher.join()
            return stats

        threads = [threading.Thread(target=generate, name="demo-generator", daemon=True)]
        if rankers is not None:
            rankers.start()
            threads.append(threading.Thread(target=refresh, name="demo-backbone", daemon=True))
        for t in threads:
            t.start()
        try:
            stats = consume()
            for t in threads:
                t.join()
            if rankers is not None:
                ends = end_offsets(cfg.kafka, broker.bootstrap, cfg.kafka.topic_samples)
                rankers.finish(ends, waiting=lambda: show(stats))
        except BaseException:
            if rankers is not None:
                rankers.abort()
            raise
        show(stats, final=True)
        live.newline()
        _stream_summary(cfg, stream, stats, root, time.monotonic() - started)
        ok = stats.applied > 0 and stats.samples > 0
        if rankers is not None:
            ok = rankers.report() and ok and bool(backbone) and backbone[0] is not None
    if not ok:
        print("lumstream demo: a stage of the pipeline produced nothing", file=sys.stderr)
    return ok


def _rankers(cfg: Config, root: Path, bootstrap: str, metrics: Metrics) -> LiveRankers:
    from lumstream.pipeline.demo_rankers import LiveRankers

    return LiveRankers(cfg, root, bootstrap, metrics)


class _LiveLine:
    """One status line: rewritten in place on a terminal, every 2 s otherwise."""

    def __init__(self, tty: bool, started: float) -> None:
        self.tty, self.started, self.shown, self.open = tty, started, 0.0, False
        self.lock = threading.Lock()

    def show(self, text: str, final: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        with self.lock:
            if not (self.tty or final or elapsed - self.shown >= 2.0):
                return
            self.shown = elapsed
            end = "" if self.tty else "\n"
            print(f"{chr(13) if self.tty else ''}  [{elapsed:5.1f}s] {text}", end=end, flush=True)
            self.open = self.tty

    def newline(self) -> None:
        """End an in-place line before other output."""
        with self.lock:
            if self.open:
                print(flush=True)
                self.open = False


def _stream_summary(
    cfg: Config, stream: ClickStream, stats: WorkerStats, root: Path, elapsed: float
) -> None:
    n_samples, positives, hist = stats.samples, stats.positives, stats.history_events
    gs = stream.stats
    print("stream")
    print(
        f"  generated   {gs.events:,} events ({gs.impressions:,} impressions, "
        f"{gs.clicks:,} clicks, {gs.purchases:,} purchases, {gs.malformed:,} malformed), "
        f"{gs.users:,} users, CTR {gs.ctr:.2%}"
    )
    print(
        f"  worker      {stats.applied:,} events applied in {stats.batches:,} batches, "
        f"{stats.dead_letters:,} dead letters, caught up {elapsed:.1f} s after start"
    )
    print(
        f"  samples     {n_samples:,} delivered to {cfg.kafka.topic_samples} "
        f"({positives:,} positive = {positives / max(n_samples, 1):.2%}), "
        f"{hist / max(n_samples, 1):.1f} history events per sample; impressions still "
        f"inside their {cfg.worker.label_window_s:.0f} s label window stay open"
    )
    print(
        f"  store       {root / 'store'}  (inspect: lumstream store stats --store {root / 'store'})"
    )


def _backbone(cfg: Config, root: Path, metrics: Metrics, bootstrap: str) -> str | None:
    """One backbone refresh over the demo store: train, publish v1, write the vectors."""
    from trainer.backbone.refresh import RefreshPaths, refresh_once
    from trainer.backbone.versions import list_versions

    print(
        f"backbone (LUM, {cfg.backbone.objective}): training on the store, publishing a "
        "version, computing condition-query vectors ...",
        flush=True,
    )
    paths = RefreshPaths(root / "store", root / "backbone", root / "vectors")
    result = refresh_once(cfg.backbone, cfg.refresh, cfg.store, cfg.events, paths, metrics)
    if result.version is None:
        print(f"  no version: {result.reason}")
        return None
    scores = "  ".join(f"{k} {v:.4f}" for k, v in sorted((result.metrics or {}).items()))
    print(
        f"  published   {result.version.name} in {result.seconds:.1f} s "
        f"({result.version.manifest['param_count']:,} parameters, "
        f"{result.users_trained:,} users): {scores}"
    )
    print(
        f"  vectors     {result.vectors_written:,} users x {result.conditions} conditions to "
        f"{paths.vectors}"
    )
    print(
        f"  versions    {', '.join(v.name for v in list_versions(paths.versions))} under "
        f"{paths.versions}"
    )
    return result.version.name if result.vectors_written > 0 else None
