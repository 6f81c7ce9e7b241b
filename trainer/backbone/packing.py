"""Arrange users' tokens into rows: packed (many users per row) or padded (the reference).

Packing (LUM §4.1.3): most sequences are far shorter than the longest, so one user per row
wastes most of each row on padding. :func:`pack_rows` places users into rows of
``row_len`` tokens by first-fit decreasing; :func:`collate_packed` gives every user its own
segment (block-diagonal causal mask) and positions starting at 0, so each user's outputs
equal those of :func:`collate_padded`, the one-user-per-row reference. The best possible
speed-up of packing is ``padded tokens / real tokens`` (:func:`padding_bound`).

Example:
    >>> pack_rows([5, 3, 4, 2], row_len=8)
    [[0, 1], [2, 3]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from trainer.backbone.attention import padded_mask, segment_mask
from trainer.backbone.tokens import PAD, TokenBatch, UserTokens

_FIELDS = ("kind", "item", "cat", "action", "gap", "pos", "target")


def pack_rows(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """First-fit decreasing: user indices per row, each row's total <= ``row_len``.

    Raises:
        ValueError: a user longer than ``row_len``.
    """
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        if n > row_len:
            raise ValueError(f"user of {n} tokens does not fit a row of {row_len}")
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(row_len - n)
    return [sorted(r) for r in rows]


def _empty(b: int, t: int, f: int) -> dict[str, np.ndarray]:
    out = {k: np.zeros((b, t), np.int64) for k in _FIELDS}
    out["cond"] = np.zeros((b, t, f), np.int64)
    out["query"] = np.zeros((b, t), bool)
    out["owner"] = np.full((b, t), -1, np.int64)
    out["segment"] = np.full((b, t), -1, np.int64)
    return out


def _place(
    arr: dict[str, np.ndarray], r: int, start: int, u: UserTokens, owner: int, segment: int
) -> None:
    end = start + len(u)
    for k in _FIELDS:
        arr[k][r, start:end] = getattr(u, k)
    arr["cond"][r, start:end] = u.cond
    arr["query"][r, start:end] = u.query
    arr["owner"][r, start:end] = owner
    arr["segment"][r, start:end] = segment


def _to_batch(arr: dict[str, np.ndarray], mask: torch.Tensor) -> TokenBatch:
    t = {k: torch.from_numpy(v) for k, v in arr.items() if k != "segment"}
    return TokenBatch(mask=mask, **t)


def _n_fields(users: Sequence[UserTokens]) -> int:
    return users[0].cond.shape[1] if users else 1


def collate_packed(users: Sequence[UserTokens], row_len: int | None = None) -> TokenBatch:
    """Pack ``users`` into rows of ``row_len`` tokens (default: the longest user).

    Every user is one segment: it attends only to itself, causally; query tokens are seen
    only by themselves. Positions come from the tokens (they start at 0 per user).
    """
    lengths = [len(u) for u in users]
    row_len = max(lengths, default=1) if row_len is None else row_len
    rows = pack_rows(lengths, row_len)
    t = max((sum(lengths[i] for i in r) for r in rows), default=1)
    arr = _empty(len(rows), t, _n_fields(users))
    for r, members in enumerate(rows):
        start = 0
        for slot, i in enumerate(members):
            _place(arr, r, start, users[i], i, slot)
            start += lengths[i]
    segment = torch.from_numpy(arr["segment"])
    return _to_batch(arr, segment_mask(segment, torch.from_numpy(arr["query"])))


def collate_padded(users: Sequence[UserTokens]) -> TokenBatch:
    """The reference: one user per row, padded to the longest, plain causal mask.

    Raises:
        ValueError: a user with more than one query token (that needs :func:`segment_mask`).
    """
    if any(int(u.query.sum()) > 1 for u in users):
        raise ValueError(
            "collate_padded: the causal reference mask holds one query token "
            "per user at most; use collate_packed for group queries"
        )
    lengths = [len(u) for u in users]
    t = max(lengths, default=1)
    arr = _empty(max(len(users), 1), t, _n_fields(users))
    for i, u in enumerate(users):
        _place(arr, i, 0, u, i, 0)
    lens = torch.as_tensor(lengths or [0])
    return _to_batch(arr, padded_mask(lens, t))


def padding_bound(lengths: Sequence[int], batch_users: int) -> float:
    """Best packing speed-up for users batched in this order: padded / real tokens.

    Padded batches take ``batch_users`` users at a time, each padded to the batch's longest.
    """
    lens = np.asarray(lengths, np.int64)
    padded = sum(
        int(lens[i : i + batch_users].max()) * len(lens[i : i + batch_users])
        for i in range(0, len(lens), batch_users)
    )
    return padded / max(int(lens.sum()), 1)


def fill_rate(batch: TokenBatch) -> float:
    """Share of the batch's token slots that hold real tokens."""
    return float((batch.kind != PAD).float().mean())
