"""Packing vs the padded reference: same loss and gradients (float64, rtol 1e-9 / atol 1e-11).

Both layouts hold the same users; only the rows and the masks differ. The padded rows use
the plain causal mask, the packed rows the block-diagonal segment mask with positions reset
per user. Tolerance: float64 round-off of sums taken in a different order (observed
differences are ~1e-15 relative)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.backbone import grads, make_pairs

from trainer.backbone.config import BackboneConfig
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.packing import (
    collate_packed,
    collate_padded,
    fill_rate,
    pack_rows,
    padding_bound,
)
from trainer.backbone.tokens import Vocabs
from trainer.backbone.train import make_sampler, step_candidates, step_loss

torch.set_num_threads(1)
RTOL, ATOL = 1e-9, 1e-11


def test_pack_rows_first_fit_decreasing() -> None:
    assert pack_rows([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]
    assert pack_rows([8, 8], 8) == [[0], [1]]
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([9], 8)


def test_padding_bound_is_padded_over_real_tokens() -> None:
    assert padding_bound([4, 1, 1, 2], batch_users=2) == pytest.approx((4 * 2 + 2 * 2) / 8)
    assert padding_bound([3, 3], batch_users=2) == 1.0


@pytest.mark.parametrize(
    ("objective", "attention", "loss"),
    [
        ("lum", "softmax", "full"),
        ("lum", "hstu", "full"),
        ("next_item", "softmax", "full"),
        ("next_item", "hstu", "full"),
        ("lum", "softmax", "sampled"),
        ("next_item", "softmax", "sampled"),
        ("lum", "softmax", "in_batch"),
    ],
)
def test_packed_and_padded_give_the_same_loss_and_gradients(
    objective: str, attention: str, loss: str
) -> None:
    cfg = BackboneConfig(
        objective=objective,
        attention=attention,
        loss=loss,
        sampled_negatives=8,
        logq_correction=True,
        item_target_weight=0.5,
        dim=16,
        heads=2,
        layers=2,
        max_len=12,
        dropout=0.0,
        condition_fields=("cond", "cat"),
    )
    pairs = make_pairs(n_users=10, max_len=12, seed=3)
    torch.manual_seed(0)
    model = LumBackbone(cfg, Vocabs.build([s for _, s in pairs], cfg)).double().train()
    users = [model.tokenizer.encode(s) for _, s in pairs]
    targets = torch.from_numpy(np.concatenate([u.target for u in users]))
    cand = step_candidates(cfg, len(model.vocabs.items), targets, make_sampler(cfg, model))
    n = float((targets > 0).sum())
    results = []
    for batch in (collate_padded(users), collate_packed(users, row_len=2 * cfg.max_len)):
        model.zero_grad()
        loss = step_loss(model, batch, cand, cfg, n)
        loss.backward()
        results.append((loss.detach(), grads(model), batch))
    (pad_loss, pad_grads, pad_batch), (pack_loss, pack_grads, pack_batch) = results
    assert pack_batch.kind.shape[0] < pad_batch.kind.shape[0]  # packing saved rows
    assert fill_rate(pack_batch) > fill_rate(pad_batch)
    torch.testing.assert_close(pack_loss, pad_loss, rtol=RTOL, atol=ATOL)
    assert pad_grads.keys() == pack_grads.keys()
    for name, g in pad_grads.items():
        torch.testing.assert_close(pack_grads[name], g, rtol=RTOL, atol=ATOL, msg=name)


def test_packed_outputs_equal_padded_outputs_per_token() -> None:
    cfg = BackboneConfig(dim=16, heads=4, layers=1, max_len=10, dropout=0.0)
    pairs = make_pairs(n_users=6, max_len=10, seed=5)
    model = LumBackbone(cfg, Vocabs.build([s for _, s in pairs], cfg)).double().eval()
    users = [model.tokenizer.encode(s) for _, s in pairs]
    pad, pack = collate_padded(users), collate_packed(users)
    out_pad, out_pack = model.encode(pad), model.encode(pack)
    for i, u in enumerate(users):
        a = out_pad[pad.owner == i]
        b = out_pack[pack.owner == i]
        assert len(a) == len(b) == len(u)
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
