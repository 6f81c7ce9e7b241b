"""Training loop of the backbone (step 1): the same code for 1 or N processes.

When ``torch.distributed`` is initialised (gloo on CPU, nccl on GPU) the model is wrapped in
DDP and each global batch of ``cfg.batch_users`` users is split across the replicas
(rank r takes users r, r + world, ...). Every replica knows the whole global batch, so the
InfoNCE candidates are the global batch's distinct targets on every replica and the loss is
normalised by the global target count: averaging the replicas' gradients gives exactly the
gradient of the one-process run on the same global batch.

Example:
    >>> from trainer.backbone.data import MemorySequences
    >>> result = train(BackboneConfig(dim=8, heads=1, layers=1, epochs=1), MemorySequences({}))
    ... # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from monitoring.metrics import Metrics
from streams.config import EventConfig
from trainer.backbone.config import BackboneConfig
from trainer.backbone.data import Pairs, SequenceSource, action_indices, prepare
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.loss import NegativeSampler, candidate_rows, info_nce
from trainer.backbone.packing import collate_packed, collate_padded
from trainer.backbone.tokens import TokenBatch, UserTokens, Vocabs
from trainer.backbone.versions import load_model

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Args:
        model: the trained backbone (unwrapped, eval mode).
        steps: optimiser steps taken.
        tokens: real tokens trained on (global).
        seconds: wall time of the training loop.
        losses: loss of every step.
        watermark: newest event time of the training data (ms).
        users: users trained on.
        skipped: sequences skipped, by reason.
    """

    model: LumBackbone
    steps: int
    tokens: int
    seconds: float
    losses: list[float]
    watermark: int
    users: int
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


ARCHITECTURE = (
    "objective",
    "condition_fields",
    "max_len",
    "gap_buckets",
    "feature_dim",
    "dim",
    "layers",
    "heads",
    "attention",
    "ffn_mult",
)


def build_model(cfg: BackboneConfig, pairs: Pairs, init_from: LumBackbone | None) -> LumBackbone:
    """A fresh model on the vocabs of ``pairs``, or one warm-started from ``init_from``
    (its vocabs extended, its weights copied; new ids get fresh rows).

    Raises:
        ValueError: ``init_from`` has another architecture (retrain instead).
    """
    if init_from is not None:
        changed = [f for f in ARCHITECTURE if getattr(cfg, f) != getattr(init_from.cfg, f)]
        if changed:
            raise ValueError(
                f"warm start: backbone.{changed[0]} is {getattr(cfg, changed[0])!r} but "
                f"{getattr(init_from.cfg, changed[0])!r} in the version; retrain instead"
            )
    torch.manual_seed(cfg.seed)
    seqs = [s for _, s in pairs]
    base = init_from.vocabs if init_from is not None else None
    model = LumBackbone(cfg, Vocabs.build(seqs, cfg, base=base))
    if init_from is not None:
        model.copy_rows_from(init_from)
    return model


def global_batches(n_users: int, batch_users: int, epoch: int, seed: int) -> list[np.ndarray]:
    """The epoch's batches of user indices (same on every replica: seeded by epoch)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_users)
    return [perm[i : i + batch_users] for i in range(0, n_users, batch_users)]


def step_loss(
    model: torch.nn.Module,
    batch: TokenBatch,
    candidates: torch.Tensor,
    cfg: BackboneConfig,
    normaliser: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of one (local) batch against the global candidates."""
    out, cand_emb = model(batch, candidates)  # (B, T, D), (C, D)
    has = batch.target > 0
    return info_nce(
        out[has], batch.target[has], candidates, cand_emb, cfg.temperature, log_q, normaliser
    )


