"""Masks and attention kinds: SDPA fast path vs the textbook formula; packed masks vs
per-user attention."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.backbone.attention import (
    hstu_attention,
    padded_mask,
    segment_mask,
    softmax_attention,
    softmax_attention_reference,
)

torch.set_num_threads(1)


def test_padded_mask_is_causal_and_hides_padding_keys() -> None:
    m = padded_mask(torch.tensor([2, 3]), 3)
    assert m[0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert m[1].tolist() == [[True, False, False], [True, True, False], [True, True, True]]


def test_segment_mask_blocks_users_and_hides_queries_from_each_other() -> None:
    seg = torch.tensor([[0, 0, 0, 0, 1, 1, -1]])
    query = torch.tensor([[False, False, True, True, False, False, False]])
    m = segment_mask(seg, query)[0]
    assert m[2].tolist() == [True, True, True, False, False, False, False]
    assert m[3].tolist() == [True, True, False, True, False, False, False]  # not query 2
    assert m[5].tolist() == [False] * 4 + [True, True, False]  # user 1 sees only itself
    assert m[6].tolist() == [False] * 6 + [True]  # padding keeps its diagonal


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=4),
    st.integers(1, 3),
    st.sampled_from(["softmax", "hstu"]),
)
def test_packed_attention_equals_per_user_attention(
    lengths: list[int], heads: int, kind: str
) -> None:
    gen = torch.Generator().manual_seed(sum(lengths) * 7 + heads)
    t = sum(lengths) + 2  # two padding tokens at the end
    q, k, v = (torch.randn(1, heads, t, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    seg = torch.cat(
        [torch.full((n,), i) for i, n in enumerate(lengths)] + [torch.full((2,), -1)]
    ).view(1, t)
    mask = segment_mask(seg, torch.zeros(1, t, dtype=torch.bool))
    if kind == "softmax":
        packed = softmax_attention(q, k, v, mask)
        torch.testing.assert_close(packed, softmax_attention_reference(q, k, v, mask))
    else:
        packed = hstu_attention(q, k, v, mask, n=16)
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        own = padded_mask(torch.tensor([n]), n)
        if kind == "softmax":
            alone = softmax_attention_reference(q[:, :, sl], k[:, :, sl], v[:, :, sl], own)
        else:
            alone = hstu_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], own, n=16)
        torch.testing.assert_close(packed[:, :, sl], alone, rtol=1e-10, atol=1e-12)
        start += n


def test_padding_rows_stay_finite() -> None:
    q = k = v = torch.randn(2, 1, 4, 8)
    out = softmax_attention(q, k, v, padded_mask(torch.tensor([0, 2]), 4))
    assert torch.isfinite(out).all()
