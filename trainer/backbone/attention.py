"""Attention masks for padded, packed and group-query rows, and the two attention kinds.

Masks are (B, T, T) booleans, True where token i (row) may attend to token j (column):

- :func:`padded_mask` — the reference: one user per row, causal, padding keys hidden;
- :func:`segment_mask` — the general one: tokens attend within their own user (segment),
  causally, and query tokens are visible only to themselves (group query, LUM §4.2).

Every row keeps at least its diagonal, so padding rows never produce NaN. There is no
dropout on attention weights (on a CPU it costs more than the attention itself); the blocks
apply dropout to their residual branches.

Attention kinds (``BackboneConfig.attention``):

- softmax: ``torch.nn.functional.scaled_dot_product_attention`` with the explicit mask
  (:func:`softmax_attention`), checked against the plain formula in
  :func:`softmax_attention_reference`;
- hstu: pointwise ``SiLU(q·k / sqrt(d)) / n`` weights (no row-wise softmax), masked, with a
  fixed ``n`` so that a token's output does not depend on how rows are laid out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def padded_mask(lengths: Tensor, t: int) -> Tensor:
    """Causal mask of padded rows: (B,) lengths -> (B, T, T)."""
    idx = torch.arange(t, device=lengths.device)
    causal = idx.view(1, t, 1) >= idx.view(1, 1, t)  # (1, T, T)
    valid = idx.view(1, 1, t) < lengths.view(-1, 1, 1)  # (B, 1, T) key is a real token
    return (causal & valid) | torch.eye(t, dtype=torch.bool, device=lengths.device)


def segment_mask(segment: Tensor, query: Tensor) -> Tensor:
    """Block-diagonal causal mask of packed rows.

    Args:
        segment: (B, T) user slot of each token within its row, -1 on padding.
        query: (B, T) True on query tokens (seen only by themselves).
    Returns:
        (B, T, T) bool.
    """
    t = segment.shape[1]
    idx = torch.arange(t, device=segment.device)
    eye = idx.view(1, t, 1) == idx.view(1, 1, t)  # (1, T, T)
    causal = idx.view(1, t, 1) >= idx.view(1, 1, t)
    same = (segment.unsqueeze(2) == segment.unsqueeze(1)) & (segment >= 0).unsqueeze(1)
    visible_key = ~query.unsqueeze(1)  # (B, 1, T)
    return (same & causal & visible_key) | eye


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Fast path: SDPA with an explicit boolean mask. q, k, v (B, H, T, Dh); mask (B, T, T)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))


def softmax_attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """The textbook formula softmax(q k^T / sqrt(Dh), masked) v, for tests."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    return scores.softmax(dim=-1) @ v  # (B, H, T, Dh)


def hstu_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, n: int) -> Tensor:
    """HSTU pointwise attention: SiLU(q k^T / sqrt(Dh)) / n on allowed pairs, times v.

    Args:
        q, k, v: (B, H, T, Dh).
        mask: (B, T, T) bool.
        n: normaliser, a constant (the longest user sequence), so packed and padded rows
            give the same outputs.
    """
    w = F.silu(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])) / n  # (B, H, T, T)
    return (w * mask.unsqueeze(1)) @ v  # (B, H, T, Dh)
