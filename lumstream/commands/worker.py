"""``lumstream worker``: consume lum.events into the RocksDB sequence store and emit samples.

Runs until Ctrl-C/SIGTERM (or ``--idle-exit S`` seconds without records). Several workers
with the same ``worker.group_id`` share the partitions; each partition's RocksDB
directory under the store root moves with its assignment. Serves /metrics.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config

HELP = "consume lum.events into the RocksDB sequence store, join labels, emit lum.samples"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        metavar="DIR",
        help="store directory (default: store.path or <paths.data_dir>/store)",
    )
    p.add_argument("--group", metavar="ID", help="consumer group (default: worker.group_id)")
    p.add_argument(
        "--idle-exit",
        type=float,
        metavar="S",
        help="exit after S seconds without new records (default: run forever)",
    )
    p.add_argument("--quiet", action="store_true", help="no live progress line")


def run(cfg: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.settings import build
    from lumstream.cluster import cluster
    from monitoring.metrics import default_metrics
    from monitoring.server import serve_metrics
    from streams.kafka.topics import ensure_topics
    from streams.worker.confluent_engine import StreamWorker, WorkerStats

    worker_cfg = cfg.worker
    if args.group:
        worker_cfg = build(
            type(worker_cfg), {"group_id": args.group}, source="--group", base=worker_cfg
        )
    root = Path(args.store) if args.store else cfg.layout.store
    metrics = default_metrics()
    server = serve_metrics(cfg.metrics, metrics.registry)
    stop = threading.Event()
    started = time.monotonic()

    def progress(stats: WorkerStats) -> None:
        if not args.quiet:
            rate = stats.applied / max(time.monotonic() - started, 1e-9)
            print(
                f"\rapplied {stats.applied:>10,}  samples {stats.samples:>10,}  "
                f"dead letters {stats.dead_letters:>7,}  batches {stats.batches:>6,}  "
                f"{rate:>9,.0f} ev/s",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def main(bootstrap: str) -> WorkerStats:
        previous = {
            sig: signal.signal(sig, lambda *_: stop.set())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            worker = StreamWorker(
                cfg.kafka, cfg.store, worker_cfg, cfg.events, bootstrap, root, metrics
            )
            return worker.run(stop, idle_exit_s=args.idle_exit, on_batch=progress)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    try:
        with cluster(cfg, metrics) as bootstrap:
            ensure_topics(cfg.kafka, bootstrap)
            print(
                f"worker: group {worker_cfg.group_id!r} on {bootstrap}, store {root}",
                file=sys.stderr,
                flush=True,
            )
            if worker_cfg.engine == "faust":
                from streams.worker.faust_engine import run_faust

                stats = run_faust(
                    cfg.kafka,
                    cfg.store,
                    worker_cfg,
                    cfg.events,
                    bootstrap,
                    root,
                    metrics,
                    idle_exit_s=args.idle_exit,
                )
            else:
                stats = main(bootstrap)
    finally:
        if server is not None:
            server.close()
    print(
        f"\nworker stopped: applied {stats.applied:,} events, {stats.samples:,} samples, "
        f"{stats.dead_letters:,} dead letters, {stats.skipped:,} redelivered records skipped",
        file=sys.stderr,
    )
    return 0
