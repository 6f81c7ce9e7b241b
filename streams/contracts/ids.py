"""Stable 63-bit integer ids for raw ids and condition strings.

Raw ids on the wire are strings (integers are accepted and normalised to their decimal
string). Downstream (sequence store, embedding tables) works with int64:

- the canonical decimal string of a non-negative integer below 2**62 (no sign, no
  leading zero: ``"42"``, ``"0"``) maps to that integer, so numeric ids (MovieLens, most
  production systems) stay readable;
- anything else maps to a keyed-free BLAKE2b hash in [2**62, 2**63), so it can never
  collide with a numeric id. That includes ``"042"``: it is a different string, so a
  different key on lum.events (another partition), so it must be a different id — one
  stable id never has state in two partition stores. The mapping is the same in every
  process and release.

Example:
    >>> stable_id("42"), stable_id("42") == stable_id("42")
    (42, True)
    >>> stable_id("Comedy") >= 2**62, stable_id("042") == stable_id("42")
    (True, False)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

NUMERIC_LIMIT = 1 << 62
_HASH_MASK = NUMERIC_LIMIT - 1


def stable_id(raw: str) -> int:
    """Map a raw id or condition string to a stable non-negative int64."""
    if raw.isdigit() and raw.isascii() and len(raw) <= 19 and (raw[0] != "0" or raw == "0"):
        value = int(raw)
        if value < NUMERIC_LIMIT:
            return value
    digest = hashlib.blake2b(raw.encode("utf-8"), digest_size=8).digest()
    return NUMERIC_LIMIT | (int.from_bytes(digest, "little") & _HASH_MASK)


_CACHE: dict[str, int] = {}
_CACHE_LIMIT = 1 << 21


def stable_ids(raw: Sequence[str]) -> np.ndarray:
    """(n,) int64 :func:`stable_id` of each string, memoised (ids repeat heavily)."""
    cache = _CACHE
    if len(cache) > _CACHE_LIMIT:
        cache.clear()
    try:
        return np.fromiter(map(cache.__getitem__, raw), np.int64, len(raw))
    except KeyError:
        for s in set(raw).difference(cache):
            cache[s] = stable_id(s)
        return np.fromiter(map(cache.__getitem__, raw), np.int64, len(raw))
