"""Replay training over a fixed set of samples: single epoch, naive multi-epoch, and
multi-epoch with sparse-reset (EST §5.5).

- ``single``: one pass.
- ``naive``: K passes; everything carries over. Recommenders typically get worse from the
  second epoch on (the one-epoch phenomenon: id embeddings overfit the samples they were
  trained on, so trained and untrained ids stop looking alike).
- ``sparse_reset``: before every epoch after the first, the sparse state (table rows, their
  fused optimizer state, the id mapping) is restored to θ_s^(0), the snapshot taken before
  the first epoch (the initial or inherited tables); dense parameters and their optimizer
  carry over.

After each epoch the model scores the evaluation samples without learning from them.

Example:
    >>> results = train_epochs(engine, train, held_out, mode="sparse_reset", epochs=4)
    ... # doctest: +SKIP
    >>> [round(r.eval["auc"], 3) for r in results]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from embeddings.snapshot import SparseSnapshot
from monitoring.metrics import Metrics
from trainer.ranker.batch import Samples
from trainer.ranker.distributed import broadcast_bytes, world
from trainer.ranker.engine import RankerEngine, Scored
from trainer.ranker.metrics import summary
from trainer.ranker.source import Assembler, SampleSource
from trainer.vectors.lookup import VectorSource

log = logging.getLogger(__name__)

MODES = ("single", "naive", "sparse_reset")


@dataclass
class EpochResult:
    """One epoch.

    Args:
        epoch: 1-based.
        train: progressive summary of the epoch's training batches (scored before learning).
        eval: summary on the evaluation samples after the epoch (empty without them).
    """

    epoch: int
    train: dict[str, float]
    eval: dict[str, float] = field(default_factory=dict)


def _summarise(parts: list[Scored]) -> dict[str, float]:
    if not parts:
        return {}
    return summary(
        np.concatenate([p.probs for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.users for p in parts]),
    )


def score_all(
    engine: RankerEngine, samples: Samples, vectors: VectorSource | None, batch_size: int
) -> dict[str, float]:
    """Summary of the model's predictions on ``samples`` (no learning)."""
    return _summarise(
        [
            engine.score(samples.slice(i, min(i + batch_size, len(samples))), vectors)
            for i in range(0, len(samples), batch_size)
        ]
    )


def train_epochs(
    engine: RankerEngine,
    train: Samples,
    held_out: Samples | None,
    *,
    mode: str,
    epochs: int,
    vectors: VectorSource | None = None,
    batch_size: int | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> list[EpochResult]:
    """Train on ``train`` in ``mode`` (``single`` makes one epoch whatever ``epochs``).

    Args:
        engine: the ranker (its current sparse state is θ_s^(0) for ``sparse_reset``).
        train / held_out: the global samples (the same on every rank).
        mode: one of :data:`MODES`.
        epochs: passes for ``naive`` and ``sparse_reset``.
        vectors: LUM vectors (None: no LUM features).
        batch_size: global batch (default ``engine.cfg.batch_size``).
        on_epoch: called after every epoch (progress).
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    b = batch_size or engine.cfg.batch_size
    snap = SparseSnapshot.capture(engine.access, engine.mappers) if mode == "sparse_reset" else None
    results = []
    for epoch in range(1 if mode == "single" else epochs):
        if snap is not None and epoch > 0:
            snap.restore(engine.access, engine.mappers)
            log.info("sparse-reset: tables, optimizer state and ids back to θ_s^(0)")
        scored = [
            engine.step(train.slice(i, min(i + b, len(train))), vectors)
            for i in range(0, len(train), b)
        ]
        res = EpochResult(epoch + 1, _summarise(scored))
        if held_out is not None and len(held_out):
            res.eval = score_all(engine, held_out, vectors, b)
        log.info("epoch %d (%s): train %s eval %s", epoch + 1, mode, res.train, res.eval)
        results.append(res)
        if on_epoch is not None:
            on_epoch(res)
    return results


def collect(
    source: SampleSource | None,
    ts_range: tuple[int, int] | None = None,
    metrics: Metrics | None = None,
    chunk: int = 256,
) -> Samples:
    """Every (deduplicated) sample of a finite source in ``[from, to)``, on every rank
    (rank 0 reads, the others receive it)."""
    rank, _ = world()
    raw = None
    if rank == 0:
        assert source is not None
        asm = Assembler(metrics=metrics, ts_range=ts_range)
        while not source.exhausted():
            asm.add(source.poll(chunk, timeout_s=1.0))
        raw = asm.take(asm.available()).encode()
    return Samples.decode(broadcast_bytes(raw))
