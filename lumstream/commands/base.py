"""What every command shares: its metrics endpoint and a one-line error.

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``run(cfg, args) -> int``; it parses, builds configs and calls one library entry point.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config
    from monitoring.metrics import Metrics
    from monitoring.server import MetricsServer


@contextlib.contextmanager
def serving_metrics(cfg: Config, role: str) -> Iterator[tuple[Metrics, MetricsServer | None]]:
    """The process metrics and their /metrics endpoint for the ``with`` block, registered
    for ``lumstream monitor`` under ``<data_dir>/run/metrics``."""
    from monitoring.metrics import default_metrics
    from monitoring.server import metrics_endpoint

    metrics = default_metrics()
    with metrics_endpoint(
        cfg.metrics, metrics.registry, role=role, discovery_dir=cfg.layout.metrics_discovery
    ) as server:
        yield metrics, server


def fail(command: str, message: object, code: int = 1) -> int:
    """Print ``lumstream COMMAND: message`` on stderr and return ``code``."""
    print(f"lumstream {command}: {message}", file=sys.stderr)
    return code
