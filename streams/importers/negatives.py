"""Sampled negative impressions for implicit-feedback logs.

A log of implicit feedback (every row an interaction: a purchase, a rating, a play) has
no record of what was shown and ignored, so the label join finds no negatives at all.
:class:`ImpressionSampler` adds, after each interaction, ``k`` impressions of items the user
did not interact with around that time, drawn from the items seen so far in the log
(never from later ones: no leakage of the catalogue's future):

- ``uniform``: every item seen so far equally likely;
- ``popularity``: proportional to its interactions so far (the cumulative counts are
  rebuilt once 1% more interactions, at most ``_REFRESH``, came since the last build).

An item is never drawn for a user who interacted with it within ``exclude_s`` seconds
before or after the interaction (``inf``: ever, in the whole log; that keeps the whole
log in memory). The stream is read ``exclude_s`` ahead of what is written, so the
future side is known. A draw is seeded and a function of the (sorted) log alone: the
same log and settings give the same events. Each sampled impression has the interacted
event's time and goes just *before* the events of that time (so its history, like that
of the interaction's own impression, does not hold the interaction yet: placed after it,
a sampled impression would be told apart by "seconds since the last history event"
alone), the drawn item's last-seen condition and features, ``features["sampled"]``
= the mode (so analyses can tell them apart) and the id ``<interaction id>~n<j>``. With
``impress_interactions`` an impression of the interacted item itself (``~i``) goes just
before the interaction, for logs that record only interactions.

Example:
    >>> from streams.contracts.events import Event
    >>> ev = [Event(f"e{u}{i}", str(u), str(i), "click", "c", 1000 * i) for u in (1, 2)
    ...       for i in range(4)]
    >>> ev.sort(key=lambda e: e.ts)
    >>> s = ImpressionSampler(NegativeSampling(k=1, seed=3, exclude_s=10.0))
    >>> out = list(s.run(iter(ev)))
    >>> len(out), s.sampled, s.short
    (8, 0, 8)
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from streams.contracts.events import Event, FeatureValue

MODES = ("uniform", "popularity")
_REFRESH = 1024  # interactions between rebuilds of the popularity table
_TRIES = 20  # draws per wanted negative before giving up on it


@dataclass(frozen=True)
class NegativeSampling:
    """How to sample negative impressions.

    Args:
        k: sampled impressions per interaction (>= 1).
        mode: ``uniform`` or ``popularity`` (see the module doc).
        seed: the random generator's seed.
        exclude_s: never draw an item the user interacted with within this many seconds
            either side of the interaction (``inf``: ever). Keep it above the label window.
        interactions: actions that count as interactions.
        impression_action: the action of the sampled impressions.
        impress_interactions: also add an impression of the interacted item itself.
    """

    k: int
    mode: str = "uniform"
    seed: int = 0
    exclude_s: float = 30 * 86_400.0
    interactions: tuple[str, ...] = ("click", "purchase")
    impression_action: str = "impression"
    impress_interactions: bool = False

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"negatives: k must be >= 1, got {self.k}")
        if self.mode not in MODES:
            raise ValueError(f"negatives: mode {self.mode!r}: use one of {', '.join(MODES)}")
        if not self.exclude_s >= 0:
            raise ValueError(f"negatives: exclude_s must be >= 0, got {self.exclude_s}")


class ImpressionSampler:
    """Adds sampled impressions to a time-ordered event stream (see the module doc).

    Counts: ``sampled`` (impressions added), ``short`` (wanted draws that found no item:
    too few items seen yet, or all of them excluded), ``interactions``.
    """

    def __init__(self, cfg: NegativeSampling) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.window_ms = math.inf if math.isinf(cfg.exclude_s) else int(cfg.exclude_s * 1000)
        self.items: list[str] = []
        self.index: dict[str, int] = {}
        self.meta: list[tuple[str, Mapping[str, FeatureValue] | None]] = []  # condition, features
        self.counts = np.zeros(1024, np.int64)
        self._cum: np.ndarray = np.zeros(0, np.int64)
        self._since = 0
        self.near: dict[str, Counter[str]] = {}
        self._pending: deque[Event] = deque()  # read, not yet given back
        self._entered: deque[Event] = deque()  # interactions counted in ``near``, by time
        self._inter = set(cfg.interactions)
        self._last: int | None = None
        self.sampled = 0
        self.short = 0
        self.interactions = 0

    def run(self, events: Iterator[Event]) -> Iterator[Event]:
        """The input events, each interaction followed by its sampled impressions.

        Raises:
            ValueError: the input is not in event-time order.
        """
        for ev in events:
            yield from self.push(ev)
        yield from self.finish()

    def push(self, ev: Event) -> Iterator[Event]:
        """Take the next event (in event-time order); give the events now ready: those
        whose exclusion window ahead has been read, with their sampled impressions."""
        if self._last is not None and ev.ts < self._last:
            raise ValueError(
                "negative sampling needs events in event-time order "
                f"({ev.event_id} at {ev.ts} after {self._last}); do not pass --presorted"
            )
        self._last = ev.ts
        if ev.action in self._inter:
            self.near.setdefault(ev.user_id, Counter())[ev.item_id] += 1
            self._entered.append(ev)
        self._pending.append(ev)
        pending = self._pending
        while pending and pending[0].ts + self.window_ms < ev.ts:
            yield from self._emit(self._group())

    def finish(self) -> Iterator[Event]:
        """The events still held back, at the end of the input."""
        while self._pending:
            yield from self._emit(self._group())

    def _group(self) -> list[Event]:
        """The held events of the earliest time (all read: later times have arrived)."""
        pending, t = self._pending, self._pending[0].ts
        group = []
        while pending and pending[0].ts == t:
            group.append(pending.popleft())
        return group

    def _emit(self, group: list[Event]) -> Iterator[Event]:
        """One time's events, preceded by the sampled impressions of its interactions: a
        sampled impression then has the history its interaction's own impression had
        (the interactions of that time are not in it yet), so nothing but the item tells
        them apart."""
        t, entered = group[0].ts, self._entered
        while entered and entered[0].ts + self.window_ms < t:
            old = entered.popleft()
            near = self.near[old.user_id]
            near[old.item_id] -= 1
            if not near[old.item_id]:
                del near[old.item_id]
                if not near:
                    del self.near[old.user_id]
        for ev in group:
            self._see(ev)
        for ev in group:
            if ev.action in self._inter:
                self.interactions += 1
                yield from self._draw(ev)
        for ev in group:
            if self.cfg.impress_interactions and ev.action in self._inter:
                yield Event(
                    f"{ev.event_id}~i",
                    ev.user_id,
                    ev.item_id,
                    self.cfg.impression_action,
                    ev.condition,
                    ev.ts,
                    ev.features,
                )
            yield ev

    def _see(self, ev: Event) -> None:
        i = self.index.get(ev.item_id)
        if i is None:
            i = len(self.items)
            self.index[ev.item_id] = i
            self.items.append(ev.item_id)
            self.meta.append((ev.condition, ev.features))
            if i >= len(self.counts):
                self.counts = np.concatenate([self.counts, np.zeros_like(self.counts)])
        else:
            self.meta[i] = (ev.condition, ev.features)
        if ev.action in self.cfg.interactions:
            self.counts[i] += 1
            self._since += 1

    def _candidates(self, n: int) -> np.ndarray:
        if self.cfg.mode == "uniform":
            return self.rng.integers(0, len(self.items), size=n)
        total = int(self._cum[-1]) if len(self._cum) else 0
        if self._since >= min(_REFRESH, 1 + total // 100):  # >1% new, or _REFRESH new
            self._cum = np.cumsum(self.counts[: len(self.items)])
            self._since = 0
        if self._cum[-1] == 0:
            return np.zeros(0, np.int64)
        return np.searchsorted(self._cum, self.rng.integers(0, self._cum[-1], size=n), "right")

    def _draw(self, ev: Event) -> Iterator[Event]:
        k = self.cfg.k
        excluded: Mapping[str, int] = self.near.get(ev.user_id, {})
        chosen: list[int] = []
        for c in self._candidates(k * _TRIES).tolist():
            item = self.items[c]
            if item in excluded or c in chosen:
                continue
            chosen.append(c)
            if len(chosen) == k:
                break
        self.short += k - len(chosen)
        for j, c in enumerate(chosen):
            condition, features = self.meta[c]
            yield Event(
                f"{ev.event_id}~n{j}",
                ev.user_id,
                self.items[c],
                self.cfg.impression_action,
                condition,
                ev.ts,
                {**(features or {}), "sampled": self.cfg.mode},
            )
        self.sampled += len(chosen)
