"""How long after an impression its positives come: the label window a log needs.

:class:`LabelDelays` watches a time-ordered event stream the way the label join would,
without a window: for each positive action (``click``, ``purchase``) it finds the latest
impression of the same (user, item) at or before it, up to ``horizon_s`` back, and keeps
the delay. The recommended label window is the ``quantile`` (0.99) of those delays,
rounded up to a whole second (at least 1 s). An import records it in the event log's
metadata (:mod:`streams.contracts.eventlog`), and ``bench/ranker.py`` and the backfill
default to it.

Example:
    >>> from streams.contracts.events import Event
    >>> d = LabelDelays()
    >>> for e in (Event("a", "u", "i", "impression", "c", 0),
    ...           Event("b", "u", "i", "purchase", "c", 3_600_000)):
    ...     d.see(e)
    >>> d.recommended_window_s()
    3600.0
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from typing import Any

import numpy as np

from streams.contracts.events import Event

DEFAULT_HORIZON_S = 7 * 86_400.0
DEFAULT_QUANTILE = 0.99


class LabelDelays:
    """Delays from impressions to their positives (see the module doc).

    Args:
        impression_action / positive_actions: as the worker's settings name them.
        horizon_s: the longest delay looked for (older impressions are forgotten: memory
            stays bounded by the impressions of one horizon).
    """

    def __init__(
        self,
        impression_action: str = "impression",
        positive_actions: tuple[str, ...] = ("click", "purchase"),
        horizon_s: float = DEFAULT_HORIZON_S,
    ) -> None:
        self.impression = impression_action
        self.positive = set(positive_actions)
        self.horizon_ms = int(horizon_s * 1000)
        self.last: dict[tuple[str, str], int] = {}
        self.queue: deque[tuple[int, str, str]] = deque()
        self.delays = array("q")
        self.positives = 0

    def see(self, ev: Event) -> None:
        while self.queue and self.queue[0][0] + self.horizon_ms < ev.ts:
            ts, user, item = self.queue.popleft()
            if self.last.get((user, item)) == ts:
                del self.last[(user, item)]
        if ev.action == self.impression:
            self.last[(ev.user_id, ev.item_id)] = ev.ts
            self.queue.append((ev.ts, ev.user_id, ev.item_id))
        elif ev.action in self.positive:
            self.positives += 1
            t = self.last.get((ev.user_id, ev.item_id))
            if t is not None and t <= ev.ts:
                self.delays.append(ev.ts - t)

    def recommended_window_s(self, quantile: float = DEFAULT_QUANTILE) -> float | None:
        """The ``quantile`` of the delays, rounded up to a second (>= 1); None without any."""
        if not self.delays:
            return None
        q = float(np.quantile(np.frombuffer(self.delays, np.int64), quantile))
        return float(max(1, math.ceil(q / 1000)))

    def to_dict(self) -> dict[str, Any]:
        d = np.frombuffer(self.delays, np.int64) if self.delays else np.zeros(0, np.int64)
        pct = {
            f"p{int(q * 100)}_s": round(float(np.quantile(d, q)) / 1000, 3) if len(d) else None
            for q in (0.5, 0.9, 0.99)
        }
        return {
            "positives": self.positives,
            "with_impression": len(d),
            "without_impression": self.positives - len(d),
            "horizon_s": self.horizon_ms / 1000,
            **pct,
            "recommended_label_window_s": self.recommended_window_s(),
        }

    def summary(self) -> str:
        d = self.to_dict()
        if d["recommended_label_window_s"] is None:
            return (
                f"label delays: no positive follows an impression of its item "
                f"({d['positives']:,} positives); the join will label nothing 1 - sample "
                "negatives (--negatives) or map an impression action"
            )
        return (
            f"label delays: {d['with_impression']:,} of {d['positives']:,} positives follow an "
            f"impression (p50 {d['p50_s']:,} s, p90 {d['p90_s']:,} s, p99 {d['p99_s']:,} s); "
            f"recommended worker.label_window_s={d['recommended_label_window_s']:.0f}"
        )
