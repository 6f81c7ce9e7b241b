"""The Grafana dashboard (monitoring/grafana/lumstream.json) and its panels' queries."""

from __future__ import annotations

import json
from typing import Any

from support.paths import REPO

DASHBOARD = REPO / "monitoring" / "grafana" / "lumstream.json"
PROVISIONING = REPO / "monitoring" / "grafana" / "provisioning"


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panel_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r}", str(target["expr"])))
    return out