def train(
    cfg: BackboneConfig,
    source: SequenceSource | Pairs,
    *,
    init_from: LumBackbone | str | Path | None = None,
    events: EventConfig | None = None,
    device: torch.device | str = "cpu",
    metrics: Metrics | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Pre-train (or, with ``init_from``, fine-tune) the backbone on ``source``.

    Args:
        cfg: the backbone config (model, loss, batch, epochs).
        source: a :class:`SequenceSource` (filtered by ``cfg.sequence_actions``, users with
            fewer than 2 events skipped and counted) or already prepared pairs.
        init_from: a backbone or a published version directory to warm-start from.
        events: the event contract (action names); default ``EventConfig()``.
        device: where to train.
        metrics: training loss, tokens and tokens/s, skipped sequences.
        on_step: called with (step, loss) after every step (progress display).
    """
    rank, world = _world()
    if isinstance(init_from, str | Path):
        init_from = load_model(Path(init_from))
    skipped: dict[str, int] = {}
    if isinstance(source, list):
        pairs = source
        watermark = max((int(s["ts"].max()) for _, s in pairs if len(s)), default=0)
    else:
        acts = action_indices(cfg.sequence_actions, events or EventConfig())
        pairs, counts = prepare(source, acts, metrics=metrics)
        skipped = dict(counts)
        watermark = source.watermark()
    model = build_model(cfg, pairs, init_from).to(device)
    tokens: list[UserTokens] = [model.tokenizer.encode(s) for _, s in pairs]
    sampler = None
    if cfg.sampled_negatives or cfg.logq_correction:
        item_counts = np.concatenate([[0], model.vocabs.items.counts])
        sampler = NegativeSampler(item_counts, cfg.negative_alpha, cfg.seed)
    net: torch.nn.Module = model
    if dist.is_available() and dist.is_initialized():
        dev = torch.device(device)
        net = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    collate = collate_packed if cfg.packing else collate_padded
    losses: list[float] = []
    n_tokens, step = 0, 0
    net.train()
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        for users in global_batches(len(tokens), cfg.batch_users, epoch, cfg.seed):
            if len(users) < world:
                continue  # every replica needs a share of the step
            targets = torch.from_numpy(np.concatenate([tokens[i].target for i in users]))
            sampled = (
                sampler.sample(cfg.sampled_negatives) if sampler and cfg.sampled_negatives else None
            )
            cand = candidate_rows(targets, sampled)
            log_q = sampler.log_q(cand).to(device) if sampler and cfg.logq_correction else None
            n_targets = int((targets > 0).sum())
            with record_function("backbone.collate"):
                batch = collate([tokens[i] for i in users[rank::world]]).to(device)
            with record_function("backbone.step"):
                norm = max(n_targets, 1) / world
                loss = step_loss(net, batch, cand.to(device), cfg, norm, log_q)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            step_tokens = sum(len(tokens[i]) for i in users)
            n_tokens += step_tokens
            value = _global_loss(loss.detach(), world)
            losses.append(value)
            step += 1
            if metrics is not None:
                metrics.backbone_train_loss.set(value)
                metrics.backbone_train_tokens.inc(step_tokens)
            if on_step is not None:
                on_step(step, value)
            if cfg.max_steps and step >= cfg.max_steps:
                break
        if cfg.max_steps and step >= cfg.max_steps:
            break
    seconds = time.perf_counter() - start
    model.eval()
    result = TrainResult(model, step, n_tokens, seconds, losses, watermark, len(pairs), skipped)
    if metrics is not None:
        metrics.backbone_tokens_per_second.set(result.tokens_per_s)
    log.info(
        "backbone: %d steps, %d users, %.0f tokens/s, last loss %.4f",
        step,
        len(pairs),
        result.tokens_per_s,
        losses[-1] if losses else float("nan"),
    )
    return result


def _global_loss(local: torch.Tensor, world: int) -> float:
    """The global batch's mean loss: the replicas' shares (each scaled by world) summed."""
    if world == 1:
        return float(local)
    total = local.clone()
    dist.all_reduce(total)
    return float(total) / world
