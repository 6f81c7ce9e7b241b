"""The alert-template renderer against Go's formatting (promtool checks the rest, see
test_rules.py), and the local monitoring's configurations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitoring.alerts import TemplateError, go_value, humanize, humanize_duration, render
from monitoring.stack import MonitorPlan, alertmanager_config, prometheus_config


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2.0, "2"),
        (0.1, "0.1"),
        (100000.0, "100000"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (1e-5, "1e-05"),
        (-3.5, "-3.5"),
        (0.0, "0"),
    ],
)
def test_value_prints_as_go_prints_a_float(value: float, text: str) -> None:
    assert go_value(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (4.97, "4.97s"),
        (120, "2m 0s"),
        (4200, "1h 10m 0s"),
        (90061, "1d 1h 1m 1s"),
    ],
)
def test_humanize_duration(value: float, text: str) -> None:
    assert humanize_duration(value) == text


def test_humanize_and_percentages() -> None:
    assert humanize(1234.5) == "1.234k"
    assert humanize(0.012) == "12m"
    assert humanize(0) == "0"
    assert render("{{ $value | humanizePercentage }}", {}, 0.025) == "2.5%"
    assert render(
        '{{ printf "%.2f" $value }} at {{ $labels.instance }}', {"instance": "h:1"}, 1 / 3
    ) == ("0.33 at h:1")
    assert render("{{ $value }} waiting", {}, None) == "? waiting"
    with pytest.raises(TemplateError, match="unknown"):
        render("{{ $value | title }}", {}, 1.0)
    with pytest.raises(TemplateError, match="unknown"):
        render("{{ range $x }}", {}, 1.0)


def test_prometheus_and_alertmanager_configs(tmp_path: Path) -> None:
    plan = MonitorPlan(
        state_dir=tmp_path,
        discovery_dir=tmp_path / "run",
        targets=("127.0.0.1:9999",),
        rules=[Path("/r/a.yml")],
        scrape_interval_s=1.0,
        webhooks=("http://127.0.0.1:1/hook",),
    )
    prom = prometheus_config(plan, "127.0.0.1:9090", "127.0.0.1:9093")
    json.dumps(prom)  # JSON is YAML: the file Prometheus reads
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}  # type: ignore[union-attr]
    assert jobs["lumstream"]["file_sd_configs"][0]["files"] == [
        str((tmp_path / "run").resolve() / "*.json")
    ]
    assert jobs["lumstream"]["static_configs"] == [{"targets": ["127.0.0.1:9999"]}]
    assert set(jobs) == {"lumstream", "prometheus", "alertmanager"}
    assert prom["rule_files"] == ["/r/a.yml"]
    assert prom["global"]["scrape_interval"] == "1000ms"  # type: ignore[index]
    am = alertmanager_config(plan)
    assert am["receivers"] == [
        {
            "name": "lumstream",
            "webhook_configs": [{"url": "http://127.0.0.1:1/hook", "send_resolved": True}],
        }
    ]
    inhibit = am["inhibit_rules"][0]  # type: ignore[index]
    assert inhibit["equal"] == ["alertname", "instance"]
    no_am = prometheus_config(MonitorPlan(state_dir=tmp_path), "127.0.0.1:9090", None)
    assert "alerting" not in no_am
    assert [j["job_name"] for j in no_am["scrape_configs"]] == ["prometheus"]  # type: ignore[union-attr]
