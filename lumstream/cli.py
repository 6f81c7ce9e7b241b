"""The ``lumstream`` command: one entry point, one module per subcommand.

Each subcommand module in ``lumstream.commands`` exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(cfg, args) -> int``. Modules are imported only when
their command runs (or for ``--help``), so ``lumstream --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from core.logs import configure_logging
from core.settings import ConfigError
from lumstream import __version__

# name -> module under lumstream.commands; the order is the order of --help.
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "config": "config_cmd",
    "broker": "broker",
    "topics": "topics",
    "generate": "generate",
    "import": "import_cmd",
    "worker": "worker",
    "store": "store_cmd",
    "replay": "replay",
    "backbone": "backbone",
    "train": "train",
    "serve": "serve",
    "monitor": "monitor",
}


def _parse_set(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"--set {item!r}: expected SECTION.NAME=VALUE")
        out.setdefault(section.strip(), {})[name.strip()] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumstream",
        description="Streaming online-learning recommender (Kafka -> RocksDB -> LUM -> ranker).",
        epilog="Settings: defaults < --config TOML < LUMSTREAM_* environment < --set. "
        "See `lumstream config show --doc`.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    parser.add_argument(
        "--config", metavar="TOML", help="TOML config file (default: $LUMSTREAM_CONFIG)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.NAME=VALUE",
        help="override one setting (repeatable), e.g. --set kafka.partitions=8",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"lumstream.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    from lumstream.config import load

    try:
        cfg = load(args.config, overrides=_parse_set(args.set))
        return int(args._module.run(cfg, args) or 0)
    except ConfigError as exc:
        print(f"lumstream: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lumstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
