"""``lumstream monitor``: a local Prometheus and Alertmanager for this machine's lumstream
processes, until Ctrl-C.

Prometheus scrapes every process that registered its /metrics endpoint under
``<data_dir>/run/metrics`` (all long-running commands do; processes started later are
picked up within seconds), loads the project's rule files (``monitoring/rules``) and sends
alerts to the Alertmanager, which posts them to ``--webhook`` URLs. Both keep their data
under ``<data_dir>/monitor`` (the history survives a restart); the URLs are printed and
recorded in ``<data_dir>/run/monitor.json``. The work is
:func:`monitoring.stack.serve_monitor`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config

HELP = "a local Prometheus + Alertmanager scraping every lumstream process, with the rules"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--port", type=int, metavar="N", help="Prometheus' port (default: monitor.prometheus_port)"
    )
    p.add_argument(
        "--alertmanager-port",
        type=int,
        metavar="N",
        help="Alertmanager's port (default: monitor.alertmanager_port)",
    )
    p.add_argument(
        "--no-alertmanager", action="store_true", help="evaluate the rules, send alerts nowhere"
    )
    p.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="URL",
        help="post every alert notification to URL (repeatable; adds to monitor.webhooks)",
    )
    p.add_argument(
        "--scrape-interval",
        type=float,
        metavar="S",
        help="seconds between scrapes and rule evaluations (default: monitor.*_interval_s)",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    import dataclasses

    from core.signals import stop_on_signals
    from lumstream.commands.base import fail
    from monitoring.server import discovered
    from monitoring.stack import LocalMonitoring, MonitorError, MonitorPlan, serve_monitor
    from monitoring.tools import ToolError

    if args.scrape_interval is not None and args.scrape_interval <= 0:
        return fail("monitor", f"--scrape-interval {args.scrape_interval}: must be positive", 2)
    layout = cfg.layout
    plan = MonitorPlan.of(cfg.monitor, layout.monitor, layout.metrics_discovery)
    changes: dict[str, object] = {"webhooks": (*plan.webhooks, *args.webhook)}
    if args.port is not None:
        changes["prometheus_port"] = args.port
    if args.alertmanager_port is not None:
        changes["alertmanager_port"] = args.alertmanager_port
    if args.no_alertmanager:
        changes["alertmanager"] = False
    if args.scrape_interval is not None:
        changes["scrape_interval_s"] = changes["evaluation_interval_s"] = args.scrape_interval
    plan = dataclasses.replace(plan, **changes)  # type: ignore[arg-type]

    def ready(mon: LocalMonitoring) -> None:
        targets = discovered(layout.metrics_discovery)
        print(f"prometheus    {mon.prometheus_url}   (alerts: {mon.prometheus_url}/alerts)")
        if mon.alertmanager_url is not None:
            hooks = ", ".join(plan.webhooks) or "no webhook (--webhook URL)"
            print(f"alertmanager  {mon.alertmanager_url}   -> {hooks}")
        print(f"rules         {len(plan.rules)} files under {plan.rules[0].parent}")
        print(f"targets       {layout.metrics_discovery}/*.json, {len(targets)} running now:")
        for t in targets:
            labels = t["labels"]
            assert isinstance(labels, dict)
            print(f"  {labels.get('role', '?'):<10} pid {labels.get('pid', '?'):<8} {t['targets']}")
        print(f"data          {layout.monitor}   (Ctrl-C stops both)", flush=True)

    try:
        with stop_on_signals() as stop:
            serve_monitor(plan, stop, run_file=layout.monitor_run_file, on_ready=ready)
    except (ToolError, MonitorError) as exc:
        return fail("monitor", exc)
    print("stopped", flush=True)
    return 0
