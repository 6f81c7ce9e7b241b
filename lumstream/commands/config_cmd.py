"""``lumstream config show``: print the effective configuration."""

from __future__ import annotations

import argparse

from core.settings import describe
from lumstream.config import SECTIONS, Config, to_toml

HELP = "show the effective configuration (defaults < TOML < environment < --set)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the effective config as TOML")
    show.add_argument(
        "--doc",
        action="store_true",
        help="print every setting with its environment variable, type, default and doc instead",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    if args.doc:
        for cls in SECTIONS:
            print(f"[{cls.section}]  {(cls.__doc__ or '').strip()}")
            for env, typ, default, doc in describe(cls):
                print(f"  {env:<44} {typ:<10} {default:<24} {doc}")
        return 0
    print(to_toml(cfg), end="")
    return 0
