"""One process vs two (gloo, tables sharded table-wise over both ranks): the same stream
gives the same progressive metrics and predictions, within float summation noise.

Tolerance: |ΔAUC|, |ΔGAUC|, |Δlog-loss| < 1e-4 and predictions within 1e-4 after ~15
steps (the ranks add the same gradients in another order; measured: max |Δp| 3e-6,
|ΔAUC| 7e-6, |Δlog-loss| 5e-7 on 1900 samples).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.paths import REPO, TESTS

from trainer.ranker.metrics import summary

CHILD = """
import dataclasses, json, os, sys
import numpy as np, torch, torch.distributed as dist
sys.path[:0] = [{repo!r}, {tests!r}]
from support.ranker import CFG, EMB, blocks, truth_vectors
from trainer.ranker.engine import RankerEngine
from trainer.ranker.loop import StreamingTrainer
from trainer.ranker.source import MemorySampleSource
torch.set_num_threads(1)
world = int(os.environ["WORLD_SIZE"])
if world > 1:
    dist.init_process_group("gloo")
rank = dist.get_rank() if world > 1 else 0
v = truth_vectors()
eng = RankerEngine(CFG, EMB, v.layout.dim, v.layout.capacity)
source = MemorySampleSource.of_blocks(blocks()[:30]) if rank == 0 else None
loop = StreamingTrainer(CFG, eng, source, vectors=v, keep_scores=True)
stats = loop.run()
if rank == 0:
    s = stats.scored
    keys = ("probs", "labels", "users")
    out = {{k: np.concatenate([getattr(x, k) for x in s]).tolist() for k in keys}}
    out["world"] = dist.get_world_size() if world > 1 else 1
    json.dump(out, open(sys.argv[1], "w"))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(world: int, out: Path) -> None:
    code = CHILD.format(repo=str(REPO), tests=str(TESTS))
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    for p in procs:
        output, _ = p.communicate(timeout=400)
        assert p.returncode == 0, output.decode()[-3000:]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path: Path) -> None:
    launch(1, tmp_path / "one.json")
    launch(2, tmp_path / "two.json")
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world"] == 2
    assert one["labels"] == two["labels"]
    assert one["users"] == two["users"]
    a, b = (np.array(x["probs"]) for x in (one, two))
    np.testing.assert_allclose(a, b, atol=1e-4)
    sa, sb = (
        summary(np.array(x["probs"]), np.array(x["labels"]), np.array(x["users"]))
        for x in (one, two)
    )
    for k in ("auc", "gauc", "logloss", "calibration"):
        assert abs(sa[k] - sb[k]) < 1e-4, (k, sa[k], sb[k])
