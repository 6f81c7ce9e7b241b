"""``lumstream serve``: the ranking service (docs/serving.md).

Starts ``serving.workers`` worker processes sharing ``serving.host:serving.port``; each
reads the sequence store (``store.path``) and the vector store live, serves the newest
ranker version under ``ranker.versions_dir`` (or ``serving.pin_version``) and swaps to new
ones without a restart, following ``kafka.topic_model_updates`` when a cluster is
configured or a ``lumstream broker`` runs; with a cluster it also logs every served list
as impression events and takes ``POST /v1/events`` (the closed loop). Runs until
Ctrl-C/SIGTERM, then lets in-flight requests finish. The work is :func:`serving.process.supervise`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config

HELP = "serve POST /v1/rank: score candidates with the newest ranker version, live store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, help="port (default: serving.port)")
    p.add_argument("--workers", type=int, help="worker processes (default: serving.workers)")
    p.add_argument(
        "--hooks",
        default="",
        metavar="MODULE:FUNCTION",
        help="a function (service, metrics) -> serving.process.AppHooks: extra routes and "
        "the on_served callback of every worker",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    import dataclasses

    from core.signals import stop_on_signals
    from lumstream.pipeline.serve import spec_of
    from serving.process import resolved, supervise, worker_count
    from streams.kafka.broker import running_broker

    serving = cfg.serving
    if args.port is not None:
        serving = dataclasses.replace(serving, port=args.port)
    if args.workers is not None:
        serving = dataclasses.replace(serving, workers=args.workers)
    cfg = dataclasses.replace(cfg, serving=serving)
    bootstrap = cfg.kafka.bootstrap_servers or running_broker(cfg.layout.broker_run_file)
    spec = resolved(spec_of(cfg, bootstrap or None, args.hooks))

    def started(url: str) -> None:
        print(
            f"serve: {worker_count(spec.serving)} worker(s) on {url} (versions "
            f"{spec.paths.versions}, store {spec.paths.store}, vectors {spec.paths.vectors}; "
            f"model updates {'on ' + bootstrap if bootstrap else 'by polling only'}; "
            + (
                "served lists logged to lum.events, POST /v1/events on"
                if spec.loop is not None
                else "no cluster: served lists not logged, no POST /v1/events"
            )
            + ")",
            file=sys.stderr,
            flush=True,
        )

    with stop_on_signals() as stop:
        return supervise(spec, stop, on_start=started)
