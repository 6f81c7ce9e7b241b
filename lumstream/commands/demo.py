"""``lumstream demo``: the whole pipeline on embedded defaults, live, for a bounded time
(:mod:`lumstream.pipeline.demo`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config

HELP = (
    "run the closed loop on embedded defaults: worker, backbone, trainers, ranking services "
    "and simulated users, with alerts and a report"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lumstream.pipeline.demo import DemoOptions

    d = DemoOptions()
    p.add_argument(
        "--quick",
        action="store_true",
        help="the short form the test suite runs (a smaller history, 60 s live); flags "
        "given with it still apply",
    )
    p.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help=f"seconds of the live closed loop (default {d.duration_s:g})",
    )
    p.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help=f"ranking requests per second of the simulated users (default {d.rate:g})",
    )
    p.add_argument(
        "--history",
        type=int,
        metavar="N",
        help=f"events written to a log and replayed into lum.events before going live: the "
        f"backbone's first version trains on them (default {d.history_events:,})",
    )
    p.add_argument(
        "--incremental-every",
        type=float,
        metavar="S",
        help=f"seconds between incremental vector passes (default {d.incremental_every_s:g})",
    )
    p.add_argument(
        "--publish-every",
        type=float,
        metavar="S",
        help=f"seconds between the trainers' published versions (default {d.publish_every_s:g})",
    )
    p.add_argument(
        "--explore-share",
        type=float,
        metavar="F",
        help=f"share of requests served in a random order (default {d.explore_share:g})",
    )
    p.add_argument(
        "--no-drift", action="store_true", help="do not shift the users' tastes half-way"
    )
    p.add_argument(
        "--no-monitor", action="store_true", help="no Prometheus/Alertmanager (and no alerts)"
    )
    world = p.add_argument_group(
        "demo world",
        "a small, dense world: long sequences per user after a short history, for the backbone to "
        "learn from (generator.* settings apply to everything else)",
    )
    world.add_argument("--users", type=int, help=f"users (default {d.users})")
    world.add_argument("--items", type=int, help=f"items (default {d.items})")
    world.add_argument(
        "--categories", type=int, help=f"categories = LUM conditions (default {d.categories})"
    )
    world.add_argument("--ctr", type=float, help=f"target click-through rate (default {d.ctr})")


def run(cfg: Config, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lumstream.pipeline.demo import DemoOptions, run_demo

    base = DemoOptions.quick() if args.quick else DemoOptions()
    given = {
        "duration_s": args.duration,
        "rate": args.rate,
        "history_events": args.history,
        "incremental_every_s": args.incremental_every,
        "publish_every_s": args.publish_every,
        "explore_share": args.explore_share,
        "users": args.users,
        "items": args.items,
        "categories": args.categories,
        "ctr": args.ctr,
    }
    opts = replace(base, **{k: v for k, v in given.items() if v is not None})
    opts = replace(opts, drift=not args.no_drift, monitor=not args.no_monitor)
    return 0 if run_demo(cfg, opts) else 1
