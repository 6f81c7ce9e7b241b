"""Data-parallel training: 2 gloo processes on CPU vs 1 process on the same global batches.

Each replica trains on its share of every global batch, with the global batch's candidates
and loss normaliser, so the replicas stay identical and the losses equal the one-process
run's up to float32 summation order (tolerance: rtol 1e-4 on losses, atol 1e-5 on the
parameters after the run; observed ~1e-7).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support.backbone import make_pairs

from trainer.backbone.config import BackboneConfig
from trainer.backbone.train import train

CFGS = {
    loss: BackboneConfig(
        dim=16,
        heads=2,
        layers=2,
        max_len=12,  # longer users come in windows
        batch_users=8,
        epochs=2,
        dropout=0.0,
        lr=3e-3,
        loss=loss,
        sampled_negatives=16,
        logq_correction=True,
        any_condition_rate=0.3,
        validation=True,
        patience=5,
    )
    for loss in ("in_batch", "sampled", "full")
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: str, loss: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = train(CFGS[loss], make_pairs(n_users=30, seed=8))
        torch.save(
            {"losses": result.losses, "state": result.model.state_dict()}, f"{out}/rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(CFGS))
def test_two_processes_match_one_process(tmp_path: Path, loss: str) -> None:
    torch.set_num_threads(1)
    cfg = CFGS[loss]
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), loss), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    single = train(cfg, make_pairs(n_users=30, seed=8))
    assert r0["losses"] == r1["losses"]
    assert len(r0["losses"]) == len(single.losses) >= 2 * 4  # windows: more than 30 users
    for name, p in r0["state"].items():
        torch.testing.assert_close(r1["state"][name], p, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(
        torch.tensor(r0["losses"]), torch.tensor(single.losses), rtol=1e-4, atol=0
    )
    d = cfg.dim
    for name, p in single.model.state_dict().items():
        mine = r0["state"][name]
        if name.endswith("qkv.bias"):
            # the key bias has a zero true gradient (softmax ignores it); Adam turns its
            # round-off gradients into lr-sized steps, so only the q and v parts compare
            mine, p = torch.cat([mine[:d], mine[2 * d :]]), torch.cat([p[:d], p[2 * d :]])
        torch.testing.assert_close(mine, p, rtol=0, atol=1e-5, msg=name)
