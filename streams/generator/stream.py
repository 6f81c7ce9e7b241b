"""Event emission: page views -> impressions, delayed clicks and purchases, in event time.

Page views arrive as a Poisson process (mean gap ``time_step_ms``). Each shows a slate of
impressions at the view's time; a click follows its impression after an exponential delay
(mean ``click_delay_mean_s``, at least 1 ms) and a purchase follows a click after an
exponential delay of ``PURCHASE_DELAY_FACTOR`` times that mean. Work happens in chunks of
``CHUNK_VIEWS`` page views with numpy; delayed events wait in a sorted buffer and are
emitted once the page views have passed their time, so the stream is in event-time order.
Malformed records are inserted at random places.

Example:
    >>> from streams.config import GeneratorConfig
    >>> stream = ClickStream(GeneratorConfig(users=50, items=200, categories=4, events=30))
    >>> sum(len(b) for b in stream.pair_batches()), stream.stats.events
    (30, 30)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from core.settings import ConfigError
from streams.config import GeneratorConfig
from streams.contracts.events import Event
from streams.generator.batch import MALFORMED_CODE, Batch, WireFormat
from streams.generator.draws import Draws, Views
from streams.generator.malformed import KIND_NAMES, Malformed, malformed_value
from streams.generator.world import World, child_rng

CHUNK_VIEWS = 1024  # page views generated per numpy chunk (part of the seeded output)
PURCHASE_DELAY_FACTOR = 4.0  # mean purchase delay after a click / mean click delay
_STREAM, _MALFORMED = 10, 11  # child seeds (world.py uses 0..4)


@dataclass
class StreamStats:
    """Counts of what has been emitted so far (what the consumer of the stream received).

    Args:
        drift_ts_ms: event time of the first page view with drifted tastes (None: no drift
            yet); ``World.click_prob(..., drifted=ts >= drift_ts_ms)`` is the truth.
    """

    events: int = 0
    impressions: int = 0
    clicks: int = 0
    purchases: int = 0
    malformed: int = 0
    drift_ts_ms: int | None = None
    users_seen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), repr=False)

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def users(self) -> int:
        return int(self.users_seen.sum())


_COLUMNS = ("ts", "users", "items", "conditions", "actions", "probs", "shown_ts", "clicked")
_DTYPES = {"probs": np.float64, "clicked": np.bool_}


class ClickStream:
    """The synthetic click stream of one :class:`World`, deterministic in ``cfg.seed``.

    Args:
        cfg: the generator settings (``events`` bounds the output, 0 = unbounded).
        world: the ground truth; built from ``cfg`` when not given.
    Raises:
        ConfigError: drift requested on an unbounded run.
    """

    def __init__(self, cfg: GeneratorConfig, world: World | None = None) -> None:
        if cfg.drift_at >= 0 and cfg.events <= 0:
            raise ConfigError(
                "generator.drift_at is a fraction of the run: it needs generator.events > 0"
            )
        self.cfg = cfg
        self.world = world if world is not None else World(cfg)
        self.stats = StreamStats(users_seen=np.zeros(self.world.n_users, dtype=bool))
        self._rng = child_rng(cfg.seed, _STREAM)
        self._bad_rng = child_rng(cfg.seed, _MALFORMED)
        self._t = float(cfg.start_ts_ms)
        self._pending: dict[str, np.ndarray] = {
            name: np.zeros(0, dtype=_DTYPES.get(name, np.int64)) for name in _COLUMNS
        }
        self._generated = 0
        self._drift_after = int(cfg.drift_at * cfg.events) if cfg.drift_at >= 0 else None
        self._drifted = False
        self._seq = 0
        self._n_malformed = 0
        names = [World.condition_name(c) for c in range(self.world.n_categories)]
        self._wire = WireFormat(cfg.seed, names, self.world.n_users)

    # -- public iterators ----------------------------------------------------------------
    def batches(self) -> Iterator[Batch]:
        """The unbounded stream, chunk by chunk (the counts in :attr:`stats` are not updated
        here; ``drift_ts_ms`` is)."""
        while True:
            yield self._chunk()

    def pair_batches(
        self, limit: int | None = None, batch_size: int = 4096
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        """Pre-encoded ``(key, value)`` Kafka records in lists of at most ``batch_size``;
        :attr:`stats` counts each list as it is yielded.

        Args:
            limit: records to emit; None = ``cfg.events`` (0 = unbounded).
            batch_size: largest list yielded.
        """
        for batch, start, stop in self._slices(limit, batch_size):
            yield self._wire.pairs(batch, start, stop)

    def event_batches(
        self, limit: int | None = None, batch_size: int = 4096
    ) -> Iterator[list[Event | Malformed]]:
        """:class:`Event` objects, with :class:`Malformed` records where they fall, in lists
        of at most ``batch_size`` (``limit`` as for :meth:`pair_batches`)."""
        for batch, start, stop in self._slices(limit, batch_size):
            yield self._wire.events(batch, start, stop)

    def events(self, limit: int | None = None) -> Iterator[Event | Malformed]:
        """:meth:`event_batches` one record at a time (stats run up to a list ahead)."""
        for batch in self.event_batches(limit):
            yield from batch

    # -- chunks --------------------------------------------------------------------------
    def _slices(self, limit: int | None, size: int) -> Iterator[tuple[Batch, int, int]]:
        remaining = (self.cfg.events or None) if limit is None else limit
        for batch in self.batches():
            n = len(batch) if remaining is None else min(len(batch), remaining)
            for start in range(0, n, size):
                stop = min(start + size, n)
                self._count(batch, start, stop)
                yield batch, start, stop
            if remaining is not None:
                remaining -= n
                if remaining <= 0:
                    return

    def _count(self, batch: Batch, start: int, stop: int) -> None:
        codes = np.bincount(batch.codes[start:stop], minlength=MALFORMED_CODE + 1)
        s = self.stats
        s.events += stop - start
        s.impressions += int(codes[0])
        s.clicks += int(codes[1])
        s.purchases += int(codes[2])
        s.malformed += int(codes[MALFORMED_CODE])
        good_start, good_stop = batch.good_range(start, stop)
        s.users_seen[batch.users[good_start:good_stop]] = True

    def _chunk(self) -> Batch:
        cfg, rng, n, s = self.cfg, self._rng, CHUNK_VIEWS, self.cfg.slate_size
        draws = Draws.draw(rng, n, s)
        times = self._t + np.cumsum(rng.exponential(cfg.time_step_ms, n))
        self._t = float(times[-1])
        ts_view = np.floor(times).astype(np.int64)  # (P,)
        mean_ms = cfg.click_delay_mean_s * 1000.0
        click_ts = ts_view[:, None] + _delay_ms(rng.exponential(mean_ms, (n, s)))  # (P, S)
        buy = rng.random((n, s))
        buy_ts = click_ts + _delay_ms(rng.exponential(PURCHASE_DELAY_FACTOR * mean_ms, (n, s)))
        views = self.world.views(draws, self._drifted)
        bought = views.clicks & (buy < cfg.purchase_prob)
        per_view = (views.items >= 0).sum(1) + views.clicks.sum(1) + bought.sum(1)  # (P,)
        if self._drift_after is not None and not self._drifted:
            before = self._generated + np.cumsum(per_view) - per_view
            k = int(np.searchsorted(before, self._drift_after, side="left"))
            if k < n:  # the first view at or after the drift point, and all later ones
                views = views.head(k).concat(self.world.views(draws.rows(k), drifted=True))
                bought = views.clicks & (buy < cfg.purchase_prob)
                per_view = (views.items >= 0).sum(1) + views.clicks.sum(1) + bought.sum(1)
                self._drifted = True
                self.stats.drift_ts_ms = int(ts_view[k])
        self._generated += int(per_view.sum())
        cols = self._merge(views, ts_view, click_ts, bought, buy_ts)
        return self._with_malformed(cols)

    def _merge(
        self,
        views: Views,
        ts_view: np.ndarray,
        click_ts: np.ndarray,
        bought: np.ndarray,
        buy_ts: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Pending + this chunk's events sorted by time; those up to the chunk's last page
        view are emitted, later ones stay pending."""
        parts = [self._pending]
        for code, mask, ts in (
            (0, views.items >= 0, ts_view[:, None]),
            (1, views.clicks, click_ts),
            (2, bought, buy_ts),
        ):
            rows, slots = np.nonzero(mask)
            parts.append(
                {
                    "ts": np.broadcast_to(ts, mask.shape)[rows, slots],
                    "users": views.users[rows],
                    "items": views.items[rows, slots],
                    "conditions": views.conditions[rows],
                    "actions": np.full(rows.size, code, dtype=np.int64),
                    "probs": views.probs[rows, slots],
                    "shown_ts": ts_view[rows],
                    "clicked": views.clicks[rows, slots],
                }
            )
        merged = {name: np.concatenate([p[name] for p in parts]) for name in _COLUMNS}
        order = np.argsort(merged["ts"], kind="stable")
        merged = {name: col[order] for name, col in merged.items()}
        cut = int(np.searchsorted(merged["ts"], ts_view[-1], side="right"))
        self._pending = {name: col[cut:] for name, col in merged.items()}
        return {name: col[:cut] for name, col in merged.items()}

    def _with_malformed(self, cols: dict[str, np.ndarray]) -> Batch:
        n_good = len(cols["ts"])
        codes = cols["actions"].astype(np.int64)
        bad: list[Malformed] = []
        frac = self.cfg.malformed_fraction
        if frac > 0 and n_good:
            rng = self._bad_rng
            n_bad = int(rng.binomial(n_good, frac / (1.0 - frac)))
            at = np.sort(rng.choice(n_good + n_bad, size=n_bad, replace=False))
            base_idx = np.minimum(at - np.arange(n_bad), n_good - 1)
            kinds = rng.integers(0, len(KIND_NAMES), size=n_bad)
            for j, kind in zip(base_idx.tolist(), kinds.tolist(), strict=True):
                base = self._wire.as_dict(cols, j, f"g{self.cfg.seed}-x{self._n_malformed}")
                self._n_malformed += 1
                name = KIND_NAMES[kind]
                bad.append(
                    Malformed(base["user_id"].encode(), malformed_value(name, base, rng), name)
                )
            codes = np.insert(codes, at - np.arange(n_bad), MALFORMED_CODE)
        batch = Batch(
            self._seq,
            cols["ts"],
            cols["users"],
            cols["items"],
            cols["conditions"],
            cols["actions"],
            cols["probs"],
            cols["shown_ts"],
            cols["clicked"],
            codes,
            bad,
        )
        self._seq += n_good
        return batch


def _delay_ms(delay: np.ndarray) -> np.ndarray:
    """Continuous delays (ms) -> whole ms, at least 1 so a follow-up is strictly later."""
    return np.maximum(np.ceil(delay), 1.0).astype(np.int64)
