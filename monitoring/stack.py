"""A local Prometheus and Alertmanager for the lumstream processes of this machine.

:class:`LocalMonitoring` writes their configurations, starts both as supervised children
(:class:`core.processes.ChildProcess`: they never outlive this process), waits until they
answer, and stops them. Prometheus scrapes every lumstream process it finds through the
discovery files the processes keep under ``<data_dir>/run/metrics`` (``file_sd_configs``,
re-read every few seconds: a process started later is picked up, one that stopped cleanly
dropped), plus any static targets, loads the rule files, evaluates them and sends alerts
to the Alertmanager, which routes them to the configured webhooks (critical alerts inhibit
the warning of the same alert and instance).

``lumstream monitor`` runs one until Ctrl-C; the integration tests and the demo run one
for their duration (with :func:`monitoring.rules.scaled_rule_files` for a faster clock).
:func:`monitoring.alerts.fired_alerts` reads what fired.

Example:
    >>> plan = MonitorPlan(state_dir=Path("data/monitor"),
    ...                    discovery_dir=Path("data/run/metrics"))  # doctest: +SKIP
    >>> with LocalMonitoring(plan) as mon:  # doctest: +SKIP
    ...     print(mon.prometheus_url, mon.alertmanager_url)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from core.durable import write_json_atomic
from core.processes import ChildError, ChildProcess, free_port, tail
from monitoring.config import MonitorConfig
from monitoring.rules import rule_files
from monitoring.server import JOB, discovered
from monitoring.tools import find_tool

log = logging.getLogger(__name__)


class MonitorError(RuntimeError):
    """Prometheus or Alertmanager cannot be started or reached; the message says why."""


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True)
class MonitorPlan:
    """What the local monitoring watches and where it keeps its state.

    Args:
        state_dir: configurations, logs, the TSDB and Alertmanager's data (kept between
            runs: the history survives a restart).
        discovery_dir: the discovery files of the lumstream processes (``<data_dir>/run/
            metrics``); None: only ``targets``.
        targets: more ``host:port`` targets of job ``lumstream`` (no discovery file).
        rules: rule files to load (default: ``monitoring/rules/*.yml``).
        host: where both listen (loopback by default).
        prometheus_port / alertmanager_port: 0 picks a free port.
        scrape_interval_s / evaluation_interval_s: Prometheus' clocks.
        discovery_refresh_s: how often the discovery files are re-read.
        alertmanager: start an Alertmanager and send the alerts to it.
        webhooks: URLs Alertmanager posts every notification to (firing and resolved).
        group_wait_s / group_interval_s / repeat_interval_s: Alertmanager's routing timers.
        retention: how long Prometheus keeps samples.
        startup_timeout_s: how long each may take to answer ``/-/ready``.
    """

    state_dir: Path
    discovery_dir: Path | None = None
    targets: Sequence[str] = ()
    rules: Sequence[Path] = field(default_factory=rule_files)
    host: str = "127.0.0.1"
    prometheus_port: int = 0
    alertmanager_port: int = 0
    scrape_interval_s: float = 15.0
    evaluation_interval_s: float = 15.0
    discovery_refresh_s: float = 5.0
    alertmanager: bool = True
    webhooks: Sequence[str] = ()
    group_wait_s: float = 30.0
    group_interval_s: float = 300.0
    repeat_interval_s: float = 4 * 3600.0
    retention: str = "15d"
    startup_timeout_s: float = 30.0

    @classmethod
    def of(
        cls,
        cfg: MonitorConfig,
        state_dir: Path,
        discovery_dir: Path | None,
        **more: object,
    ) -> MonitorPlan:
        """The plan of the ``[monitor]`` settings; ``more`` overrides fields."""
        fields: dict[str, object] = {
            "state_dir": state_dir,
            "discovery_dir": discovery_dir,
            "host": cfg.host,
            "prometheus_port": cfg.prometheus_port,
            "alertmanager_port": cfg.alertmanager_port,
            "alertmanager": cfg.alertmanager,
            "webhooks": tuple(cfg.webhooks),
            "scrape_interval_s": cfg.scrape_interval_s,
            "evaluation_interval_s": cfg.evaluation_interval_s,
            "retention": cfg.retention,
        }
        fields.update(more)
        return cls(**fields)  # type: ignore[arg-type]


def prometheus_config(
    plan: MonitorPlan, prometheus: str, alertmanager: str | None
) -> dict[str, object]:
    """Prometheus' configuration (JSON is YAML) for ``plan``; ``prometheus`` and
    ``alertmanager`` are their own ``host:port``."""
    jobs: list[dict[str, object]] = []
    lumstream: dict[str, object] = {"job_name": JOB, "metrics_path": "/metrics"}
    if plan.discovery_dir is not None:
        lumstream["file_sd_configs"] = [
            {
                "files": [str(plan.discovery_dir.resolve() / "*.json")],
                "refresh_interval": _duration(plan.discovery_refresh_s),
            }
        ]
    if plan.targets:
        lumstream["static_configs"] = [{"targets": list(plan.targets)}]
    if plan.discovery_dir is not None or plan.targets:
        jobs.append(lumstream)
    jobs.append({"job_name": "prometheus", "static_configs": [{"targets": [prometheus]}]})
    config: dict[str, object] = {
        "global": {
            "scrape_interval": _duration(plan.scrape_interval_s),
            "scrape_timeout": _duration(min(10.0, plan.scrape_interval_s * 0.8)),
            "evaluation_interval": _duration(plan.evaluation_interval_s),
        },
        "rule_files": [str(Path(p).resolve()) for p in plan.rules],
        "scrape_configs": jobs,
    }
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        jobs.append({"job_name": "alertmanager", "static_configs": [{"targets": [alertmanager]}]})
    return config


def alertmanager_config(plan: MonitorPlan) -> dict[str, object]:
    """Alertmanager's configuration: one route to the webhooks, grouped by alert and
    instance; a critical alert silences the warning of the same alert and instance."""
    receiver: dict[str, object] = {"name": "lumstream"}
    if plan.webhooks:
        receiver["webhook_configs"] = [{"url": u, "send_resolved": True} for u in plan.webhooks]
    return {
        "route": {
            "receiver": "lumstream",
            "group_by": ["alertname", "instance"],
            "group_wait": _duration(plan.group_wait_s),
            "group_interval": _duration(plan.group_interval_s),
            "repeat_interval": _duration(plan.repeat_interval_s),
        },
        "receivers": [receiver],
        "inhibit_rules": [
            {
                "source_matchers": ['severity="critical"'],
                "target_matchers": ['severity="warning"'],
                "equal": ["alertname", "instance"],
            }
        ],
    }


def ready(url: str, timeout_s: float = 1.0) -> bool:
    """``GET url/-/ready`` answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=timeout_s) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class _Server:
    """One of the two children: its binary, arguments, port and log."""

    PORT_ATTEMPTS = 3

    def __init__(self, name: str, tool: str, host: str, port: int, log_path: Path) -> None:
        self.name, self.tool, self.host, self.port_setting = name, tool, host, port
        self.log_path = log_path
        self.port = 0
        self.child = ChildProcess(name, stop_signal=signal.SIGTERM, kill_after_s=10.0)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def choose_port(self) -> None:
        self.port = self.port_setting or free_port(self.host)

    def start(self, argv: list[str], timeout_s: float) -> None:
        """Start with ``argv`` (its listen address already in it) and wait until ready.

        It runs in the root its ``usr/bin`` lies under (``/`` for a system install): Debian's
        alertmanager reads its templates from ``/usr/share/prometheus/alertmanager``, which
        scripts/install.sh rewrites to the same-length relative ``usr//share/...`` in the
        unpacked copy, so that it finds the unpacked templates without root.
        """
        binary = find_tool(self.tool)
        root = binary.parent.parent.parent if binary.parent.name == "bin" else binary.parent
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as fh:
            start = fh.tell()
            fh.write(f"--- lumstream: starting {binary} {' '.join(argv)}\n".encode())
            fh.flush()
            try:
                self.child.start([str(binary), *argv], fh, cwd=root)
            except ChildError as exc:
                raise MonitorError(str(exc)) from exc
        deadline = time.monotonic() + timeout_s
        while not ready(self.url, 0.5):
            code = self.child.poll()
            if code is not None:
                self.child.reap()
                raise MonitorError(
                    f"{self.name} exited with code {code} while starting on {self.address}; "
                    f"log {self.log_path}:\n{tail(self.log_path, start)}"
                )
            if time.monotonic() > deadline:
                self.child.stop()
                raise MonitorError(
                    f"{self.name} did not answer {self.url}/-/ready within {timeout_s:g} s; "
                    f"log {self.log_path}:\n{tail(self.log_path, start)}"
                )
            time.sleep(0.1)

    def port_taken(self) -> bool:
        return "address already in use" in tail(self.log_path, 0, 4000)


class LocalMonitoring:
    """Prometheus (and Alertmanager) for ``plan``; a context manager (see the module doc).

    Raises (from :meth:`start`):
        ToolError: a binary is missing (how to get it is in the message).
        MonitorError: one did not start or answer (with its log's tail).
    """

    def __init__(self, plan: MonitorPlan) -> None:
        self.plan = plan
        logs = plan.state_dir / "logs"
        self.prometheus = _Server(
            "prometheus", "prometheus", plan.host, plan.prometheus_port, logs / "prometheus.log"
        )
        self.alertmanager = (
            _Server(
                "alertmanager",
                "alertmanager",
                plan.host,
                plan.alertmanager_port,
                logs / "alertmanager.log",
            )
            if plan.alertmanager
            else None
        )
        self.started_at = 0.0

    @property
    def prometheus_url(self) -> str:
        return self.prometheus.url

    @property
    def alertmanager_url(self) -> str | None:
        return self.alertmanager.url if self.alertmanager is not None else None

    def __enter__(self) -> LocalMonitoring:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalMonitoring:
        """Write the configurations, start Alertmanager then Prometheus, wait for both."""
        plan = self.plan
        for tool in ("prometheus", *(("alertmanager",) if self.alertmanager else ())):
            find_tool(tool)  # both found before either starts
        missing = [str(p) for p in plan.rules if not Path(p).is_file()]
        if missing:
            raise MonitorError(f"rule files not found: {', '.join(missing)}")
        plan.state_dir.mkdir(parents=True, exist_ok=True)
        if plan.discovery_dir is not None:
            plan.discovery_dir.mkdir(parents=True, exist_ok=True)
            discovered(plan.discovery_dir)  # prune the files of processes that are gone
        try:
            if self.alertmanager is not None:
                self._start_alertmanager(self.alertmanager)
            self._start_prometheus()
        except BaseException:
            self.stop()
            raise
        self.started_at = time.time()
        return self

    def _attempts(self, server: _Server, launch: Callable[[], None]) -> None:
        attempts = server.PORT_ATTEMPTS if server.port_setting == 0 else 1
        for attempt in range(1, attempts + 1):
            server.choose_port()
            try:
                launch()
                return
            except MonitorError:
                if attempt == attempts or not server.port_taken():
                    raise
                log.info("%s: port %d was taken; trying another", server.name, server.port)

    def _start_alertmanager(self, am: _Server) -> None:
        state = self.plan.state_dir / "alertmanager"
        state.mkdir(parents=True, exist_ok=True)
        config = state / "alertmanager.yml"
        config.write_text(json.dumps(alertmanager_config(self.plan), indent=2) + "\n")

        def launch() -> None:
            am.start(
                [
                    f"--config.file={config}",
                    f"--storage.path={state / 'data'}",
                    f"--web.listen-address={am.address}",
                    "--cluster.listen-address=",  # no gossip port: one local instance
                ],
                self.plan.startup_timeout_s,
            )

        self._attempts(am, launch)

    def _start_prometheus(self) -> None:
        prom = self.prometheus
        state = self.plan.state_dir / "prometheus"
        state.mkdir(parents=True, exist_ok=True)
        config = state / "prometheus.yml"
        am = self.alertmanager.address if self.alertmanager is not None else None

        def launch() -> None:
            config.write_text(
                json.dumps(prometheus_config(self.plan, prom.address, am), indent=2) + "\n"
            )
            prom.start(
                [
                    f"--config.file={config}",
                    f"--storage.tsdb.path={state / 'data'}",
                    f"--storage.tsdb.retention.time={self.plan.retention}",
                    f"--web.listen-address={prom.address}",
                    # firing alerts go to Alertmanager again every evaluation (default: a
                    # minute): one found a few seconds after start gets them at once
                    f"--rules.alert.resend-delay={_duration(self.plan.evaluation_interval_s)}",
                ],
                self.plan.startup_timeout_s,
            )

        self._attempts(prom, launch)

    def check(self) -> None:
        """Raise :class:`MonitorError` when either has exited since it started."""
        for server in (self.prometheus, self.alertmanager):
            if server is not None and server.child.started and server.child.poll() is not None:
                raise MonitorError(
                    f"{server.name} exited with code {server.child.poll()}; log "
                    f"{server.log_path}:\n{tail(server.log_path)}"
                )

    def stop(self) -> None:
        """Stop Prometheus, then Alertmanager (SIGTERM, SIGKILL after 10 s); idempotent."""
        self.prometheus.child.stop()
        if self.alertmanager is not None:
            self.alertmanager.child.stop()


def serve_monitor(
    plan: MonitorPlan,
    stop: threading.Event,
    *,
    run_file: Path | None = None,
    on_ready: Callable[[LocalMonitoring], None] | None = None,
    poll_s: float = 1.0,
) -> None:
    """Run a :class:`LocalMonitoring` until ``stop`` is set (what ``lumstream monitor``
    does): record its URLs in ``run_file`` (removed however this returns), call
    ``on_ready``, then watch both children.

    Raises:
        ToolError: a binary is missing.
        MonitorError: one did not start, or exited while serving.
    """
    with LocalMonitoring(plan) as mon:
        try:
            if run_file is not None:
                write_json_atomic(
                    run_file,
                    {
                        "prometheus": mon.prometheus_url,
                        "alertmanager": mon.alertmanager_url,
                        "pid": os.getpid(),
                    },
                )
            if on_ready is not None:
                on_ready(mon)
            while not stop.wait(poll_s):
                mon.check()
        finally:
            if run_file is not None:
                run_file.unlink(missing_ok=True)
