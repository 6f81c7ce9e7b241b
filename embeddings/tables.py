"""The ranker's sparse tables: TorchRec ``EmbeddingCollection`` (fused, sharded) and a plain
``nn.Embedding`` reference with the same inputs, outputs, initialisation and optimizer.

Features and tables (history items share the item table, so DIN's target attention compares
a candidate with its history in one space; history categories share the category table):

    user -> user    item, hist_item -> item    cond -> cond    cat, hist_cat -> cat

Both collections take one :class:`~torchrec.KeyedJaggedTensor` with those keys and return
``{feature: JaggedTensor}`` whose values are ``(n, dim)`` embeddings.

- **Fused**: an ``EmbeddingCollection`` on the meta device, fused row-wise Adagrad attached
  with ``apply_optimizer_in_backward`` (the update runs inside backward, in FBGEMM's TBE
  kernel), sharded by :func:`shard_model` with a plan from TorchRec's planner (table-wise or
  column-wise; row-wise fails on CPU with gloo) and wrapped in ``DistributedModelParallel``.
- **Plain**: ``nn.Embedding(sparse=True)`` per table and :class:`RowWiseAdagrad`, the same
  update written in torch (the reference the fused path is tested against, and the
  throughput baseline).

Initial rows are a counter-based normal of (seed, table, row, column): the same on every
rank and world size, and a re-admitted row gets its initial value back.
:class:`TableAccess` reaches the local shards of weights and optimizer state of either kind,
for row resets, sparse snapshots and export.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor
from torchrec.sparse.jagged_tensor import JaggedTensor

from embeddings.config import EmbeddingsConfig
from embeddings.ids import splitmix64

TABLES = ("user", "item", "cond", "cat")
FEATURES: dict[str, str] = {
    "user": "user",
    "item": "item",
    "cond": "cond",
    "cat": "cat",
    "hist_item": "item",
    "hist_cat": "cat",
}
FEATURE_ORDER = tuple(FEATURES)  # the KJT key order


def table_rows(cfg: EmbeddingsConfig) -> dict[str, int]:
    return {
        "user": cfg.user_rows,
        "item": cfg.item_rows,
        "cond": cfg.cond_rows,
        "cat": cfg.cat_rows,
    }


def table_configs(cfg: EmbeddingsConfig) -> list[EmbeddingConfig]:
    rows = table_rows(cfg)
    return [
        EmbeddingConfig(
            name=t,
            embedding_dim=cfg.dim,
            num_embeddings=rows[t],
            feature_names=[f for f, tt in FEATURES.items() if tt == t],
        )
        for t in TABLES
    ]


def init_rows(cfg: EmbeddingsConfig, table: str, rows: np.ndarray) -> torch.Tensor:
    """(len(rows), dim) initial values: N(0, init_std²) from a hash of (seed, table, row, col).

    Args:
        cfg: dim, init_std and seed.
        table: one of :data:`TABLES`.
        rows: row indices.
    """
    d = cfg.dim
    salt = splitmix64(np.array([cfg.seed * 8 + TABLES.index(table) + 1], np.uint64))
    ctr = np.asarray(rows, np.uint64)[:, None] * np.uint64(d) + np.arange(d, dtype=np.uint64)
    h = splitmix64(ctr ^ salt)
    u1 = ((h >> np.uint64(40)).astype(np.float64) + 0.5) / float(1 << 24)
    u2 = ((h & np.uint64(0xFFFFFF)).astype(np.float64) + 0.5) / float(1 << 24)
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return torch.from_numpy((z * cfg.init_std).astype(np.float32))


def fused_collection(cfg: EmbeddingsConfig) -> EmbeddingCollection:
    """An ``EmbeddingCollection`` on the meta device with fused row-wise Adagrad attached
    (materialised and initialised by :func:`shard_model`)."""
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    ec = EmbeddingCollection(tables=table_configs(cfg), device=torch.device("meta"))
    apply_optimizer_in_backward(
        RowWiseAdagrad, ec.parameters(), {"lr": cfg.sparse_lr, "eps": cfg.sparse_eps}
    )
    return ec


def shard_model(
    model: nn.Module, cfg: EmbeddingsConfig, device: torch.device | None = None
) -> nn.Module:
    """Shard ``model`` (whose sparse part is a :func:`fused_collection`) over the default
    process group: a plan from TorchRec's planner restricted to ``cfg.sharding_types`` and
    the fused kernel, then ``DistributedModelParallel`` (dense part data-parallel).

    Returns the ``DistributedModelParallel``; its tables are initialised with
    :func:`init_rows` (the same values whatever the world size).
    """
    import torch.distributed as dist
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import (
        EmbeddingShardingPlanner,
        ParameterConstraints,
        Topology,
    )

    device = device or torch.device("cpu")
    world = dist.get_world_size()
    constraints = {
        t: ParameterConstraints(sharding_types=list(cfg.sharding_types), compute_kernels=["fused"])
        for t in TABLES
    }
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device=device.type), constraints=constraints
    )
    sharders = [EmbeddingCollectionSharder()]
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)
    TableAccess(dmp, cfg).initialise()
    return dmp


class PlainEmbeddingCollection(nn.Module):
    """The reference: one ``nn.Embedding(sparse=True)`` per table, same API as the fused one.

    Args:
        cfg: table sizes, dim and initialisation.

    Example:
        >>> ec = PlainEmbeddingCollection(EmbeddingsConfig(user_rows=4, item_rows=4,
        ...     cond_rows=4, cat_rows=4, dim=2))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(list(FEATURE_ORDER),
        ...     torch.tensor([1, 2, 1, 3, 1]), torch.tensor([1, 1, 1, 1, 0, 1]))
        >>> ec(kjt)["hist_cat"].values().shape
        torch.Size([1, 2])
    """

    def __init__(self, cfg: EmbeddingsConfig) -> None:
        super().__init__()
        rows = table_rows(cfg)
        self.embeddings = nn.ModuleDict(
            {t: nn.Embedding(rows[t], cfg.dim, sparse=True) for t in TABLES}
        )
        with torch.no_grad():
            for t in TABLES:
                weight = self.embeddings[t].weight
                assert isinstance(weight, torch.Tensor)
                weight.copy_(init_rows(cfg, t, np.arange(rows[t])))

    def forward(self, kjt: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        out = {}
        for feature, jt in kjt.to_dict().items():
            emb = self.embeddings[FEATURES[feature]](jt.values())  # (n, D)
            out[feature] = JaggedTensor(values=emb, lengths=jt.lengths())
        return out


class RowWiseAdagrad(torch.optim.Optimizer):
    """FBGEMM's exact row-wise Adagrad in torch, for sparse gradients (the reference):
    ``m[r] += mean(g[r]²); w[r] -= lr * g[r] / (sqrt(m[r]) + eps)`` for the rows in the
    batch, duplicates summed first."""

    def __init__(self, params: Iterator[nn.Parameter], lr: float, eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum1" not in state:
                    state["momentum1"] = torch.zeros(p.shape[0], dtype=p.dtype)
                g = p.grad.coalesce()
                rows, vals = g.indices()[0], g.values()  # (n,), (n, D)
                m = state["momentum1"]
                m[rows] += vals.pow(2).mean(dim=1)
                p[rows] -= group["lr"] * vals / (m[rows].sqrt() + group["eps"])[:, None]


@dataclass
class Shard:
    """A local piece of a table: rows [row0, row0 + rows), columns [col0, col0 + cols).

    Args:
        weight: (rows, cols) view of the weights.
        momentum: (rows,) view of the row-wise Adagrad state (None before the first step of
            the plain optimizer).
    """

    table: str
    row0: int
    col0: int
    weight: torch.Tensor
    momentum: torch.Tensor | None


class TableAccess:
    """Local shards of the tables and their optimizer state, fused (DMP) or plain.

    Args:
        model: a ``DistributedModelParallel`` of a model with a fused collection, or a
            module holding a :class:`PlainEmbeddingCollection`.
        cfg: the table config (for initial values).
        optimizer: the plain path's :class:`RowWiseAdagrad` (its state is the momentum).
    """

    def __init__(
        self, model: nn.Module, cfg: EmbeddingsConfig, optimizer: RowWiseAdagrad | None = None
    ) -> None:
        self.model, self.cfg, self.optimizer = model, cfg, optimizer
        self.fused = hasattr(model, "fused_optimizer")
        self._cache: dict[str, list[Shard]] = {}  # fused shards are views into TBE buffers

    def _weight_key(self, table: str) -> str:
        for key in self.model.state_dict(keep_vars=True):
            if key.endswith(f"embeddings.{table}.weight"):
                return key
        raise KeyError(f"no table {table!r} in the model")

    def shards(self, table: str) -> list[Shard]:
        """The local shards of ``table`` (none on a rank that holds no part of it)."""
        if table in self._cache:
            return self._cache[table]
        key = self._weight_key(table)
        value = self.model.state_dict(keep_vars=True)[key]
        if not self.fused:
            param = value
            mom = self.optimizer.state.get(param, {}).get("momentum1") if self.optimizer else None
            return [Shard(table, 0, 0, param.data, mom)]
        fused_opt: Any = getattr(self.model, "fused_optimizer")  # noqa: B009
        opt_state = fused_opt.state_dict()["state"].get(key, {})
        moms = opt_state.get(f"{table}.momentum1")
        mom_shards = {}
        if moms is not None:
            for s in moms.local_shards():
                mom_shards[tuple(s.metadata.shard_offsets)] = s.tensor
        out = []
        for s in value.local_shards():
            r0, c0 = s.metadata.shard_offsets
            mom = mom_shards.get((r0,)) if c0 == 0 else None
            if mom is None and len(mom_shards) == 1:
                mom = next(iter(mom_shards.values()))
            out.append(Shard(table, r0, c0, s.tensor, mom))
        self._cache[table] = out
        return out

    def all_shards(self) -> list[Shard]:
        return [s for t in TABLES for s in self.shards(t)]

    @torch.no_grad()
    def reset_rows(self, table: str, rows: np.ndarray) -> None:
        """Give ``rows`` of ``table`` their initial values and zero optimizer state."""
        if len(rows) == 0:
            return
        values = init_rows(self.cfg, table, rows)
        for s in self.shards(table):
            n, d = s.weight.shape
            local = (rows >= s.row0) & (rows < s.row0 + n)
            if not local.any():
                continue
            idx = torch.from_numpy(rows[local] - s.row0)
            s.weight[idx] = values[torch.from_numpy(local)][:, s.col0 : s.col0 + d]
            if s.momentum is not None:
                s.momentum[idx] = 0.0

    @torch.no_grad()
    def initialise(self) -> None:
        """Every local row to its initial value, optimizer state to zero."""
        for s in self.all_shards():
            n, d = s.weight.shape
            full = init_rows(self.cfg, s.table, np.arange(s.row0, s.row0 + n))
            s.weight.copy_(full[:, s.col0 : s.col0 + d])
            if s.momentum is not None:
                s.momentum.zero_()

    def full_table(self, table: str) -> torch.Tensor | None:
        """The whole table gathered on rank 0 (None elsewhere); collective when fused."""
        key = self._weight_key(table)
        value = self.model.state_dict()[key]
        if not self.fused:
            return value.detach().clone()
        import torch.distributed as dist

        rank = dist.get_rank()
        out = torch.empty(value.size()) if rank == 0 else None
        value.gather(dst=0, out=out)
        return out
