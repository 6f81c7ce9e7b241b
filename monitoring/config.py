"""Config of the metrics endpoint every long-running command serves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.settings import setting


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus /metrics endpoint."""

    section: ClassVar[str] = "metrics"
    enabled: bool = setting(True, "serve /metrics from long-running commands")
    host: str = setting("127.0.0.1", "address of the /metrics endpoint (loopback by default)")
    port: int = setting(
        0,
        "port of the /metrics endpoint; 0 picks a free one (found through the discovery "
        "files under <paths.data_dir>/run/metrics)",
        minimum=0,
        maximum=65535,
    )


@dataclass(frozen=True)
class DriftConfig:
    """Drift of a model's scores and features against the reference saved with each of its
    versions (monitoring/drift.py; docs/monitoring.md)."""

    section: ClassVar[str] = "drift"
    enabled: bool = setting(True, "compute and export drift (PSI) and keep references in versions")
    window: int = setting(
        10_000, "recent samples compared with the reference (score and feature PSI)", minimum=100
    )
    reference_samples: int = setting(
        50_000, "most recent samples a new reference is captured from", minimum=100
    )
    warmup_samples: int = setting(
        100_000,
        "samples a model learns before its first reference (the scores of a model still "
        "learning from scratch are no baseline)",
        minimum=0,
    )
    rebase_s: float = setting(
        3600.0,
        "a new version carries the reference of the one before until the reference is this "
        "old, then captures a new one (a shift is compared with at most this much history)",
        minimum=0.0,
    )
    top_conditions: int = setting(
        20,
        "most frequent conditions kept apart in the condition mix (the rest: one bin)",
        minimum=1,
    )


@dataclass(frozen=True)
class MonitorConfig:
    """``lumstream monitor``: a local Prometheus and Alertmanager for this machine's
    lumstream processes (monitoring/stack.py)."""

    section: ClassVar[str] = "monitor"
    host: str = setting("127.0.0.1", "where Prometheus and Alertmanager listen")
    prometheus_port: int = setting(
        0, "Prometheus' port; 0 picks a free one (printed)", minimum=0, maximum=65535
    )
    alertmanager_port: int = setting(
        0, "Alertmanager's port; 0 picks a free one (printed)", minimum=0, maximum=65535
    )
    alertmanager: bool = setting(True, "start an Alertmanager and send the alerts to it")
    webhooks: tuple[str, ...] = setting((), "URLs Alertmanager posts every notification to")
    scrape_interval_s: float = setting(15.0, "seconds between scrapes", minimum=0.1)
    evaluation_interval_s: float = setting(15.0, "seconds between rule evaluations", minimum=0.1)
    retention: str = setting("15d", "how long Prometheus keeps samples (a Prometheus duration)")
