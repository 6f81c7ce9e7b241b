"""``lumstream monitor``: a real Prometheus finds a process through its discovery file,
scrapes it, loads the rules, and both children stop with the command on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.paths import REPO

from monitoring.alerts import api
from monitoring.config import MetricsConfig
from monitoring.metrics import Metrics
from monitoring.rules import rule_files
from monitoring.server import metrics_endpoint
from monitoring.stack import ready

pytestmark = pytest.mark.slow


def _wait(what: str, check: object, timeout_s: float = 30.0) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()  # type: ignore[operator]
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_monitor_scrapes_discovered_processes_with_the_rules_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.ranker_score_psi.set(0.05)
    discovery = tmp_path / "run" / "metrics"
    cmd = [sys.executable, "-m", "lumstream.cli", "--set", f"paths.data_dir={tmp_path}"]
    cmd += ["monitor", "--scrape-interval", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with metrics_endpoint(
        MetricsConfig(), metrics.registry, role="trainer", discovery_dir=discovery
    ):
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            run_file = tmp_path / "run" / "monitor.json"
            urls = _wait(
                "the run file", lambda: run_file.is_file() and json.loads(run_file.read_text())
            )
            assert isinstance(urls, dict)
            prom, am = urls["prometheus"], urls["alertmanager"]
            rules = api(prom, "/api/v1/rules")["groups"]
            assert {Path(g["file"]).name for g in rules} == {p.name for p in rule_files()}

            def scraped() -> bool:
                got = api(prom, "/api/v1/query", {"query": "lumstream_ranker_score_psi"})["result"]
                return bool(got) and got[0]["metric"].get("role") == "trainer"

            _wait("the trainer's PSI through Prometheus", scraped)
            targets = api(prom, "/api/v1/targets")["activeTargets"]
            jobs = {t["labels"]["job"]: t["health"] for t in targets}
            assert jobs.get("lumstream") == "up", jobs
            assert ready(am)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert "prometheus    http://" in out
    assert "trainer" in out  # the process found at start is listed
    assert out.rstrip().endswith("stopped")
    assert not run_file.exists()
    assert not ready(prom)
    assert not ready(am)  # both children stopped with the command


def test_monitor_without_prometheus_says_how_to_get_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LUMSTREAM_PROMETHEUS_HOME"}
    env.update(PYTHONPATH=str(REPO), LUMSTREAM_PROMETHEUS_HOME=str(tmp_path / "nothing"))
    proc = subprocess.run(
        [sys.executable, "-m", "lumstream.cli", "--set", f"paths.data_dir={tmp_path}", "monitor"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "scripts/install.sh" in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line, no traceback
