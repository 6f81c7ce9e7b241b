"""embeddings.tables: TorchRec fused sharded tables against the plain nn.Embedding reference
(same initial rows, same outputs, same row-wise Adagrad updates), row resets, snapshots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from embeddings.config import EmbeddingsConfig
from embeddings.ids import IdMapper
from embeddings.snapshot import SparseSnapshot
from embeddings.tables import (
    FEATURE_ORDER,
    TABLES,
    PlainEmbeddingCollection,
    RowWiseAdagrad,
    TableAccess,
    fused_collection,
    init_rows,
    shard_model,
)
from trainer.ranker.distributed import ensure_process_group

CFG = EmbeddingsConfig(dim=4, user_rows=10, item_rows=12, cond_rows=5, cat_rows=6, sparse_lr=0.1)


class Tiny(nn.Module):
    """Sum of every feature's embeddings per sample -> a scalar."""

    def __init__(self, sparse: nn.Module) -> None:
        super().__init__()
        self.sparse = sparse
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.head = nn.Linear(len(FEATURE_ORDER) * CFG.dim, 1)

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        out = self.sparse(kjt)
        pooled = []
        for f in FEATURE_ORDER:
            jt = out[f]
            seg = torch.repeat_interleave(torch.arange(len(jt.lengths())), jt.lengths())
            pooled.append(torch.zeros(len(jt.lengths()), CFG.dim).index_add(0, seg, jt.values()))
        return self.head(torch.cat(pooled, 1)).squeeze(-1)  # (B,)


def kjt(rng: np.random.Generator, b: int) -> KeyedJaggedTensor:
    rows = {"user": 10, "item": 12, "cond": 5, "cat": 6, "hist_item": 12, "hist_cat": 6}
    lengths, values = [], []
    hist = rng.integers(0, 4, b)
    for f in FEATURE_ORDER:
        n = hist if f.startswith("hist") else np.ones(b, np.int64)
        lengths.append(n)
        values.append(rng.integers(0, rows[f], int(n.sum())))
    return KeyedJaggedTensor(
        keys=list(FEATURE_ORDER),
        values=torch.from_numpy(np.concatenate(values)),
        lengths=torch.from_numpy(np.concatenate(lengths)),
    )


@pytest.fixture(scope="module")
def pair() -> tuple[nn.Module, nn.Module, RowWiseAdagrad]:
    torch.set_num_threads(1)
    ensure_process_group()
    fused = shard_model(Tiny(fused_collection(CFG)), CFG)
    plain = Tiny(PlainEmbeddingCollection(CFG))
    opt = RowWiseAdagrad(plain.sparse.parameters(), CFG.sparse_lr, CFG.sparse_eps)
    return fused, plain, opt


def test_initial_rows_are_deterministic_and_per_row() -> None:
    a = init_rows(CFG, "item", np.array([3, 7]))
    b = init_rows(CFG, "item", np.arange(12))
    assert torch.equal(a, b[[3, 7]])
    assert not torch.equal(init_rows(CFG, "user", np.array([3])), a[:1])
    assert abs(float(init_rows(CFG, "item", np.arange(5000)).std()) - CFG.init_std) < 0.005


def test_fused_sharded_tables_match_the_plain_reference(pair) -> None:
    fused, plain, opt = pair
    fused_head = dict(fused.named_parameters())["head.weight"]
    dense_fused = torch.optim.SGD([p for n, p in fused.named_parameters() if "head" in n], lr=0.1)
    dense_plain = torch.optim.SGD(plain.head.parameters(), lr=0.1)
    rng = np.random.default_rng(1)
    for _ in range(5):
        batch = kjt(rng, 8)
        out_f, out_p = fused(batch), plain(batch)
        torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-6)
        for out, dense in ((out_f, dense_fused), (out_p, dense_plain)):
            out.pow(2).mean().backward()
            dense.step()
            dense.zero_grad()
        opt.step()
        opt.zero_grad()
    access_f, access_p = TableAccess(fused, CFG), TableAccess(plain, CFG, opt)
    for t in TABLES:
        torch.testing.assert_close(
            access_f.full_table(t), access_p.full_table(t), rtol=1e-5, atol=1e-6
        )
        (sf,), (sp,) = access_f.shards(t), access_p.shards(t)
        torch.testing.assert_close(sf.momentum, sp.momentum, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fused_head, plain.head.weight)


def test_reset_rows_restores_initial_values_and_zero_state(pair) -> None:
    fused, _, _ = pair
    access = TableAccess(fused, CFG)
    (shard,) = access.shards("item")
    with torch.no_grad():
        shard.weight[2:5] += 1.0
        shard.momentum[2:5] = 3.0
    access.reset_rows("item", np.array([2, 4]))
    torch.testing.assert_close(shard.weight[[2, 4]], init_rows(CFG, "item", np.array([2, 4])))
    assert shard.momentum[[2, 4]].tolist() == [0.0, 0.0]
    assert float(shard.momentum[3]) == 3.0


def test_snapshot_restores_sparse_state_and_leaves_dense_alone(pair) -> None:
    fused, _, _ = pair
    access = TableAccess(fused, CFG)
    mappers = {"item": IdMapper(12, 1)}
    mappers["item"].map(np.array([100]), np.array([1]))
    snap = SparseSnapshot.capture(access, mappers)
    head = dict(fused.named_parameters())["head.weight"]
    before = {t: access.full_table(t).clone() for t in TABLES}
    with torch.no_grad():
        head += 1.0
        dense_after = head.detach().clone()
    fused(kjt(np.random.default_rng(2), 4)).sum().backward()  # fused update of the tables
    mappers["item"].map(np.array([200, 300]), np.array([2, 2]))
    assert any(not torch.equal(before[t], access.full_table(t)) for t in TABLES)
    snap.restore(access, mappers)
    for t in TABLES:
        assert torch.equal(before[t], access.full_table(t))
    assert mappers["item"].used == 1
    assert torch.equal(head.detach(), dense_after)
    assert snap.nbytes > 0
