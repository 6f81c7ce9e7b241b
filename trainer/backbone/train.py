"""Training loop of the backbone (step 1): the same code for 1 or N processes.

What one run trains on: every event of every sequence (``all_positions``; a sequence
longer than ``max_len`` is cut into windows, see ``Tokenizer.windows``), with each user's
last event held out for validation (``validation``): after every epoch the held-out events
are ranked (full ranking, history excluded, :func:`~trainer.backbone.eval.evaluate`), and
training stops after ``patience`` epochs without a better NDCG@10, keeping the best epoch's
weights. ``backbone train`` and ``backbone refresh`` both come through :func:`train`.

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

import copy
import dataclasses
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
from trainer.backbone.eval import HeldOut, evaluate, leave_last_out
from trainer.backbone.loss import (
    NegativeSampler,
    candidate_rows,
    full_softmax,
    info_nce,
    sampled_softmax,
)
from trainer.backbone.packing import collate_packed, collate_padded
from trainer.backbone.tokens import COND, ITEM, TokenBatch, UserTokens, Vocabs
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
        epochs: epochs run.
        best_epoch: the epoch whose weights were kept (1-based; the last without validation).
        validation: validation metrics after each epoch (empty without validation).
    """

    model: LumBackbone
    steps: int
    tokens: int
    seconds: float
    losses: list[float]
    watermark: int
    users: int
    skipped: dict[str, int] = field(default_factory=dict)
    epochs: int = 0
    best_epoch: int = 0
    validation: list[dict[str, float]] = field(default_factory=list)

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


@dataclass
class StepCandidates:
    """The items a step scores its targets against (``cfg.loss``).

    Args:
        rows: (C,) sorted item rows whose embeddings the forward pass computes: all items
            (full), the batch's targets plus the negatives (sampled), or the in-batch
            candidates (in_batch).
        log_q: (C,) in_batch log-Q correction of ``rows``, or None.
        negatives: (K,) sampled rows (sampled), or None.
        neg_log_q: (K,) ``log(K q)`` of the negatives (sampled with log-Q), or None.
    """

    rows: torch.Tensor
    log_q: torch.Tensor | None = None
    negatives: torch.Tensor | None = None
    neg_log_q: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> StepCandidates:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return StepCandidates(
            self.rows.to(device), move(self.log_q), move(self.negatives), move(self.neg_log_q)
        )


def make_sampler(cfg: BackboneConfig, model: LumBackbone) -> NegativeSampler | None:
    """The negative sampler the loss needs (sampled, or in_batch with extras / log-Q)."""
    if cfg.loss == "full" or not (cfg.sampled_negatives or cfg.logq_correction):
        return None
    item_counts = np.concatenate([[0], model.vocabs.items.counts])
    return NegativeSampler(item_counts, cfg.negative_alpha, cfg.seed)


def step_candidates(
    cfg: BackboneConfig, n_items: int, targets: torch.Tensor, sampler: NegativeSampler | None
) -> StepCandidates:
    """The candidates of one global step whose (global) targets are ``targets``."""
    if cfg.loss == "full":
        return StepCandidates(torch.arange(1, n_items))
    k = cfg.sampled_negatives
    sampled = sampler.sample(k) if sampler is not None and k else None
    rows = candidate_rows(targets, sampled)
    if cfg.loss == "sampled":
        assert sampler is not None
        assert sampled is not None
        neg_log_q = sampler.log_p(sampled) + float(np.log(k)) if cfg.logq_correction else None
        return StepCandidates(rows, None, sampled, neg_log_q)
    log_q = sampler.log_q(rows) if sampler is not None and cfg.logq_correction else None
    return StepCandidates(rows, log_q)


def step_loss(
    model: torch.nn.Module,
    batch: TokenBatch,
    cand: StepCandidates,
    cfg: BackboneConfig,
    normaliser: float,
) -> torch.Tensor:
    """The configured loss of one (local) batch against the global candidates."""
    out, cand_emb = model(batch, cand.rows)  # (B, T, D), (C, D)
    has = batch.target > 0
    q, t = out[has], batch.target[has]
    w = None
    if cfg.objective == "lum" and cfg.item_target_weight > 0:
        w = torch.where(batch.kind[has] == ITEM, cfg.item_target_weight, 1.0).to(q.dtype)
    kw = {"similarity": cfg.similarity, "weights": w, "normaliser": normaliser}
    if cfg.loss == "full":
        return full_softmax(q, t, cand_emb, temperature=cfg.temperature, **kw)  # type: ignore[arg-type]
    if cfg.loss == "sampled":
        assert cand.negatives is not None
        t_emb = cand_emb[torch.searchsorted(cand.rows, t)]
        n_emb = cand_emb[torch.searchsorted(cand.rows, cand.negatives)]
        return sampled_softmax(
            q,
            t,
            t_emb,
            cand.negatives,
            n_emb,
            neg_log_q=cand.neg_log_q,
            temperature=cfg.temperature,
            **kw,  # type: ignore[arg-type]
        )
    return info_nce(q, t, cand.rows, cand_emb, cfg.temperature, cand.log_q, **kw)  # type: ignore[arg-type]


