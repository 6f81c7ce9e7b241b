"""Every series a rule or a dashboard panel names exists: a metric of monitoring/metrics.py
that the code really updates (or, for the ranking service to come, one of an explicit list
defined ahead of it), a recording rule of monitoring/rules, or one of Prometheus' own. And
the dashboard: one row per stage under drift and alerts, every panel a valid query."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry
from support.dashboard import PROVISIONING, dashboard, panel_exprs
from support.paths import REPO

from monitoring.metrics import Lazy, Metrics
from monitoring.rules import rule_files
from monitoring.tools import find_tool

CODE = ("core", "streams", "trainer", "embeddings", "serving", "lumstream", "monitoring")

# Metrics that rules or panels may use before any code updates them (none now: the ranking
# service, issue 12, updates every serving_* metric).
NOT_YET_UPDATED: set[str] = set()
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def metric_samples() -> dict[str, str]:
    """Sample name (``x_total``, ``x_bucket``, ...) -> the Metrics attribute it belongs to."""
    m = Metrics(CollectorRegistry())
    by_family = {}
    for attr, value in vars(m).items():
        if isinstance(value, Lazy):
            value = value.metric  # registered at first use: register them all here
        name = getattr(value, "_name", None) or getattr(value, "name", None)
        if isinstance(name, str):
            by_family[name] = attr
    out: dict[str, str] = {}
    for family in m.registry.collect():
        attr = by_family.get(family.name)
        if attr is None:
            continue
        suffixes = {
            "counter": ("_total",),
            "gauge": ("",),
            "histogram": ("_bucket", "_count", "_sum"),
        }[family.type]
        for s in suffixes:
            out[family.name + s] = attr
    return out


def rule_exprs() -> list[tuple[str, str]]:
    out = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append(
                    (f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"])
                )
    return out


def recording_rules() -> set[str]:
    return {
        r["record"]
        for path in rule_files()
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        if "record" in r
    }


def names_in(expr: str) -> set[str]:
    """Series names an expression selects (functions, keywords and label names left out)."""
    text = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\boffset\s+[0-9a-z]+", "", text)
    text = re.sub(r'"[^"]*"', '""', text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    found = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        name, end = m.group(0), m.end()
        rest = text[end:].lstrip()
        if rest.startswith("("):
            continue  # a function or aggregation
        if name in ("and", "or", "unless", "bool", "offset", "inf", "nan"):
            continue
        found.add(name)
    return found


def test_every_series_a_rule_or_panel_names_exists() -> None:
    samples = metric_samples()
    records = recording_rules()
    unknown = []
    for where, expr in rule_exprs() + panel_exprs():
        for name in names_in(expr.replace("$__rate_interval", "1m")):
            if name.startswith("lumstream_") and name in samples:
                continue
            if name.startswith("lumstream:") and name in records:
                continue
            if name in PROMETHEUS_OWN:
                continue
            unknown.append(f"{where}: {name}")
    assert not unknown, "series no code exports and no rule records:\n" + "\n".join(unknown)


def _updated_attrs() -> set[str]:
    """Metrics attributes the code touches (``metrics.attr.set(...)``, or passes on)
    outside their definition."""
    text = ""
    for pkg in CODE:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if path != REPO / "monitoring" / "metrics.py":
                text += path.read_text()
    return set(re.findall(r"\.([a-z_][a-z0-9_]*)(?=\s*[.(,)])", text))


def test_every_metric_the_rules_and_panels_use_is_updated_by_the_code() -> None:
    samples = metric_samples()
    used = {
        samples[name]
        for _, expr in rule_exprs() + panel_exprs()
        for name in names_in(expr.replace("$__rate_interval", "1m"))
        if name in samples
    }
    touched = _updated_attrs()
    stale = sorted(a for a in used - NOT_YET_UPDATED if a not in touched)
    assert not stale, f"rules or panels use metrics nothing updates: {stale}"
    # the exception list is exact: serving metrics, each still untouched and each used
    assert all(a.startswith("serving_") for a in NOT_YET_UPDATED)
    assert not (NOT_YET_UPDATED & touched), "updated now: drop from NOT_YET_UPDATED"
    assert used >= NOT_YET_UPDATED, NOT_YET_UPDATED - used


def test_the_name_finder_finds_what_it_should() -> None:
    expr = (
        'sum by (instance) (rate(lumstream_x_total{stage="w"}[5m])) / on (instance) '
        "max by (instance) (lumstream:y:ratio offset 30m > 0) and up == 0"
    )
    assert names_in(expr) == {"lumstream_x_total", "lumstream:y:ratio", "up"}


def test_the_dashboard_has_drift_and_alerts_on_top_then_a_row_per_stage() -> None:
    dash = dashboard()
    panels = dash["panels"]
    assert isinstance(panels, list)
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["Alerts and drift", "Ingest", "Store", "Backbone", "Ranker", "Serving"]
    uid = yaml.safe_load((PROVISIONING / "datasources" / "lumstream.yml").read_text())
    ds_uid = uid["datasources"][0]["uid"]
    ys = [p["gridPos"]["y"] for p in panels]
    assert ys == sorted(ys), "panels in reading order"
    for p in panels:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == ds_uid, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == ds_uid
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "lumstream.yml").read_text())
    assert provider["providers"][0]["type"] == "file"


def test_every_panel_query_parses(tmp_path: Path) -> None:
    """promtool checks each panel's query as a recording rule (the integration test also
    runs them against a live Prometheus)."""
    rules = [
        {"record": f"lumstream:panel_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, (_, expr) in enumerate(panel_exprs())
    ]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    proc = subprocess.run(
        [str(find_tool("promtool")), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_alerts_are_in_the_dashboard_and_rules_in_deploy() -> None:
    exprs = " ".join(e for _, e in panel_exprs())
    assert "ALERTS{" in exprs
    deploy = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    assert deploy["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "../monitoring/rules:/etc/prometheus/rules:ro" in mounts
