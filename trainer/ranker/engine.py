"""One training/scoring step of the ranker, the same code for 1 or N processes.

:class:`RankerEngine` owns the model (TorchRec fused + ``DistributedModelParallel``, or the
plain reference), the dense optimizer, the id mappers and the batch builder. Every rank is
given the same *global* batch; each maps all of it (so the mappers stay identical) and
trains on its contiguous share. The loss is the sum of per-sample log-losses divided by the
global batch size: TorchRec sums the sparse gradients of all ranks' samples (their lookups
meet on the rank owning the table), and DDP averages the dense ones, which the engine
multiplies back by the world size. So N processes take the same step as one process on the
whole batch, up to floating-point summation order.

Each step scores before it learns (progressive validation): :meth:`RankerEngine.step`
returns the predictions of the forward pass whose backward then updates the model.

Example:
    >>> eng = RankerEngine(RankerConfig(), EmbeddingsConfig(), lum_dim=8, lum_conditions=4)
    ... # doctest: +SKIP
    >>> scored = eng.step(samples, vectors)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from embeddings.config import EmbeddingsConfig
from embeddings.ids import NEW_ROW, IdMapper
from embeddings.tables import (
    TABLES,
    PlainEmbeddingCollection,
    RowWiseAdagrad,
    TableAccess,
    fused_collection,
    shard_model,
    table_rows,
)
from monitoring.metrics import Metrics
from trainer.ranker.batch import BatchBuilder, Mapped, Samples
from trainer.ranker.config import RankerConfig
from trainer.ranker.distributed import all_gather_array, any_rank, ensure_process_group, world
from trainer.ranker.model import RankerModel, model_inputs, weighted_bce
from trainer.vectors.lookup import VectorSource

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """Predictions of one global batch made before learning from it (every rank has all).

    Args:
        probs / labels / users / ts: (n,) per cleaned sample, in global batch order.
        partition / seq: the samples' ids.
        learned: whether the model learned from the batch.
        features: (n,) per feature the drift monitor follows (``condition``,
            ``history_length``, ``new_condition``, ``unknown_user``, ``unknown_item`` and,
            with LUM features, ``lum_user_missing``, ``lum_item_missing``;
            trainer/ranker/drift.py).
    """

    probs: np.ndarray
    labels: np.ndarray
    users: np.ndarray
    ts: np.ndarray
    partition: np.ndarray
    seq: np.ndarray
    learned: bool
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.probs)


def make_mappers(emb: EmbeddingsConfig) -> dict[str, IdMapper]:
    """One id mapper per table, salted differently."""
    rows = table_rows(emb)
    return {
        t: IdMapper(
            rows[t],
            emb.admit_count,
            int(emb.expire_after_s * 1000),
            emb.probes,
            emb.sketch_width,
            seed=emb.seed * 16 + i,
        )
        for i, t in enumerate(TABLES)
    }


def _zero_adam_state(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    """Adam's state as it is before the first step (step 0, zero moments), created up front
    so that every checkpoint, even one before any step, holds the same keys."""
    for p in params:
        opt.state[p] = {
            "step": torch.tensor(0.0),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }


class RankerEngine:
    """Model, optimizers, id mappers and batch building.

    Args:
        cfg: ranker settings.
        emb: table settings.
        lum_dim / lum_conditions: shape of the LUM inputs (the vectors' width and the
            condition layout's capacity).
        fused: TorchRec fused sharded tables (default) or the plain ``nn.Embedding`` reference
            (one process only).
        metrics: counters.
    """

    def __init__(
        self,
        cfg: RankerConfig,
        emb: EmbeddingsConfig,
        lum_dim: int,
        lum_conditions: int,
        *,
        fused: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg, self.emb, self.fused, self.metrics = cfg, emb, fused, metrics
        self.lum_dim, self.lum_conditions = lum_dim, lum_conditions
        self.mappers = make_mappers(emb)
        self.builder = BatchBuilder(cfg, self.mappers, lum_dim, lum_conditions, metrics)
        self.steps = 0
        self.samples_learned = 0
        self.sparse_opt: RowWiseAdagrad | None = None
        if fused:
            ensure_process_group()
            from torchrec.optim.keyed import KeyedOptimizerWrapper
            from torchrec.optim.optimizers import in_backward_optimizer_filter

            model = RankerModel(cfg, emb, fused_collection(emb), lum_dim, lum_conditions)
            self.net: torch.nn.Module = shard_model(model, emb)
            dense = dict(in_backward_optimizer_filter(self.net.named_parameters()))
            lr = cfg.dense_lr
            self.dense_opt: torch.optim.Optimizer = KeyedOptimizerWrapper(
                dense, lambda ps: torch.optim.Adam(ps, lr=lr)
            )
            self._dense_params = list(dense.values())
            _zero_adam_state(self.dense_opt, self._dense_params)  # checkpointable from step 0
            self.access = TableAccess(self.net, emb)
        else:
            model = RankerModel(cfg, emb, PlainEmbeddingCollection(emb), lum_dim, lum_conditions)
            self.net = model
            self._dense_params = list(model.dense_parameters())
            self.dense_opt = torch.optim.Adam(self._dense_params, lr=cfg.dense_lr)
            self.sparse_opt = RowWiseAdagrad(
                model.sparse.parameters(), emb.sparse_lr, emb.sparse_eps
            )
            self.access = TableAccess(model, emb, self.sparse_opt)
        self.rank, self.world = world() if fused else (0, 1)

    @property
    def model(self) -> RankerModel:
        """The unwrapped model (its ``sparse`` is sharded when fused)."""
        net = self.net
        while hasattr(net, "module") or hasattr(net, "_dmp_wrapped_module"):
            net = getattr(net, "_dmp_wrapped_module", None) or net.module  # type: ignore[assignment]
        assert isinstance(net, RankerModel)
        return net

    def step(self, samples: Samples, vectors: VectorSource | None, learn: bool = True) -> Scored:
        """Score the global batch ``samples``, then (with ``learn``) learn from it.

        Bad samples are dropped and counted by the builder; a batch whose forward pass gives
        a non-finite logit on any rank is scored but not learned from (counted, logged).
        """
        s = self.builder.clean(samples)
        mapped = self.builder.map(s, learn=learn)
        if learn:
            for table, rows in mapped.fresh.items():
                self.access.reset_rows(table, rows)
        batch = self.builder.local(mapped, self.rank, self.world, vectors)
        self.net.train(learn)
        with torch.profiler.record_function("ranker.forward"):
            if learn:  # the shown position is a training-only input (model.py)
                logits = self.net(*model_inputs(batch), batch.position)
            else:
                with torch.no_grad():
                    logits = self.net(*model_inputs(batch))
        bad = not bool(torch.isfinite(logits).all())
        learned = False
        if learn and len(s):
            if any_rank(bad):
                log.warning("ranker: non-finite logits in a batch of %d; not learning it", len(s))
                if self.metrics is not None:
                    self.metrics.ranker_samples_skipped.labels(reason="non_finite").inc(len(s))
            else:
                with torch.profiler.record_function("ranker.backward"):
                    self._learn(logits, batch, len(s))
                learned = True
                self.steps += 1
                self.samples_learned += len(s)
        keep = batch.weights.numpy() > 0
        probs = torch.sigmoid(logits.detach()).double().numpy()[keep]
        found = None
        if self.cfg.lum_direct and vectors is not None:  # the same on every rank
            local = batch.lum_user_found.numpy()[keep].astype(np.int64)
            local += 2 * batch.lum_item_found.numpy()[keep].astype(np.int64)
            found = all_gather_array(local)  # bit 0: user vector, bit 1: item vector
        return Scored(
            all_gather_array(probs),
            s.rows["label"].astype(np.float64),
            s.rows["user"].copy(),
            s.rows["ts"].copy(),
            s.partition.copy(),
            s.rows["seq"].copy(),
            learned,
            self._features(mapped, found),
        )

    def _features(self, m: Mapped, found: np.ndarray | None) -> dict[str, np.ndarray]:
        """What the drift monitor follows of a global batch (every rank maps all of it);
        ``found``: per sample, bit 0 a user vector and bit 1 an item vector was found."""
        s = m.samples
        owner = np.repeat(np.arange(len(s)), s.hist_lengths)
        same = s.hist["cond"] == s.rows["cond"][owner]
        seen = np.bincount(owner[same], minlength=len(s)) > 0
        out = {
            "condition": s.rows["cond"].copy(),
            "history_length": s.hist_lengths.copy(),
            "new_condition": ~seen,
            "unknown_user": m.rows["user"] == NEW_ROW,
            "unknown_item": m.rows["item"] == NEW_ROW,
        }
        if self.cfg.lum_direct:
            if found is None or len(found) != len(s):
                out["lum_user_missing"] = np.ones(len(s), bool)
                out["lum_item_missing"] = np.ones(len(s), bool)
            else:
                out["lum_user_missing"] = (found & 1) == 0
                out["lum_item_missing"] = (found & 2) == 0
        return out

    def _learn(self, logits: torch.Tensor, batch: object, global_count: int) -> None:
        loss, _ = weighted_bce(logits, batch, global_count)  # type: ignore[arg-type]
        loss.backward()  # the fused tables update here
        if self.world > 1:
            for p in self._dense_params:
                if p.grad is not None:
                    p.grad.mul_(self.world)  # DDP averaged; the loss is already global
        self.dense_opt.step()
        self.dense_opt.zero_grad(set_to_none=True)
        if self.sparse_opt is not None:
            self.sparse_opt.step()
            self.sparse_opt.zero_grad(set_to_none=True)
        if self.metrics is not None:
            self.metrics.ranker_loss.set(float(loss.detach()) * self.world)

    def score(self, samples: Samples, vectors: VectorSource | None) -> Scored:
        """Predictions only: no learning, no id admission, no state change."""
        return self.step(samples, vectors, learn=False)

    # -- checkpoint state ------------------------------------------------------------------
    def _fused_optimizer(self) -> Any:
        """DistributedModelParallel's fused (in-backward) sparse optimizer."""
        return getattr(self.net, "fused_optimizer")  # noqa: B009

    def state(self) -> dict[str, object]:
        """Everything a checkpoint holds for the model (DCP-loadable in place)."""
        if not self.fused:
            raise RuntimeError("checkpoints need the fused (TorchRec) path")
        return {
            "model": self.net.state_dict(),
            "dense_opt": self.dense_opt.state_dict(),
            "sparse_opt": self._fused_optimizer().state_dict(),
            "ids": {
                t: {k: torch.from_numpy(v) for k, v in m.state().items()}
                for t, m in self.mappers.items()
            },
            "counters": torch.tensor([self.steps, self.samples_learned], dtype=torch.int64),
        }

    def load_state(self, state: dict[str, object]) -> None:
        """Apply a :meth:`state` filled by ``torch.distributed.checkpoint.load``."""
        self.net.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.dense_opt.load_state_dict(state["dense_opt"])  # type: ignore[arg-type]
        self._fused_optimizer().load_state_dict(state["sparse_opt"])
        ids = state["ids"]
        assert isinstance(ids, dict)
        for t, m in self.mappers.items():
            m.load_state({k: v.numpy() for k, v in ids[t].items()})
        counters = state["counters"]
        assert isinstance(counters, torch.Tensor)
        self.steps, self.samples_learned = (int(x) for x in counters.tolist())
