"""``lumstream demo``: the whole pipeline on embedded defaults, live, for a bounded time
(:mod:`lumstream.pipeline.demo`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config

HELP = "run the pipeline live on embedded defaults: stream worker, backbone refresh, rankers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lumstream.pipeline.demo import DemoOptions

    d = DemoOptions()
    p.add_argument(
        "--duration",
        type=float,
        default=d.duration_s,
        metavar="S",
        help=f"seconds of live traffic after the history (default {d.duration_s:g})",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=d.rate,
        metavar="R",
        help=f"events per second the generator sends (default {d.rate:g})",
    )
    p.add_argument(
        "--skip-backbone",
        action="store_true",
        help="run the stream stage only (no backbone refresh, no rankers)",
    )
    p.add_argument(
        "--history",
        type=int,
        default=d.history_events,
        metavar="N",
        help=f"events written to a log and replayed into lum.events before going live: the "
        f"backbone's first version trains on them (default {d.history_events:,})",
    )
    p.add_argument(
        "--incremental-every",
        type=float,
        default=d.incremental_every_s,
        metavar="S",
        help="seconds between incremental vector passes while live "
        f"(default {d.incremental_every_s:g})",
    )
    p.add_argument(
        "--malformed-fraction",
        type=float,
        default=d.malformed_fraction,
        metavar="F",
        help=f"share of deliberately broken events (default {d.malformed_fraction})",
    )
    world = p.add_argument_group(
        "demo world",
        "a small, dense world: long sequences per user after a short history, for the backbone to "
        "learn from (generator.* settings apply to everything else)",
    )
    world.add_argument("--users", type=int, default=d.users, help=f"users (default {d.users})")
    world.add_argument("--items", type=int, default=d.items, help=f"items (default {d.items})")
    world.add_argument(
        "--categories",
        type=int,
        default=d.categories,
        help=f"categories = LUM conditions (default {d.categories})",
    )
    world.add_argument(
        "--ctr", type=float, default=d.ctr, help=f"target click-through rate (default {d.ctr})"
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    from lumstream.pipeline.demo import DemoOptions, run_demo

    opts = DemoOptions(
        duration_s=args.duration,
        rate=args.rate,
        skip_backbone=args.skip_backbone,
        history_events=args.history,
        incremental_every_s=args.incremental_every,
        malformed_fraction=args.malformed_fraction,
        users=args.users,
        items=args.items,
        categories=args.categories,
        ctr=args.ctr,
    )
    return 0 if run_demo(cfg, opts) else 1
