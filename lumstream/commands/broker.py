"""``lumstream broker``: run the embedded Kafka-protocol broker (tansu) in the foreground.

Prints the bootstrap address, creates the lumstream topics (unless ``--no-topics``),
serves /metrics, records its address in ``<data_dir>/broker.json`` (so ``lumstream
topics`` and other commands on this machine find it) and stops cleanly on Ctrl-C or
SIGTERM. Storage is in memory: topics and records are gone when it stops.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config

HELP = "run the embedded Kafka-protocol broker (tansu, in memory) in the foreground"


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
    from monitoring.metrics import default_metrics
    from monitoring.server import serve_metrics
    from streams.kafka.broker import BrokerError, EmbeddedBroker, write_run_file
    from streams.kafka.topics import ensure_topics

    broker_cfg = cfg.broker
    if args.port is not None:
        broker_cfg = build(type(broker_cfg), {"port": args.port}, source="--port", base=broker_cfg)
    if cfg.kafka.bootstrap_servers:
        print(
            f"note: kafka.bootstrap_servers={cfg.kafka.bootstrap_servers!r} is set; other "
            "lumstream commands will use that cluster, not this broker",
            file=sys.stderr,
        )
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    metrics = default_metrics()
    server = serve_metrics(cfg.metrics, metrics.registry)
    run_file = cfg.layout.broker_run_file
    try:
        with EmbeddedBroker(broker_cfg, metrics, log_dir=cfg.layout.logs) as broker:
            print(
                f"embedded broker at {broker.bootstrap} (tansu pid {broker.pid}, "
                f"log {broker.log_path})",
                flush=True,
            )
            if not args.no_topics:
                for name, status in ensure_topics(cfg.kafka, broker.bootstrap).items():
                    print(f"  topic {name:<24} {status}")
            write_run_file(run_file, broker)
            if server is not None:
                print(f"metrics at {server.url}")
            print(
                f"clients: LUMSTREAM_KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}   "
                "(Ctrl-C stops; storage is in memory)",
                flush=True,
            )
            while not stop.wait(0.5):
                if not broker.running:
                    print(
                        f"lumstream broker: tansu exited unexpectedly; see {broker.log_path}",
                        file=sys.stderr,
                    )
                    return 1
            print("stopping", flush=True)
    except BrokerError as exc:
        print(f"lumstream broker: {exc}", file=sys.stderr)
        return 1
    finally:
        run_file.unlink(missing_ok=True)
        if server is not None:
            server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
