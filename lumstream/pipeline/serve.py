"""The ranking service from a :class:`~lumstream.config.Config`: its process spec, and a
handle that starts ``lumstream serve`` in a subprocess and waits until it is ready (the
closed-loop demo and tests use it).

Example:
    >>> with start_service(cfg) as svc:  # doctest: +SKIP
    ...     svc.client().rank(RankRequest("7", [Candidate("3")]))
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from core.processes import ChildProcess, free_port, tail
from lumstream.config import Config, to_toml
from serving.client import RankClient
from serving.loop import LoopSpec
from serving.process import ServeSpec
from serving.service import ServicePaths


class ServiceStartError(RuntimeError):
    """The service exited or did not become ready; the message holds its log's tail."""


def spec_of(cfg: Config, bootstrap: str | None = None, hooks: str = "") -> ServeSpec:
    """The worker processes' spec: the same paths every command resolves (Config.layout).
    With a cluster (``bootstrap``) every worker also runs the closed loop's pieces:
    exploration, the served-list log to lum.events and ``POST /v1/events``."""
    layout = cfg.layout
    loop = None
    if bootstrap:
        loop = LoopSpec(
            served_log=cfg.served_log,
            events_api=cfg.events_api,
            explore=cfg.explore,
            events=cfg.events,
            kafka=cfg.kafka,
            bootstrap=bootstrap,
            data_dir=layout.data_dir,
        )
    return ServeSpec(
        serving=cfg.serving,
        store=cfg.store,
        history_len=cfg.worker.history_len,
        paths=ServicePaths(layout.store, layout.vector_store, layout.ranker_versions),
        metrics=cfg.metrics,
        discovery_dir=layout.metrics_discovery,
        kafka=cfg.kafka,
        bootstrap=bootstrap,
        hooks=hooks,
        loop=loop,
    )


class ServiceProcess:
    """``lumstream serve`` running in a subprocess (stopped with SIGTERM: graceful).

    Args:
        cfg: the whole config (written to a TOML file the subprocess reads).
        log_path: the subprocess's output (default: a temporary file).
        extra_args: more ``lumstream serve`` arguments (e.g. ``--hooks``).
    """

    def __init__(
        self, cfg: Config, log_path: Path | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        port = cfg.serving.port or free_port(cfg.serving.host)
        self.cfg = dataclasses.replace(cfg, serving=dataclasses.replace(cfg.serving, port=port))
        self._dir = tempfile.TemporaryDirectory(prefix="lumstream-serve-")
        self.config_path = Path(self._dir.name) / "config.toml"
        self.config_path.write_text(to_toml(self.cfg))
        self.log_path = log_path or Path(self._dir.name) / "serve.log"
        self.extra_args = extra_args
        self.child = ChildProcess(
            "lumstream-serve", kill_after_s=self.cfg.serving.shutdown_grace_s + 10
        )

    @property
    def url(self) -> str:
        return f"http://{self.cfg.serving.host}:{self.cfg.serving.port}"

    def client(self, timeout_s: float = 10.0) -> RankClient:
        return RankClient(self.url, timeout_s)

    def start(self, timeout_s: float = 120.0) -> ServiceProcess:
        """Start it and wait until /readyz says ready.

        Raises:
            ServiceStartError: it exited, or was not ready within ``timeout_s``.
        """
        argv = [sys.executable, "-m", "lumstream.cli", "--config", str(self.config_path)]
        argv += ["serve", *self.extra_args]
        with self.log_path.open("ab") as out:
            self.child.start(argv, out)
        deadline = time.monotonic() + timeout_s
        why = "not started"
        while time.monotonic() < deadline:
            if self.child.poll() is not None:
                raise ServiceStartError(
                    f"lumstream serve exited ({self.child.poll()}): {tail(self.log_path)}"
                )
            try:
                with self.client(2.0) as c:
                    health = c.ready()
                if health.status == "ready":
                    return self
                why = health.detail
            except OSError as exc:
                why = str(exc)
            time.sleep(0.2)
        self.stop()
        raise ServiceStartError(f"not ready after {timeout_s:g} s ({why}): {tail(self.log_path)}")

    def stop(self) -> int | None:
        """SIGTERM (in-flight requests finish), then SIGKILL after the grace period."""
        code = self.child.stop()
        return code

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_service(
    cfg: Config, *, timeout_s: float = 120.0, extra_args: tuple[str, ...] = ()
) -> ServiceProcess:
    """Start ``lumstream serve`` for ``cfg`` in a subprocess and wait until it is ready
    (a free port when ``serving.port`` is 0). Stop it with ``close()`` or ``with``."""
    proc = ServiceProcess(cfg, extra_args=extra_args)
    try:
        return proc.start(timeout_s)
    except BaseException:
        proc.close()
        raise
