"""``lumstream demo``: the whole pipeline on embedded defaults, live, for a bounded time.

Starts the embedded broker, creates the topics, streams synthetic click events (with a
small share of malformed ones) into lum.events at a steady rate, and runs the stream
worker beside it: sequences go to a fresh RocksDB store under ``<data_dir>/demo``,
labelled samples to lum.samples, rejected events to lum.deadletter. A live line shows
the counts; a summary follows. Nothing outside ``<data_dir>/demo`` is touched.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config
    from monitoring.metrics import Metrics
    from streams.applier import WorkerStats
    from streams.generator import ClickStream

HELP = "run the pipeline on embedded defaults: broker, generator, stream worker, samples"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration",
        type=float,
        default=20.0,
        metavar="S",
        help="seconds of traffic to generate (default 20)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=8_000.0,
        metavar="R",
        help="events per second the generator sends (default 8000)",
    )
    p.add_argument(
        "--skip-backbone",
        action="store_true",
        help="stop after the stream stage (no backbone refresh)",
    )
    p.add_argument(
        "--malformed-fraction",
        type=float,
        default=0.002,
        metavar="F",
        help="share of deliberately broken events (default 0.002)",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    from monitoring.metrics import default_metrics
    from monitoring.server import serve_metrics
    from streams.broker import EmbeddedBroker
    from streams.generator import ClickStream
    from streams.generator.pacing import TokenBucket
    from streams.producer import Producer
    from streams.topics import ensure_topics
    from streams.worker import StreamWorker

    root = cfg.paths.data_dir / "demo"
    shutil.rmtree(root, ignore_errors=True)  # the embedded broker starts empty: so does the store
    metrics = default_metrics()
    server = serve_metrics(cfg.metrics, metrics.registry)
    gen_cfg = replace(
        cfg.generator, events=0, rate=args.rate, malformed_fraction=args.malformed_fraction
    )
    stream = ClickStream(gen_cfg)
    print(
        f"lumstream demo: {args.duration:.0f} s of synthetic traffic at {args.rate:,.0f} "
        f"events/s, {gen_cfg.users:,} users, {gen_cfg.items:,} items, "
        f"{gen_cfg.categories} categories",
        flush=True,
    )
    with EmbeddedBroker(cfg.broker, metrics, log_dir=root / "logs") as broker:
        print(f"  broker   {broker.bootstrap} (embedded tansu, in memory)")
        ensure_topics(cfg.kafka, broker.bootstrap)
        print(
            f"  topics   {cfg.kafka.topic_events}, {cfg.kafka.topic_samples}, "
            f"{cfg.kafka.topic_cq}, {cfg.kafka.topic_deadletter}, "
            f"{cfg.kafka.topic_model_updates}"
        )
        if server is not None:
            print(f"  metrics  {server.url}")
        produced = [0]
        done = threading.Event()

        def generate() -> None:
            bucket = TokenBucket(args.rate)
            deadline = time.monotonic() + args.duration
            with Producer(cfg.kafka, broker.bootstrap, metrics=metrics) as producer:
                for pairs in stream.pair_batches(batch_size=500):
                    bucket.acquire(len(pairs))
                    producer.send_many(cfg.kafka.topic_events, pairs, source="demo")
                    produced[0] += len(pairs)
                    if time.monotonic() >= deadline:
                        break
                producer.flush()
            done.set()

        started = time.monotonic()
        tty = sys.stdout.isatty()
        shown = [0.0]

        def show(stats: WorkerStats, final: bool = False) -> None:
            elapsed = time.monotonic() - started
            if not (tty or final or elapsed - shown[0] >= 2.0):
                return  # not a terminal: one line every 2 s
            shown[0] = elapsed
            lag = produced[0] - stats.applied - stats.dead_letters
            print(
                f"{chr(13) if tty else ''}  [{elapsed:5.1f}s] produced {produced[0]:>9,}  "
                f"applied {stats.applied:>9,}  samples {stats.samples:>9,}  "
                f"dead letters {stats.dead_letters:>5,}  lag {lag:>7,}",
                end="" if tty else "\n",
                flush=True,
            )

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

        thread = threading.Thread(target=generate, name="demo-generator", daemon=True)
        thread.start()
        stats = consume()
        thread.join()
        show(stats, final=True)
        if tty:
            print()
        _stream_summary(cfg, stream, stats, root, time.monotonic() - started)
        ok = stats.applied > 0 and stats.samples > 0
        if ok and not args.skip_backbone:
            version = _backbone(cfg, root, metrics, broker.bootstrap)
            ok = version is not None
            if ok and version is not None:
                ok = _ranker(cfg, root, metrics, broker.bootstrap, version)
    if server is not None:
        server.close()
    if not ok:
        print("lumstream demo: a stage of the pipeline produced nothing", file=sys.stderr)
    return 0 if ok else 1


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
        f"  store       {root / 'store'}  (inspect: lumstream --set paths.data_dir="
        f"{cfg.paths.data_dir} store --store {root / 'store'} stats)"
    )


def _backbone(cfg: Config, root: Path, metrics: Metrics, bootstrap: str) -> str | None:
    """One backbone refresh over the demo store: train, publish v1, write the vectors."""
    from streams.producer import Producer
    from trainer.backbone.refresh import RefreshPaths, refresh_once
    from trainer.backbone.versions import list_versions

    print(
        f"backbone (LUM, {cfg.backbone.objective}): training on the store, publishing a "
        "version, computing condition-query vectors ...",
        flush=True,
    )
    paths = RefreshPaths(root / "store", root / "backbone", root / "vectors")
    backbone = replace(cfg.backbone, epochs=min(cfg.backbone.epochs, 3))
    with Producer(cfg.kafka, bootstrap, metrics=metrics) as producer:
        result = refresh_once(
            backbone,
            cfg.refresh,
            cfg.store,
            cfg.events,
            paths,
            metrics,
            cq=lambda records: producer.send_many(cfg.kafka.topic_cq, records, source="demo"),
        )
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
        f"{paths.vectors} and {cfg.kafka.topic_cq}"
    )
    print(
        f"  versions    {', '.join(v.name for v in list_versions(paths.versions))} under "
        f"{paths.versions}"
    )
    return result.version.name if result.vectors_written > 0 else None


def _ranker(cfg: Config, root: Path, metrics: Metrics, bootstrap: str, version: str) -> bool:
    """The ranker learns lum.samples once without and once with the LUM features, scoring
    every batch before learning it (progressive validation)."""
    from prometheus_client import CollectorRegistry

    from monitoring.metrics import Metrics
    from streams.kafka import end_offsets, make_consumer
    from trainer.ranker.engine import RankerEngine
    from trainer.ranker.multi_epoch import collect, train_epochs
    from trainer.ranker.source import KafkaSource
    from trainer.ranker.vectors import LumVectors

    logging.getLogger("torchrec").setLevel(logging.ERROR)  # planner chatter on a 1-CPU plan
    warnings.filterwarnings("ignore", category=FutureWarning, module="torchrec")
    vectors = LumVectors.load(root / "backbone" / "vectors" / version)
    consumer = make_consumer(cfg.kafka, bootstrap)
    source = KafkaSource(
        consumer,
        cfg.kafka.topic_samples,
        stop_at=end_offsets(cfg.kafka, bootstrap, cfg.kafka.topic_samples),
    )
    try:
        samples = collect(source, None, metrics)
    finally:
        source.close()
    print(
        f"ranker (TorchRec, progressive validation): {len(samples):,} samples from "
        f"{cfg.kafka.topic_samples}, LUM vectors of {version} ({vectors.n_conditions} "
        f"conditions x {vectors.dim})",
        flush=True,
    )
    lum = cfg.ranker.lum_features if cfg.ranker.lum_features != "off" else "full"
    for name, mode in (("without LUM", "off"), (f"with LUM ({lum})", lum)):
        rcfg = replace(cfg.ranker, lum_features=mode)
        with_lum = mode != "off"
        engine = RankerEngine(
            rcfg,
            cfg.embeddings,
            vectors.dim if with_lum else 1,
            vectors.n_conditions if with_lum else 1,
            metrics=Metrics(CollectorRegistry()),
        )
        result = train_epochs(
            engine, samples, None, mode="single", epochs=1, vectors=vectors if with_lum else None
        )[0].train
        print(
            f"  {name:<18} auc {result['auc']:.4f}  gauc {result['gauc']:.4f}  "
            f"logloss {result['logloss']:.4f}  calibration {result['calibration']:.3f}",
            flush=True,
        )
    print(
        "  (the demo's vectors were computed after the stream, so they know the future of "
        "the early samples; `bench/ranker.py lum-gain` measures the gain on a time split)"
    )
    return len(samples) > 0
