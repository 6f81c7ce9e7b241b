"""``lumstream worker``: consume lum.events into the RocksDB sequence store and emit samples.

Runs until Ctrl-C/SIGTERM (or ``--idle-exit S`` seconds without records). Several workers
with the same ``worker.group_id`` share the partitions; each partition's RocksDB
directory under the store root moves with its assignment. Serves /metrics. The work is
:func:`streams.worker.engine.run_worker` (the engine of ``worker.engine``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config

HELP = "consume lum.events into the RocksDB sequence store, join labels, emit lum.samples"
ROLE = "worker"


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
    from core.signals import stop_on_signals
    from lumstream.cluster import cluster
    from lumstream.commands.base import fail, serving_metrics
    from streams.kafka.broker import BrokerError
    from streams.worker.applier import WorkerStats
    from streams.worker.engine import run_worker
    from streams.worker.store import StoreError

    worker_cfg = cfg.worker
    if args.group:
        worker_cfg = build(
            type(worker_cfg), {"group_id": args.group}, source="--group", base=worker_cfg
        )
    root = Path(args.store) if args.store else cfg.layout.store
    started = time.monotonic()

    def progress(stats: WorkerStats) -> None:
        rate = stats.applied / max(time.monotonic() - started, 1e-9)
        print(
            f"\rapplied {stats.applied:>10,}  samples {stats.samples:>10,}  "
            f"dead letters {stats.dead_letters:>7,}  batches {stats.batches:>6,}  "
            f"{rate:>9,.0f} ev/s",
            end="",
            file=sys.stderr,
            flush=True,
        )

    try:
        with (
            serving_metrics(cfg, ROLE) as (metrics, _),
            stop_on_signals() as stop,
            cluster(cfg, metrics) as bootstrap,
        ):
            print(
                f"worker: group {worker_cfg.group_id!r} ({worker_cfg.engine} engine) on "
                f"{bootstrap}, store {root}",
                file=sys.stderr,
                flush=True,
            )
            stats = run_worker(
                cfg.kafka,
                cfg.store,
                worker_cfg,
                cfg.events,
                bootstrap,
                root,
                metrics,
                stop=stop,
                idle_exit_s=args.idle_exit,
                on_batch=None if args.quiet else progress,
                snapshot_root=cfg.layout.store_snapshots,
            )
    except (BrokerError, StoreError) as exc:
        return fail("worker", exc)
    print(
        f"\nworker stopped: applied {stats.applied:,} events, {stats.samples:,} samples, "
        f"{stats.dead_letters:,} dead letters, {stats.skipped:,} redelivered records skipped",
        file=sys.stderr,
    )
    return 0
