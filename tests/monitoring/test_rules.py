"""The rule files under monitoring/rules: promtool checks them, promtool's unit tests fire
and keep quiet every alert (tests/support/alert_cases.py), every alert says how bad, what
and what to check first, and the faster-clock copies still load.

promtool comes from Debian's prometheus package, which scripts/install.sh unpacks into the
venv; without it these tests fail with the message saying how to get it (never skipped).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from support.alert_cases import CASES, RULES, alert_rules, coverage, promtool_tests

from monitoring.alerts import TemplateError, render
from monitoring.rules import duration_s, rule_files, scaled_rule_files
from monitoring.tools import find_tool


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_tool("promtool")), *args], capture_output=True, text=True, timeout=120
    )


def test_the_rule_files_are_the_ones_listed() -> None:
    assert [p.name for p in rule_files()] == sorted(CASES)


def test_promtool_checks_every_rule_file() -> None:
    proc = promtool("check", "rules", *map(str, rule_files()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(rule_files())


def test_promtool_fires_and_quiets_every_alert(tmp_path: Path) -> None:
    files = []
    for name, cases in CASES.items():
        path = tmp_path / f"{Path(name).stem}_test.yml"
        path.write_text(yaml.safe_dump(promtool_tests(RULES / name, cases), sort_keys=False))
        files.append(str(path))
    proc = promtool("test", "rules", *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(files), proc.stdout


def test_every_alert_rule_has_a_firing_and_a_quiet_case() -> None:
    cov = coverage()
    missing = [
        f"{file}: {alert} [{sev}] {kind}"
        for (file, alert, sev), counts in cov.items()
        for kind in ("firing", "quiet")
        if counts[kind] == 0
    ]
    assert not missing, "alert rules without a case:\n" + "\n".join(missing)
    assert len(cov) >= 30  # the rules the docs list (docs/monitoring.md counts them)


def test_every_alert_says_how_bad_what_and_what_to_check_first() -> None:
    for path in rule_files():
        for rule in alert_rules(path):
            where = f"{path.name}: {rule['alert']}"
            assert rule["alert"].startswith("Lumstream"), where
            assert rule["labels"]["severity"] in ("warning", "critical"), where
            assert rule["labels"]["component"] in (
                "ingest",
                "backbone",
                "ranker",
                "serving",
                "process",
            ), where
            assert set(rule["annotations"]) == {"summary", "description"}, where
            assert "Check first" in rule["annotations"]["description"], where
            assert "for" in rule, f"{where}: say how long (for: 0m when at once)"


def test_annotation_templates_use_only_what_the_renderer_knows() -> None:
    """fired_alerts renders the annotations of resolved alerts itself."""
    for path in rule_files():
        for rule in alert_rules(path):
            for key, template in rule["annotations"].items():
                try:
                    out = render(template, {"instance": "x", "feature": "f", "role": "r"}, 1.5)
                except TemplateError as exc:
                    pytest.fail(f"{path.name}: {rule['alert']} {key}: {exc}")
                assert "{{" not in out


def test_critical_and_warning_of_one_alert_share_the_expression_shape() -> None:
    """A critical rule is its warning with a stricter threshold (the inhibition in
    Alertmanager relies on both having the same labels)."""
    for path in rule_files():
        by_name: dict[str, list[dict[str, object]]] = {}
        for rule in alert_rules(path):
            by_name.setdefault(rule["alert"], []).append(rule)
        for name, rules in by_name.items():
            shapes = {re.sub(r"[0-9.]+(\s*\*\s*[0-9.]+)?", "N", str(r["expr"])) for r in rules}
            if len(rules) == 2 and not name.endswith("BudgetBurn"):
                assert len(shapes) == 1, f"{path.name}: {name}: {shapes}"


def test_scaled_rules_divide_every_duration_and_still_load(tmp_path: Path) -> None:
    scaled = scaled_rule_files(rule_files(), 120, tmp_path, min_range_s=2.0)
    proc = promtool("check", "rules", *map(str, scaled))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    original = {
        r["alert"] + r["labels"]["severity"]: r for p in rule_files() for r in alert_rules(p)
    }
    for path in scaled:
        for rule in alert_rules(path):
            before = original[rule["alert"] + rule["labels"]["severity"]]
            assert duration_s(rule["for"]) == pytest.approx(duration_s(before["for"]) / 120)

            def shape(expr: str) -> str:
                return re.sub(r"offset \w+", "offset", re.sub(r"\[[^\]]+\]", "[]", expr))

            assert shape(rule["expr"]) == shape(before["expr"])  # thresholds and all else kept
            for d in re.findall(r"\[([^\]:]+)\]", rule["expr"]):
                assert duration_s(d) >= 2.0
