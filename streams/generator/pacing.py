"""Pacing a producer to a target rate (token bucket) within a time budget.

Example:
    >>> bucket = TokenBucket(rate=1e9)
    >>> bucket.acquire(1000)  # returns at once at this rate
"""

from __future__ import annotations

import time
from collections.abc import Callable

BURST_S = 0.1  # the bucket holds this many seconds of tokens (smooths batches)


class TokenBucket:
    """Blocks in :meth:`acquire` so that on average at most ``rate`` tokens pass per second.

    Args:
        rate: tokens (events) per second; must be > 0.
        burst: most tokens available at once (default: ``rate * BURST_S``, at least 1).
        clock / sleep: injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = rate
        self.capacity = max(burst if burst is not None else rate * BURST_S, 1.0)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.capacity
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def acquire(self, n: float) -> None:
        """Take ``n`` tokens, sleeping until they have accrued (``n`` may exceed the burst:
        the debt is slept off at once)."""
        self._refill()
        self._tokens -= n
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)
            self._refill()


def batch_size_for(rate: float, largest: int = 4096) -> int:
    """Records per produced batch: about 20 batches a second at ``rate``, so pacing is smooth
    at low rates and cheap at high ones (0 = unpaced: ``largest``)."""
    if rate <= 0:
        return largest
    return max(1, min(largest, int(rate / 20)))
