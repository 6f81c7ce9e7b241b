"""``lumstream demo`` end to end (what ``make demo`` runs), shortened: the embedded broker,
a history replayed from a log, the stream worker, backbone v1 trained on the history, live
traffic with incremental vector passes, and the two live rankers.

The run must exit 0, publish backbone v1 and its vectors, and both rankers must have
learned every sample the worker delivered to lum.samples (no sample lost or learned twice
on the way), with the LUM ranker using v1's vectors for the live batches and publishing
a ranker version; incremental passes must keep the live samples' vectors fresher than
v1's full pass alone would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO

pytestmark = pytest.mark.slow

DELIVERED = re.compile(r"^  samples\s+([\d,]+) delivered to lum\.samples", re.M)
AGE_ROW = re.compile(r"^    (incremental|v1's full pass only)\s+p50\s+([\d,]+) s", re.M)
RANKER_ROW = re.compile(r"^    (without LUM|with LUM)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)", re.M)


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def test_demo_streams_refreshes_the_backbone_and_trains_both_rankers_live(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUMSTREAM_")}
    cmd = [sys.executable, "-m", "lumstream.cli", "--set", f"paths.data_dir={tmp_path}"]
    cmd += ["--set", "metrics.enabled=false", "demo", "--duration", "8", "--rate", "4000"]
    cmd += ["--history", "30000", "--incremental-every", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    out = proc.stdout
    assert proc.returncode == 0, f"{out[-4000:]}\n{proc.stderr[-4000:]}"
    assert "published   v1" in out
    assert re.search(r"^  vectors\s+[1-9][\d,]* users x 8 conditions", out, re.M), out
    (delivered,) = DELIVERED.findall(out)
    rows = RANKER_ROW.findall(out)
    all_samples = {name: _int(n) for name, n, _, _ in rows[:2]}
    assert all_samples == {"without LUM": _int(delivered), "with LUM": _int(delivered)}
    assert _int(delivered) > 0
    assert "after the vectors of v1 arrived" in out, out  # the LUM ranker used v1
    assert len(rows) == 4  # both rankers, over all samples and after v1
    for name, _, auc, _ in rows[2:]:  # by then both have learned something (measured ~0.57)
        assert float(auc) > 0.52, (name, out)
    assert "published ranker version r" in out
    assert re.search(r"^history\s+[\d,]+ events .* replayed into lum\.events", out, re.M), out
    ages = dict(AGE_ROW.findall(out))
    assert set(ages) == {"incremental", "v1's full pass only"}, out
    assert float(ages["incremental"].replace(",", "")) < float(
        ages["v1's full pass only"].replace(",", "")
    ), out
    assert (tmp_path / "demo" / "ranker" / "versions").is_dir()
