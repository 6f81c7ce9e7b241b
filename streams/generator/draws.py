"""Page views as arrays: the random draws of a run of views and the slates they map to.

:class:`Draws` holds every random number of a chunk before the world maps it, so a chunk
that straddles the drift point is re-mapped with the drifted tastes from the same draws;
:class:`Views` is the result. :func:`dedupe` turns with-replacement popularity draws into
slates of distinct items (successive sampling without replacement, Plackett-Luce).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Draws:
    """The uniform random numbers of a run of page views, drawn before the world maps them
    to slates, so the same draws can be re-mapped with the drifted tastes.

    Args:
        user / explore / slot / explore_cat: (P,) who browses, whether they explore, which
            interest, which random category.
        slate: (P, M) candidate positions within the condition's popularity law.
        fill: (P, S) uniform positions in the condition, used when the popularity draws
            hold fewer than S distinct items (a category dominated by one hit).
        click: (P, S) compared with the click probability.
    """

    user: np.ndarray
    explore: np.ndarray
    slot: np.ndarray
    explore_cat: np.ndarray
    slate: np.ndarray
    fill: np.ndarray
    click: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, slate_size: int) -> Draws:
        candidates = 2 * slate_size + 4  # with-replacement draws, deduplicated to the slate
        return cls(
            rng.random(n),
            rng.random(n),
            rng.random(n),
            rng.random(n),
            rng.random((n, candidates)),
            rng.random((n, slate_size)),
            rng.random((n, slate_size)),
        )

    def rows(self, start: int) -> Draws:
        return Draws(
            self.user[start:],
            self.explore[start:],
            self.slot[start:],
            self.explore_cat[start:],
            self.slate[start:],
            self.fill[start:],
            self.click[start:],
        )


@dataclass(frozen=True)
class Views:
    """Page views: who browsed which condition, what they were shown and what they clicked.

    Args:
        users / conditions: (P,) int64.
        items: (P, S) int64 slate, -1 in empty slots (a category with few distinct items).
        probs: (P, S) float64 ground-truth click probability (0 in empty slots).
        clicks: (P, S) bool.
    """

    users: np.ndarray
    conditions: np.ndarray
    items: np.ndarray
    probs: np.ndarray
    clicks: np.ndarray

    def concat(self, other: Views) -> Views:
        return Views(
            *(
                np.concatenate([a, b])
                for a, b in zip(
                    (self.users, self.conditions, self.items, self.probs, self.clicks),
                    (other.users, other.conditions, other.items, other.probs, other.clicks),
                    strict=True,
                )
            )
        )

    def head(self, n: int) -> Views:
        return Views(
            self.users[:n], self.conditions[:n], self.items[:n], self.probs[:n], self.clicks[:n]
        )


def dedupe(candidates: np.ndarray, size: int) -> np.ndarray:
    """(P, M) item draws -> (P, size): the first ``size`` distinct items of each row in draw
    order, -1 where a row has fewer distinct items."""
    order = np.argsort(candidates, axis=1, kind="stable")
    ranked = np.take_along_axis(candidates, order, axis=1)
    first_sorted = np.ones(ranked.shape, dtype=bool)
    first_sorted[:, 1:] = ranked[:, 1:] != ranked[:, :-1]  # earliest of equal draws
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    keep = first & (np.cumsum(first, axis=1) <= size)
    cols = np.argsort(~keep, axis=1, kind="stable")[:, :size]  # kept columns, in draw order
    out = np.take_along_axis(candidates, cols, axis=1)
    out[~np.take_along_axis(keep, cols, axis=1)] = -1
    return out
