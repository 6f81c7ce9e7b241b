"""Serve /metrics from a long-running command (loopback by default)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from monitoring.config import MetricsConfig

log = logging.getLogger(__name__)


@dataclass
class MetricsServer:
    """A running /metrics endpoint; ``close()`` stops it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.server.server_address[0]!s}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(
    cfg: MetricsConfig, registry: CollectorRegistry = REGISTRY
) -> MetricsServer | None:
    """Start the endpoint when enabled; a busy port is logged, not fatal, and returns None."""
    if not cfg.enabled:
        return None
    try:
        server, thread = start_http_server(cfg.port, addr=cfg.host, registry=registry)
    except OSError as exc:
        log.warning("metrics endpoint %s:%s not started: %s", cfg.host, cfg.port, exc)
        return None
    handle = MetricsServer(server, thread)
    log.info("serving metrics at %s", handle.url)
    return handle
