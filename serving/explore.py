"""Exploration: a configurable share of requests is served in a random order.

A ranker that learns only from the lists it ranked itself sees clicks mostly on what it
already put on top (and position bias inflates those). A small share of requests
(``explore.share``) gets the candidates in a uniformly random order instead (or only the
first ``explore.top_k`` of the ranked list shuffled); those lists are logged with
``randomized=true`` (serving/served_log.py), so the samples they become carry the flag:
clicks that neither the ranker's order nor the position decided, for learning and for
unbiased evaluation.

The decision and the order are functions of (``explore.seed``, request id) alone: a
retried request gets the same list, a replay of the logs the same decision, and nothing
depends on process state or timing.

Example:
    >>> ex = Explorer(ExploreConfig(share=1.0))
    >>> order, randomized = ex.apply("req-1", ["a", "b", "c", "d"])
    >>> randomized, sorted(order)
    (True, ['a', 'b', 'c', 'd'])
    >>> Explorer(ExploreConfig(share=0.0)).apply("req-1", ["a", "b"])
    (['a', 'b'], False)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from monitoring.metrics import Metrics
from serving.loop_config import ExploreConfig

T = TypeVar("T")
_SCALE = float(2**64)


class Explorer:
    """Decides which requests explore and in which order they are served.

    Args:
        cfg: share, seed and how much of the list to shuffle.
        metrics: ``serving_explored_requests`` counts the explored lists (None: not
            counted).
    """

    def __init__(self, cfg: ExploreConfig, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics

    def _digest(self, request_id: str) -> bytes:
        key = f"{self.cfg.seed}\x00{request_id}".encode()
        return hashlib.blake2b(key, digest_size=16).digest()

    def explores(self, request_id: str) -> bool:
        """Whether this request is served in a random order."""
        if self.cfg.share <= 0.0:
            return False
        u = int.from_bytes(self._digest(request_id)[:8], "little") / _SCALE  # [0, 1)
        return u < self.cfg.share

    def order(self, request_id: str, n: int) -> np.ndarray | None:
        """A permutation of ``range(n)`` for an exploring request (only the first
        ``top_k`` places shuffled when set), or None when the ranked order stands."""
        if not self.explores(request_id):
            return None
        k = n if self.cfg.top_k <= 0 else min(self.cfg.top_k, n)
        rng = np.random.default_rng(int.from_bytes(self._digest(request_id)[8:], "little"))
        out = np.arange(n)
        out[:k] = rng.permutation(k)
        return out

    def apply(self, request_id: str, ranked: Sequence[T]) -> tuple[list[T], bool]:
        """(the list to serve, randomized): ``ranked`` itself, or reordered when the
        request explores (counted)."""
        perm = self.order(request_id, len(ranked))
        if perm is None:
            return list(ranked), False
        if self.metrics is not None:
            self.metrics.explored_requests.inc()
        return [ranked[i] for i in perm.tolist()], True
