"""``lumstream broker``: run the embedded Kafka-protocol broker (tansu) in the foreground.

Prints the bootstrap address, creates the lumstream topics (unless ``--no-topics``),
serves /metrics, records its address in ``<data_dir>/broker.json`` (so ``lumstream
topics`` and other commands on this machine find it) and stops cleanly on Ctrl-C or
SIGTERM. Storage is in memory: topics and records are gone when it stops. The work is
:func:`streams.kafka.broker.serve_broker`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config

HELP = "run the embedded Kafka-protocol broker (tansu, in memory) in the foreground"
ROLE = "broker"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--port",
        type=int,
        metavar="N",
        help="port to listen on; 0 picks a free one (default: broker.port)",
    )
    p.add_argument("--no-topics", action="store_true", help="do not create the lumstream topics")


def run(cfg: Config, args: argparse.Namespace) -> int:
    from core.settings import build
    from core.signals import stop_on_signals
    from lumstream.commands.base import fail, serving_metrics
    from streams.kafka.broker import BrokerError, EmbeddedBroker, serve_broker

    broker_cfg = cfg.broker
    if args.port is not None:
        broker_cfg = build(type(broker_cfg), {"port": args.port}, source="--port", base=broker_cfg)
    if cfg.kafka.bootstrap_servers:
        print(
            f"note: kafka.bootstrap_servers={cfg.kafka.bootstrap_servers!r} is set; other "
            "lumstream commands will use that cluster, not this broker",
            file=sys.stderr,
        )
    with serving_metrics(cfg, ROLE) as (metrics, server), stop_on_signals() as stop:

        def ready(broker: EmbeddedBroker, topics: dict[str, str]) -> None:
            print(
                f"embedded broker at {broker.bootstrap} (tansu pid {broker.pid}, "
                f"log {broker.log_path})"
            )
            for name, status in topics.items():
                print(f"  topic {name:<24} {status}")
            if server is not None:
                print(f"metrics at {server.url}")
            print(
                f"clients: LUMSTREAM_KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}   "
                "(Ctrl-C stops; storage is in memory)",
                flush=True,
            )

        try:
            serve_broker(
                broker_cfg,
                stop,
                run_file=cfg.layout.broker_run_file,
                kafka=None if args.no_topics else cfg.kafka,
                metrics=metrics,
                log_dir=cfg.layout.logs,
                on_ready=ready,
            )
        except BrokerError as exc:
            return fail("broker", exc)
    print("stopped", flush=True)
    return 0
