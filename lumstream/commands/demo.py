"""`lumstream demo` (being written)."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "(being written)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(cfg: Any, args: argparse.Namespace) -> int:
    raise NotImplementedError
