"""SIGKILL a trainer subprocess (once inside a checkpoint write, once at a random moment),
restart it, and check that it learned every sample exactly once: the final model is
bit-identical to an uninterrupted run's and the sample count is the file's."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from support.paths import REPO, TESTS
from support.ranker import blocks

from streams.sinks.samples import write_sample_file

CHILD = """
import dataclasses, os, signal, sys
from pathlib import Path
import torch
sys.path[:0] = [{repo!r}, {tests!r}]
from support.ranker import CFG, EMB, truth_vectors
from trainer.ranker.checkpoint import Checkpointer
from trainer.ranker.engine import RankerEngine
from trainer.ranker.loop import StreamingTrainer
from trainer.ranker.source import SampleFileSource
torch.set_num_threads(1)
path, root, mode = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "die-in-checkpoint":
    renames = []
    real = os.rename
    def rename(a, b):
        if Path(b).name.startswith("ck-"):  # a checkpoint's publish
            renames.append(b)
            if len(renames) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        real(a, b)
    os.rename = rename
v = truth_vectors()
cfg = dataclasses.replace(CFG, checkpoint_every_batches=2, checkpoint_every_s=0, batch_size=64)
eng = RankerEngine(cfg, EMB, v.layout.dim, v.layout.capacity)
ck = Checkpointer(Path(root, "ck"))
loop = StreamingTrainer(cfg, eng, SampleFileSource(path), vectors=v, checkpointer=ck,
                        versions_dir=Path(root, "versions"))
loop.resume()
print("resumed at", eng.samples_learned, flush=True)
loop.run()
print("done", eng.samples_learned, flush=True)
"""


def child(path: Path, root: Path, mode: str = "run") -> subprocess.Popen[bytes]:
    code = CHILD.format(repo=str(REPO), tests=str(TESTS))
    return subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(root), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def finish(proc: subprocess.Popen[bytes]) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out.decode()


def newest(root: Path, pattern: str) -> Path:
    return max(root.glob(pattern), key=lambda p: int(p.name.split("-")[-1].lstrip("r")))


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_learns_each_sample_once(tmp_path: Path) -> None:
    bl = blocks()[:48]
    total = sum(len(b) for b in bl)
    data = tmp_path / "samples.bin"
    write_sample_file(data, bl)
    finish(child(data, tmp_path / "ref"))

    killed = tmp_path / "killed"
    proc = child(data, killed, "die-in-checkpoint")  # killed inside its 3rd checkpoint write
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert len(list((killed / "ck").glob("ck-*"))) >= 1
    proc = child(data, killed)
    deadline = time.monotonic() + 120
    first = sorted((killed / "ck").glob("ck-*"))
    while sorted((killed / "ck").glob("ck-*")) == first and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.4))
    proc.kill()  # SIGKILL at a random moment
    assert proc.wait() == -signal.SIGKILL  # it was still training
    out = finish(child(data, killed))
    assert "resumed at 0" not in out

    ref_ck, got_ck = newest(tmp_path / "ref" / "ck", "ck-*"), newest(killed / "ck", "ck-*")
    ref_meta = json.loads((ref_ck / "stream.json").read_text())
    got_meta = json.loads((got_ck / "stream.json").read_text())
    assert ref_meta["samples_learned"] == got_meta["samples_learned"] == total
    assert ref_meta["hwm"] == got_meta["hwm"]
    ref = load_file(str(newest(tmp_path / "ref" / "versions", "r*") / "model.safetensors"))
    got = load_file(str(newest(killed / "versions", "r*") / "model.safetensors"))
    assert ref.keys() == got.keys()
    for k in ref:
        assert (ref[k] == got[k]).all(), k
