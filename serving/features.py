"""A ranking request as the trainer's samples, scored by the trainer's code.

There is one feature path: the service turns a request into the same
:class:`~trainer.ranker.batch.Samples` the worker's label join emits (the candidate's ids
and context, the user's most recent ``worker.history_len`` sequence events as history,
the request time as the event time) and hands it to the trainer's
:class:`~trainer.ranker.batch.BatchBuilder` (clean, id mapping, history trimming, dense
features, the point-in-time LUM lookup) and the version's model. Nothing here computes a
feature of its own, so serving cannot drift from training (tests/serving/test_one_path.py
checks the scores agree within 1e-5).

Example:
    >>> s = request_samples(7, 3, np.array([1, 2]), np.array([0, 0]),
    ...                     np.zeros(0, SEQ_DTYPE), history_len=30, now_ms=1000)
    >>> len(s), s.rows["ts"].tolist()
    (2, [1000, 1000])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from embeddings.ids import NEW_ROW
from streams.contracts.records import SEQ_DTYPE
from streams.contracts.samples import HIST_DTYPE, SAMPLE_DTYPE
from trainer.ranker.batch import BatchBuilder, Samples
from trainer.ranker.model import RankerModel, model_inputs
from trainer.vectors.lookup import VectorSource

__all__ = ["SEQ_DTYPE", "Scores", "request_samples", "score_samples"]


def request_samples(
    user: int,
    cond: int,
    items: np.ndarray,
    cats: np.ndarray,
    sequence: np.ndarray,
    history_len: int,
    now_ms: int,
) -> Samples:
    """One sample per candidate, as the worker would emit it for an impression at ``now_ms``.

    Args:
        user / cond: stable ids (``cond`` -1 when the request has no condition: the
            shared new-id row, like any id the builder cannot map).
        items / cats: (n,) stable ids of the candidates (category 0 when absent, as the
            store records events without one).
        sequence: (m,) SEQ_DTYPE, the user's sequence oldest first (the store's view now).
        history_len: events of history a sample carries (``worker.history_len``).
    """
    n = len(items)
    rows = np.zeros(n, SAMPLE_DTYPE)
    rows["seq"] = np.arange(n)
    rows["user"] = user
    rows["item"] = items
    rows["cond"] = cond
    rows["cat"] = cats
    rows["ts"] = now_ms
    rows["offset"] = -1
    recent = sequence[len(sequence) - min(len(sequence), history_len) :]
    one = np.empty(len(recent), HIST_DTYPE)
    for name in ("item", "cond", "cat", "ts", "action"):
        one[name] = recent[name]
    return Samples(
        rows,
        np.zeros(n, np.int64),
        np.full(n, len(one), np.int64),
        np.tile(one, n),
    )


@dataclass(frozen=True)
class Scores:
    """What scoring a request gives.

    Args:
        probs: (n,) click probabilities, in candidate order.
        new_item: (n,) the item has no row of its own in the version.
        new_user / new_condition: the user / condition has no row of its own.
        lum_user: a condition-query vector of the user was found.
        history: history events used (after the builder's trimming).
        backbone: the backbone version of the vectors used (None: no vector found).
    """

    probs: np.ndarray
    new_item: np.ndarray
    new_user: bool
    new_condition: bool
    lum_user: bool
    history: int
    backbone: str | None


def score_samples(
    builder: BatchBuilder, model: RankerModel, samples: Samples, vectors: VectorSource | None
) -> Scores:
    """Score ``samples`` exactly as the trainer scores (``RankerEngine.score``): clean, map
    without learning, one rank's batch, forward, sigmoid."""
    s = builder.clean(samples)
    if len(s) != len(samples):
        raise ValueError(f"{len(samples) - len(s)} request rows were not valid samples")
    mapped = builder.map(s, learn=False)
    batch = builder.local(mapped, 0, 1, vectors)
    with torch.inference_mode(), torch.profiler.record_function("serving.forward"):
        logits = model(*model_inputs(batch))
    probs = torch.sigmoid(logits).double().numpy()
    n = len(s)
    return Scores(
        probs=probs,
        new_item=mapped.rows["item"] == NEW_ROW,
        new_user=bool(n and mapped.rows["user"][0] == NEW_ROW),
        new_condition=bool(n and mapped.rows["cond"][0] == NEW_ROW),
        lum_user=bool(n and batch.lum_user_found[0]),
        history=int(s.hist_lengths[0]) if n else 0,
        backbone=builder.last_version,
    )
