"""``lumstream topics create|list``: the lumstream topics on the embedded or an external cluster.

The cluster is ``--bootstrap``, else ``kafka.bootstrap_servers``, else a running
``lumstream broker`` of this data directory (the embedded broker keeps topics in memory,
so they are created in a running one).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config

HELP = "create (idempotently) or list the Kafka topics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help="cluster to use (default: kafka.bootstrap_servers, else a running `lumstream broker`)",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser(
        "create",
        help="create the lumstream topics that are missing (partitions: kafka.partitions)",
    )
    sub.add_parser("list", help="list every topic with its partition count")


def run(cfg: Config, args: argparse.Namespace) -> int:
    from lumstream.commands.base import fail
    from streams.kafka.broker import running_broker

    bootstrap = (
        args.bootstrap or cfg.kafka.bootstrap_servers or running_broker(cfg.layout.broker_run_file)
    )
    if not bootstrap:
        return fail(
            "topics",
            "no Kafka cluster: pass --bootstrap HOST:PORT, set kafka.bootstrap_servers, or "
            "start `lumstream broker` first (the embedded broker keeps topics in memory while "
            "it runs)",
            2,
        )
    from kafka.errors import KafkaError

    from streams.kafka.topics import ensure_topics, list_topics

    try:
        if args.action == "create":
            for name, status in ensure_topics(cfg.kafka, bootstrap).items():
                print(f"{name:<32} {status}")
        else:
            for name, partitions in list_topics(cfg.kafka, bootstrap).items():
                print(f"{name:<32} {partitions:>5} partitions")
    except KafkaError as exc:
        return fail("topics", f"{bootstrap}: {exc}")
    return 0
