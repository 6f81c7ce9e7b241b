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
