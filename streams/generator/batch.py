"""A chunk of the stream as columns, and its conversion to wire records or Event objects.

The fast path formats the canonical wire bytes of ``streams.contracts.events.encode`` (keys sorted,
compact JSON) from precomputed pieces: one bytes-format per event; the tests check it
against ``encode`` byte for byte.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from streams.contracts.events import Event
from streams.generator.malformed import Malformed

ACTIONS = ("impression", "click", "purchase")  # action codes 0, 1, 2 in a Batch
MALFORMED_CODE = 3  # the code of a malformed record in Batch.codes


@dataclass(frozen=True)
class Batch:
    """One chunk of the stream in emission order: the good events as columns and the
    malformed records between them.

    Args:
        first_seq: sequence number of the first good event (its id is ``g<seed>-<seq>``).
        ts / users / items / conditions / actions: (n,) columns of the good events.
        probs: (n,) ground-truth click probability of the impression each event belongs to.
        shown_ts: (n,) event time of that impression (the event's own ts for impressions).
        clicked: (n,) whether that impression is clicked (the label a join should find).
        codes: (n + m,) action code per output record, ``MALFORMED_CODE`` for malformed.
        malformed: the m malformed records in output order.
    """

    first_seq: int
    ts: np.ndarray
    users: np.ndarray
    items: np.ndarray
    conditions: np.ndarray
    actions: np.ndarray
    probs: np.ndarray
    shown_ts: np.ndarray
    clicked: np.ndarray
    codes: np.ndarray
    malformed: list[Malformed]

    def __len__(self) -> int:
        return len(self.codes)

    @functools.cached_property
    def bad_at(self) -> np.ndarray:
        """(m,) output positions of the malformed records."""
        return np.flatnonzero(self.codes == MALFORMED_CODE)

    def good_range(self, start: int, stop: int) -> tuple[int, int]:
        """Indices into the good-event columns covered by output records [start, stop)."""
        if not self.malformed:
            return start, stop
        before_start, before_stop = np.searchsorted(self.bad_at, [start, stop])
        return start - int(before_start), stop - int(before_stop)


class WireFormat:
    """Encodes :class:`Batch` slices as Kafka records or :class:`Event` objects.

    Args:
        seed: the generator seed (event ids are ``g<seed>-<seq>``).
        names: condition / category string per category index.
        n_users: users of the world (their Kafka keys are precomputed).
    """

    def __init__(self, seed: int, names: list[str], n_users: int) -> None:
        self.names = names
        self.prefix = f"g{seed}-"
        self.features = [MappingProxyType({"category": n}) for n in names]
        self.heads = [
            [
                b'{"action":"%s","condition":"%s","event_id":"g%d-' % (a.encode(), n.encode(), seed)
                for n in names
            ]
            for a in ACTIONS
        ]
        self.mids = [b'","features":{"category":"%s"},"item_id":"' % n.encode() for n in names]
        self.user_keys = [b"%d" % u for u in range(n_users)]

    def pairs(self, b: Batch, start: int, stop: int) -> list[tuple[bytes, bytes]]:
        """Output records [start, stop) as ``(key, value)``."""
        g0, g1 = b.good_range(start, stop)
        heads, mids, keys = self.heads, self.mids, self.user_keys
        good = [
            (
                keys[u],
                b'%s%d%s%d","ts":%d,"user_id":"%s"}' % (heads[a][c], seq, mids[c], i, t, keys[u]),
            )
            for a, c, i, u, t, seq in _rows(b, g0, g1)
        ]
        return _interleave(b, start, stop, good, lambda m: (m.key, m.value))

    def events(self, b: Batch, start: int, stop: int) -> list[Event | Malformed]:
        """Output records [start, stop) as :class:`Event` or :class:`Malformed`."""
        g0, g1 = b.good_range(start, stop)
        names, feats, prefix = self.names, self.features, self.prefix
        good: list[Any] = [
            Event(f"{prefix}{seq}", str(u), str(i), ACTIONS[a], names[c], t, feats[c])
            for a, c, i, u, t, seq in _rows(b, g0, g1)
        ]
        return _interleave(b, start, stop, good, lambda m: m)

    def as_dict(self, cols: dict[str, np.ndarray], j: int, event_id: str) -> dict[str, Any]:
        """Good event ``j`` of the columns as a wire-order dict (the base of a malformed
        record)."""
        name = self.names[int(cols["conditions"][j])]
        return {
            "action": ACTIONS[int(cols["actions"][j])],
            "condition": name,
            "event_id": event_id,
            "features": {"category": name},
            "item_id": str(int(cols["items"][j])),
            "ts": int(cols["ts"][j]),
            "user_id": str(int(cols["users"][j])),
        }


def _rows(b: Batch, g0: int, g1: int) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(action, condition, item, user, ts, seq) of good events g0..g1 as Python ints."""
    return zip(
        b.actions[g0:g1].tolist(),
        b.conditions[g0:g1].tolist(),
        b.items[g0:g1].tolist(),
        b.users[g0:g1].tolist(),
        b.ts[g0:g1].tolist(),
        range(b.first_seq + g0, b.first_seq + g1),
        strict=True,
    )


def _interleave(b: Batch, start: int, stop: int, good: list[Any], convert: Any) -> list[Any]:
    """Put the malformed records of [start, stop) between the good ones, in output order."""
    if not b.malformed:
        return good
    bad_at = b.bad_at
    lo, hi = np.searchsorted(bad_at, [start, stop])
    out: list[Any] = []
    g = 0
    for k in range(int(lo), int(hi)):
        pos = int(bad_at[k]) - start
        take = pos - len(out)
        out.extend(good[g : g + take])
        g += take
        out.append(convert(b.malformed[k]))
    out.extend(good[g:])
    return out
