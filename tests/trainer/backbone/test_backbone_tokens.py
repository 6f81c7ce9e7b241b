"""Tokenisation {c1, i1, c2, i2, ...}, side features, token encoder and the config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.backbone import make_pairs, make_seq

from core.settings import ConfigError, build
from trainer.backbone.config import BackboneConfig
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.packing import collate_packed
from trainer.backbone.tokens import COND, ITEM, PAD, Tokenizer, Vocabs, gap_bucket

torch.set_num_threads(1)


def test_gap_buckets_are_log2_seconds_and_capped() -> None:
    ts = np.array([0, 0, 1000, 4000, 10**12])
    assert gap_bucket(ts, 16).tolist() == [0, 1, 2, 3, 15]
    assert gap_bucket(np.array([5]), 16, first_gap_ms=3000).tolist() == [3]


def test_lum_tokens_alternate_condition_and_item_with_targets_on_conditions() -> None:
    seq = make_seq([10, 11, 12], conds=[0, 1, 0])
    cfg = BackboneConfig()
    vocabs = Vocabs.build([seq], cfg)
    tok = Tokenizer(cfg, vocabs).encode(seq)
    rows = vocabs.items.lookup(np.array([10, 11, 12]))
    assert tok.kind.tolist() == [COND, ITEM] * 3
    assert tok.target[0::2].tolist() == rows.tolist()  # c_l predicts i_l
    assert tok.target[1::2].tolist() == [0, 0, 0]
    assert tok.item[1::2].tolist() == rows.tolist()
    assert tok.item[0::2].tolist() == [0, 0, 0]
    cond_rows = vocabs.conds[0].lookup(seq["cond"])
    assert tok.cond[0::2, 0].tolist() == cond_rows.tolist()
    assert tok.action[1::2].tolist() == [0, 1, 0]
    assert tok.pos.tolist() == list(range(6))


def test_next_item_tokens_are_items_only_predicting_the_next() -> None:
    seq = make_seq([10, 11, 12])
    cfg = BackboneConfig(objective="next_item")
    vocabs = Vocabs.build([seq], cfg)
    tok = Tokenizer(cfg, vocabs).encode(seq)
    assert tok.kind.tolist() == [ITEM] * 3
    assert tok.target.tolist() == [*vocabs.items.lookup(np.array([11, 12])).tolist(), 0]


def test_several_condition_fields_and_truncation_to_max_len() -> None:
    seq = make_seq(list(range(10)))
    cfg = BackboneConfig(condition_fields=("cond", "cat"), max_len=4)
    vocabs = Vocabs.build([seq], cfg)
    tok = Tokenizer(cfg, vocabs).encode(seq)
    assert len(tok) == 8
    assert tok.cond.shape == (8, 2)
    assert tok.item[1::2].tolist() == vocabs.items.lookup(np.arange(6, 10)).tolist()
    assert vocabs.combos.shape[1] == 2


def test_query_tokens_share_the_position_after_the_prefix() -> None:
    seq = make_seq([1, 2])
    cfg = BackboneConfig()
    vocabs = Vocabs.build([seq], cfg)
    q = Tokenizer(cfg, vocabs).encode_query(
        seq, np.array([[1], [2], [0]]), now_ms=int(seq["ts"][-1]) + 8000
    )
    assert q.kind.tolist() == [COND, ITEM, COND, ITEM, COND, COND, COND]
    assert q.pos.tolist() == [0, 1, 2, 3, 4, 4, 4]
    assert q.query.tolist() == [False] * 4 + [True] * 3
    assert q.gap[-1] == gap_bucket(np.array([0]), 16, 8000)[0]
    assert not q.target.any()


def test_item_embedding_is_the_item_projection_without_context() -> None:
    cfg = BackboneConfig(dim=8, heads=2, layers=1, dropout=0.0)
    pairs = make_pairs(n_users=3)
    model = LumBackbone(cfg, Vocabs.build([s for _, s in pairs], cfg)).eval()
    enc = model.tokens
    rows = torch.tensor([1, 2, 3])
    cat = enc.get_buffer("item_cat")[rows]
    zeros = torch.zeros(3, 2 * cfg.feature_dim)
    full = enc.item_proj(torch.cat([enc.item(rows), enc.cat(cat), zeros], -1))
    torch.testing.assert_close(model.item_embeddings(rows), full)


def test_padding_tokens_encode_to_zero() -> None:
    cfg = BackboneConfig(dim=8, heads=2, layers=1, dropout=0.0)
    pairs = make_pairs(n_users=4)
    model = LumBackbone(cfg, Vocabs.build([s for _, s in pairs], cfg)).eval()
    batch = collate_packed([model.tokenizer.encode(s) for _, s in pairs], row_len=64)
    x = model.tokens(batch)
    assert (batch.kind == PAD).any()
    assert x[batch.kind == PAD].abs().max() == 0


def test_config_rejects_bad_condition_fields_and_heads() -> None:
    with pytest.raises(ConfigError, match="condition_fields"):
        build(BackboneConfig, {"condition_fields": "cond,search"})
    with pytest.raises(ConfigError, match="condition_fields"):
        BackboneConfig(condition_fields=("cat", "cat"))
    with pytest.raises(ConfigError, match="divisible"):
        build(BackboneConfig, {"dim": "10", "heads": "3"})
    assert build(BackboneConfig, {"condition_fields": "cond,cat"}).condition_fields == (
        "cond",
        "cat",
    )