def training_tokens(model: LumBackbone, pairs: Pairs) -> list[UserTokens]:
    """The sequences a run trains on: every event in windows (``all_positions``) or each
    user's most recent ``max_len`` events."""
    tok = model.tokenizer
    if not model.cfg.all_positions:
        return [tok.encode(s) for _, s in pairs]
    return [w for _, s in pairs for w in tok.windows(s)]


def any_condition(u: UserTokens, rate: float, seed: int, epoch: int, index: int) -> UserTokens:
    """``u`` with a ``rate`` share of its condition tokens replaced by the learned 'any'
    condition (the OOV row). The draw depends on (seed, epoch, window) only, so every
    replica of a data-parallel run makes the same choice as one process would."""
    drop = np.random.default_rng([seed, epoch, index]).random(len(u)) < rate
    drop &= u.kind == COND
    if not drop.any():
        return u
    cond = u.cond.copy()
    cond[drop] = 0
    return dataclasses.replace(u, cond=cond)


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
    fit_pairs, held = split_validation(pairs, cfg)
    model = build_model(cfg, pairs, init_from).to(device)
    tokens = training_tokens(model, fit_pairs)
    n_items = len(model.vocabs.items)
    sampler = make_sampler(cfg, model)
    net: torch.nn.Module = model
    if dist.is_available() and dist.is_initialized():
        dev = torch.device(device)
        net = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    collate = collate_packed if cfg.packing else collate_padded
    losses: list[float] = []
    validation: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    n_tokens, step, epochs_run = 0, 0, 0
    net.train()
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        for users in global_batches(len(tokens), cfg.batch_users, epoch, cfg.seed):
            if len(users) < world:
                continue  # every replica needs a share of the step
            targets = torch.from_numpy(np.concatenate([tokens[i].target for i in users]))
            cand = step_candidates(cfg, n_items, targets, sampler).to(device)
            n_targets = int((targets > 0).sum())
            with record_function("backbone.collate"):
                mine = [tokens[i] for i in users[rank::world]]
                if cfg.objective == "lum" and cfg.any_condition_rate > 0:
                    mine = [
                        any_condition(u, cfg.any_condition_rate, cfg.seed, epoch, int(i))
                        for u, i in zip(mine, users[rank::world], strict=True)
                    ]
                batch = collate(mine).to(device)
            with record_function("backbone.step"):
                norm = max(n_targets, 1) / world
                loss = step_loss(net, batch, cand, cfg, norm)
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
        epochs_run = epoch + 1
        if held is not None:
            scores = evaluate(model, held)
            validation.append(scores)
            key = scores["ndcg@10"]
            log.info("backbone: epoch %d validation %s", epochs_run, scores)
            if best is None or key > best[0]:
                best = (key, epochs_run, copy.deepcopy(model.state_dict()))
            net.train()
            if epochs_run - best[1] >= cfg.patience:
                break
        if cfg.max_steps and step >= cfg.max_steps:
            break
    best_epoch = epochs_run
    if best is not None:
        best_epoch = best[1]
        model.load_state_dict(best[2])
    seconds = time.perf_counter() - start
    model.eval()
    result = TrainResult(
        model,
        step,
        n_tokens,
        seconds,
        losses,
        watermark,
        len(pairs),
        skipped,
        epochs_run,
        best_epoch,
        validation,
    )
    if metrics is not None:
        metrics.backbone_tokens_per_second.set(result.tokens_per_s)
    log.info(
        "backbone: %d steps, %d epochs (kept %d), %d users, %.0f tokens/s, last loss %.4f",
        step,
        epochs_run,
        best_epoch,
        len(pairs),
        result.tokens_per_s,
        losses[-1] if losses else float("nan"),
    )
    return result


def split_validation(pairs: Pairs, cfg: BackboneConfig) -> tuple[Pairs, HeldOut | None]:
    """(training pairs, held-out last events of up to ``validation_users`` users) with
    ``cfg.validation``; users with a single event keep it for training."""
    if not cfg.validation:
        return pairs, None
    fit, held = leave_last_out(pairs, cfg.condition_fields)
    fit = fit + [(u, s) for u, s in pairs if len(s) < 2]  # a new list: held shares fit
    if not held.histories:
        return pairs, None
    n = len(held.histories)
    if n > cfg.validation_users:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(n, cfg.validation_users, False))
        held = HeldOut(
            [held.histories[i] for i in pick], held.items[pick], held.conds[pick], held.ts[pick]
        )
    return fit, held


def _global_loss(local: torch.Tensor, world: int) -> float:
    """The global batch's mean loss: the replicas' shares (each scaled by world) summed."""
    if world == 1:
        return float(local)
    total = local.clone()
    dist.all_reduce(total)
    return float(total) / world
