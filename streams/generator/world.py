"""The generator's ground truth: items, categories, users and condition-dependent tastes.

The click model (docs/generator.md has the derivation)::

    logit(u, i, c) = b0 + b_i + INTEREST_BONUS * m(u, c) + affinity_scale * a(u, i, c)
    a(u, i, c)     = < sqrt(rho) * m(u, c) * p[u, c] + sqrt(1 - rho) * g[u] , v[i] > / sqrt(D)
    P(click)       = sigmoid(logit)

with ``m(u, c) = 1`` when the condition (the browsed category) is one of the user's
interests, ``p[u, c]`` a taste vector drawn independently per (user, interest category),
``g[u]`` a taste shared by all conditions, ``v[i]`` the item vector, ``rho`` =
``condition_share`` and ``b0`` solved so that the mean CTR over generated slates is
``base_ctr``. Drift re-draws interests and ``p`` for a share of users (a second
:class:`Tastes`).

Example:
    >>> w = World(GeneratorConfig(users=50, items=200, categories=4))
    >>> float(w.click_prob(3, 17, w.item_category[17])) < 1.0
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.settings import ConfigError
from streams.config import GeneratorConfig
from streams.generator.draws import Draws, Views, dedupe

INTEREST_BONUS = 0.7  # logit bonus when the condition is one of the user's interests
ITEM_BIAS_STD = 0.5  # std of the per-item logit bias b_i
ACTIVITY_SIGMA = 1.0  # lognormal sigma of user activity (share of page views per user)
CATEGORY_SKEW = 0.5  # Zipf exponent of category appeal when interests are drawn
INTEREST_CONCENTRATION = 2.0  # Dirichlet parameter of how evenly a user browses interests
CALIBRATION_VIEWS = 8192  # page views sampled to solve the intercept b0 for base_ctr
LOGIT_CLIP = 40.0  # keeps exp() finite for base_ctr of 0 or 1
CATEGORY_PREFIX = "cat"

# Child seeds of GeneratorConfig.seed: each part of the truth has its own stream, so
# changing one size (e.g. users) leaves the other parts as they were.
_ITEMS, _USERS, _TASTES, _DRIFT, _CALIBRATION = range(5)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -LOGIT_CLIP, LOGIT_CLIP)))


def child_rng(seed: int, part: int) -> np.random.Generator:
    """The random stream of one part of the generator (stable across releases of numpy's
    PCG64 and SeedSequence)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, part])))


@dataclass(frozen=True)
class Tastes:
    """Every user's condition-dependent tastes at one epoch (before or after drift).

    Args:
        interests: (U, K) int64, the categories each user cares about.
        interest_cdf: (U, K) float64, cumulative weights of browsing each interest.
        prefs: (U, K, D) float32, the taste vector p[u, c] for each interest c.
    """

    interests: np.ndarray
    interest_cdf: np.ndarray
    prefs: np.ndarray


def _topk_categories(rng: np.random.Generator, n: int, weights: np.ndarray, k: int) -> np.ndarray:
    """(n, k) distinct categories per row, drawn without replacement by ``weights``
    (Gumbel top-k)."""
    keys = np.log(weights)[None, :] + rng.gumbel(size=(n, weights.size))
    return np.argsort(-keys, axis=1, kind="stable")[:, :k]


