"""``lumstream demo --quick`` end to end (what ``make demo`` runs, shortened): the embedded
broker, a replayed history, the worker, the backbone refresh, two trainers and two ranking
services as separate processes, Prometheus with the rules, and simulated users in a
closed loop whose tastes shift half-way.

The run must exit 0 with every child stopping cleanly; every arm must have served
requests (at most 1% overload answers); the services' clicks must flow back (events accepted, none
rejected); the click -> served-history probes must find their clicks; the drift alert
must fire after the shift; the LUM arm's served vectors must be no older than v1's full
pass alone would have served them; the report must be written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO

pytestmark = pytest.mark.slow

ARM_ROW = re.compile(
    r"^  (lum|no_lum|popularity)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)", re.M
)


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def test_demo_runs_the_closed_loop_with_arms_alerts_and_a_report(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUMSTREAM_")}
    cmd = [sys.executable, "-m", "lumstream.cli", "--set", f"paths.data_dir={tmp_path}"]
    cmd += ["demo", "--quick"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, f"{out[-6000:]}\n{proc.stderr[-4000:]}"
    rows = {name: [_int(x) for x in rest] for name, *rest in ARM_ROW.findall(out)}
    assert set(rows) == {"lum", "no_lum", "popularity"}, out
    for name, (requests, errors, impressions, clicks) in rows.items():
        assert requests > 0, (name, out)
        assert errors <= 0.01 * requests, (name, out)  # only overload answers (503/504)
        assert impressions > 0, (name, out)
        assert clicks > 0, (name, out)
    assert re.search(r"events\s+[1-9][\d,]* posted to POST /v1/events, 0 rejected", out), out
    assert "click posted -> in that user's served history" in out, out
    ages = re.search(
        r"incremental p50 ([\d,]+) s, .*full pass alone would have given p50 ([\d,]+) s", out
    )
    assert ages is not None, out
    assert _int(ages[1]) <= _int(ages[2]), out  # incremental passes keep served vectors fresher
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert (tmp_path / "demo" / "report.png").stat().st_size > 10_000
    assert any("Drift" in a for a in report["alerts"]), out
