"""Serve /metrics from a long-running command, and let a local Prometheus find it.

Every long-running command serves its own endpoint (loopback by default; port 0, the
default, picks a free one, so processes on one machine never fight over a port) and,
while it runs, keeps a discovery file in a directory that ``lumstream monitor`` points
Prometheus at: ``<dir>/<role>-<pid>.json`` in Prometheus' file-based service discovery
format::

    [{"targets": ["127.0.0.1:40123"], "labels": {"job": "lumstream", "role": "worker",
      "pid": "4242", "host": "node-1"}}]

The file is removed when the endpoint closes; files of processes that died without
closing (SIGKILL) are removed by the next process that opens an endpoint there, and by
``lumstream monitor``.

Example:
    >>> with metrics_endpoint(cfg, reg, role="worker", discovery_dir=d) as ep:  # doctest: +SKIP
    ...     print(ep.url)
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from core.durable import write_json_atomic
from monitoring.config import MetricsConfig

log = logging.getLogger(__name__)
JOB = "lumstream"


@dataclass
class MetricsServer:
    """A running /metrics endpoint; ``close()`` stops it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def host(self) -> str:
        host = str(self.server.server_address[0])
        return "127.0.0.1" if host in ("0.0.0.0", "") else host

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def discovered(directory: Path, *, prune: bool = True) -> list[dict[str, object]]:
    """The targets registered in ``directory`` (file_sd entries), removing the files of
    processes of this host that are gone when ``prune`` (another host's are left to it)."""
    out: list[dict[str, object]] = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        try:
            entries = orjson.loads(path.read_bytes())
            labels = entries[0]["labels"]
            pid, host = int(labels["pid"]), str(labels["host"])
        except (OSError, orjson.JSONDecodeError, LookupError, TypeError, ValueError):
            continue  # being written, or not ours
        if host == socket.gethostname() and not _alive(pid):
            if prune:
                path.unlink(missing_ok=True)
            continue
        out.extend(entries)
    return out


@contextlib.contextmanager
def metrics_endpoint(
    cfg: MetricsConfig,
    registry: CollectorRegistry = REGISTRY,
    *,
    role: str,
    discovery_dir: Path | None = None,
) -> Iterator[MetricsServer | None]:
    """Serve /metrics for the ``with`` block and register it in ``discovery_dir``.

    Args:
        cfg: host, port (0 = a free one), enabled.
        registry: what to serve.
        role: the command (``worker``, ``trainer``, ...): a label of the target.
        discovery_dir: where the discovery file goes (None: no file).
    """
    server = serve_metrics(cfg, registry)
    path: Path | None = None
    try:
        if server is not None and discovery_dir is not None:
            discovered(discovery_dir)  # prune the files of dead processes
            path = discovery_dir / f"{role}-{os.getpid()}.json"
            labels = {
                "job": JOB,
                "role": role,
                "pid": str(os.getpid()),
                "host": socket.gethostname(),
            }
            write_json_atomic(path, [{"targets": [server.target], "labels": labels}])
        yield server
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
        if server is not None:
            server.close()