class World:
    """Users, items and categories with their condition-dependent tastes (the ground truth).

    Args:
        cfg: sizes, the Zipf exponent, the CTR target and the taste knobs.
    Raises:
        ConfigError: when the sizes cannot make a world (fewer items than categories).
    """

    def __init__(self, cfg: GeneratorConfig) -> None:
        if cfg.items < cfg.categories:
            raise ConfigError(
                f"generator.items ({cfg.items}) must be at least "
                f"generator.categories ({cfg.categories})"
            )
        self.cfg = cfg
        self.n_users, self.n_items, self.n_categories = cfg.users, cfg.items, cfg.categories
        self.n_interests = min(cfg.interests_per_user, cfg.categories)
        self.dim = cfg.latent_dim
        self.slate_size = cfg.slate_size
        self._build_items(child_rng(cfg.seed, _ITEMS))
        self._build_users(child_rng(cfg.seed, _USERS))
        before = self._draw_tastes(child_rng(cfg.seed, _TASTES), self.n_users)
        self.drifted_users = np.zeros(self.n_users, dtype=bool)
        after = before
        if cfg.drift_at >= 0 and cfg.drift_share > 0:
            rng = child_rng(cfg.seed, _DRIFT)
            self.drifted_users = rng.random(self.n_users) < cfg.drift_share
            fresh = self._draw_tastes(rng, int(self.drifted_users.sum()))
            after = Tastes(
                *(
                    _replace_rows(a, self.drifted_users, b)
                    for a, b in zip(
                        (before.interests, before.interest_cdf, before.prefs),
                        (fresh.interests, fresh.interest_cdf, fresh.prefs),
                        strict=True,
                    )
                )
            )
        self.tastes = (before, after)
        self.intercept = 0.0
        self.intercept = self._calibrate(child_rng(cfg.seed, _CALIBRATION))

    # -- construction --------------------------------------------------------------------
    def _build_items(self, rng: np.random.Generator) -> None:
        n, c = self.n_items, self.n_categories
        cats = np.concatenate([np.arange(c), rng.integers(0, c, size=n - c)])
        self.item_category = rng.permutation(cats).astype(np.int64)  # (I,)
        ranks = rng.permutation(n)
        pop = (ranks + 1.0) ** -self.cfg.popularity_alpha
        self.item_popularity = pop / pop.sum()  # (I,) Zipf law over a random order
        self.item_bias = rng.normal(0.0, ITEM_BIAS_STD, size=n)  # (I,)
        self.item_vectors = rng.standard_normal((n, self.dim)).astype(np.float32)  # (I, D)
        # Items sorted by category with a global cumulative popularity: a draw inside
        # category c is a search in [lo[c], hi[c]) of that one array.
        self._by_category = np.argsort(self.item_category, kind="stable")
        counts = np.bincount(self.item_category, minlength=c)
        self._cat_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._cat_count = counts
        self._pop_cdf = np.cumsum(self.item_popularity[self._by_category])
        cdf0 = np.concatenate([[0.0], self._pop_cdf])
        self._cat_lo = cdf0[self._cat_start]
        self._cat_hi = cdf0[self._cat_start + counts]

    def _build_users(self, rng: np.random.Generator) -> None:
        activity = rng.lognormal(0.0, ACTIVITY_SIGMA, size=self.n_users)
        self.user_activity = activity / activity.sum()  # (U,) share of page views
        self._user_cdf = np.cumsum(self.user_activity)
        self.user_taste = rng.standard_normal((self.n_users, self.dim)).astype(np.float32)
        appeal = (np.arange(self.n_categories) + 1.0) ** -CATEGORY_SKEW
        self.category_appeal = rng.permutation(appeal / appeal.sum())  # (C,)

    def _draw_tastes(self, rng: np.random.Generator, n: int) -> Tastes:
        k = self.n_interests
        interests = _topk_categories(rng, n, self.category_appeal, k).astype(np.int64)
        weights = (
            rng.dirichlet(np.full(k, INTEREST_CONCENTRATION), size=n) if n else np.zeros((0, k))
        )
        cdf = np.cumsum(weights, axis=1)
        cdf[:, -1] = 1.0
        prefs = rng.standard_normal((n, k, self.dim)).astype(np.float32)
        return Tastes(interests, cdf, prefs)

    def _calibrate(self, rng: np.random.Generator) -> float:
        """The intercept b0 that makes the mean click probability of slates base_ctr."""
        target = self.cfg.base_ctr
        if target <= 0.0 or target >= 1.0:
            return -LOGIT_CLIP if target <= 0.0 else LOGIT_CLIP
        draws = Draws.draw(rng, CALIBRATION_VIEWS, self.slate_size)
        users, conds, items = self._slates(draws, self.tastes[0])
        rest = self._logits(users[:, None], items, conds[:, None], self.tastes[0])[items >= 0]
        b0 = float(np.log(target / (1.0 - target)) - np.median(rest))
        for _ in range(50):  # Newton on mean(sigmoid(rest + b0)) = target, steps bounded
            p = sigmoid(rest + b0)
            gap = float(p.mean()) - target
            if abs(gap) < 1e-9:
                break
            b0 -= float(np.clip(gap / max(float((p * (1.0 - p)).mean()), 1e-12), -4.0, 4.0))
        return float(np.clip(b0, -LOGIT_CLIP, LOGIT_CLIP))

    # -- the click model -----------------------------------------------------------------
    def _logits(
        self, users: np.ndarray, items: np.ndarray, conditions: np.ndarray, tastes: Tastes
    ) -> np.ndarray:
        """Reference logit, elementwise over broadcast (users, items, conditions)."""
        users, items, conditions = np.broadcast_arrays(users, items, conditions)
        safe_items = np.maximum(items, 0)
        match = tastes.interests[users] == conditions[..., None]  # (..., K)
        inside = match.any(axis=-1)  # (...,)
        slot = match.argmax(axis=-1)  # (...,)
        rho = self.cfg.condition_share
        taste = (
            np.sqrt(rho) * inside[..., None] * tastes.prefs[users, slot]
            + np.sqrt(1.0 - rho) * self.user_taste[users]
        )  # (..., D)
        affinity = (taste * self.item_vectors[safe_items]).sum(-1) / np.sqrt(self.dim)
        return (
            self.intercept
            + self.item_bias[safe_items]
            + INTEREST_BONUS * inside
            + self.cfg.affinity_scale * affinity
        )

    def click_prob(
        self,
        users: np.ndarray | int,
        items: np.ndarray | int,
        conditions: np.ndarray | int,
        drifted: np.ndarray | bool = False,
    ) -> np.ndarray:
        """Ground-truth P(click | user, item, condition), broadcast over the arguments.

        Args:
            users / items / conditions: indices (``int(user_id)``, ``int(item_id)``,
                :meth:`condition_index` of the condition string).
            drifted: whether the impression lies after the drift point
                (``StreamStats.drift_ts_ms``); an array selects per element.
        """
        u, i, c = (np.asarray(x, dtype=np.int64) for x in (users, items, conditions))
        for name, idx, n in (
            ("user", u, self.n_users),
            ("item", i, self.n_items),
            ("condition", c, self.n_categories),
        ):
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"{name} index outside [0, {n})")
        d = np.asarray(drifted, dtype=bool)
        if d.ndim == 0:
            return sigmoid(self._logits(u, i, c, self.tastes[int(d)]))
        before = sigmoid(self._logits(u, i, c, self.tastes[0]))
        after = sigmoid(self._logits(u, i, c, self.tastes[1]))
        return np.where(d, after, before)

    # -- page views ----------------------------------------------------------------------
    def _slates(
        self, draws: Draws, tastes: Tastes, size: int | None = None
    ) -> tuple[np.ndarray, ...]:
        """Users (P,), conditions (P,) and deduplicated slates (P, S) for the draws (S =
        ``size``, default the slate size)."""
        n_users = self.n_users
        users = np.minimum(np.searchsorted(self._user_cdf, draws.user, side="right"), n_users - 1)
        slot = np.minimum(
            (draws.slot[:, None] > tastes.interest_cdf[users]).sum(axis=1), self.n_interests - 1
        )
        own = tastes.interests[users, slot]
        random_cat = np.minimum(
            (draws.explore_cat * self.n_categories).astype(np.int64), self.n_categories - 1
        )
        conds = np.where(draws.explore < self.cfg.explore_prob, random_cat, own)  # (P,)
        lo, hi = self._cat_lo[conds, None], self._cat_hi[conds, None]
        start, count = self._cat_start[conds, None], self._cat_count[conds, None]
        popular = np.searchsorted(self._pop_cdf, lo + draws.slate * (hi - lo), side="right")
        uniform = start + (draws.fill * count).astype(np.int64)
        pos = np.clip(np.concatenate([popular, uniform], axis=1), start, start + count - 1)
        return users, conds, dedupe(self._by_category[pos], size or self.slate_size)

    def views(self, draws: Draws, drifted: bool = False) -> Views:
        """Map the draws of P page views to slates and clicks (vectorised fast path of
        :meth:`click_prob`, tested against it)."""
        tastes = self.tastes[int(drifted)]
        users, conds, items = self._slates(draws, tastes)
        valid = items >= 0  # (P, S)
        safe_items = np.maximum(items, 0)
        match = tastes.interests[users] == conds[:, None]  # (P, K)
        inside = match.any(axis=1)  # (P,)
        slot = match.argmax(axis=1)
        rho = self.cfg.condition_share
        taste = (
            np.sqrt(rho) * inside[:, None] * tastes.prefs[users, slot]
            + np.sqrt(1.0 - rho) * self.user_taste[users]
        )  # (P, D)
        affinity = np.einsum("pd,psd->ps", taste, self.item_vectors[safe_items]) / np.sqrt(
            self.dim
        )  # (P, S)
        logits = (
            self.intercept
            + self.item_bias[safe_items]
            + INTEREST_BONUS * inside[:, None]
            + self.cfg.affinity_scale * affinity
        )
        probs = np.where(valid, sigmoid(logits), 0.0)
        return Views(users, conds, items, probs, draws.click < probs)

    def page_views(
        self, rng: np.random.Generator, n: int, candidates: int, drifted: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` page views of a client that ranks for itself: who browses (by activity),
        which condition (their interests, or a random category with ``explore_prob``) and
        up to ``candidates`` distinct items of that condition drawn by popularity.

        Returns:
            users (n,), conditions (n,), candidate items (n, candidates), -1 in empty slots.
        """
        draws = Draws.draw(rng, n, candidates)
        users, conds, items = self._slates(draws, self.tastes[int(drifted)], candidates)
        return users, conds, items

    # -- names on the wire ---------------------------------------------------------------
    @staticmethod
    def condition_name(category: int) -> str:
        """The condition / category string of a category index (``cat3``)."""
        return f"{CATEGORY_PREFIX}{category}"

    def condition_index(self, name: str) -> int:
        """Inverse of :meth:`condition_name`; raises ValueError for a foreign condition."""
        if not name.startswith(CATEGORY_PREFIX) or not name[len(CATEGORY_PREFIX) :].isdigit():
            raise ValueError(f"condition {name!r} is not a generator category")
        index = int(name[len(CATEGORY_PREFIX) :])
        if index >= self.n_categories:
            raise ValueError(f"condition {name!r} is outside the {self.n_categories} categories")
        return index


def _replace_rows(base: np.ndarray, mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = base.copy()
    out[mask] = rows
    return out
