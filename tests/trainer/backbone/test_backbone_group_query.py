"""Group query (N conditions after one shared prefix, one pass) equals N separate queries;
unknown conditions and empty sequences; item embeddings for every item."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from support.backbone import make_pairs, make_seq
from support.metrics import sample

from monitoring.metrics import Metrics
from streams.contracts.ids import stable_id
from trainer.backbone.config import BackboneConfig
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.group_query import (
    compute_vectors,
    compute_vectors_one_at_a_time,
    item_embeddings,
    query_condition_ids,
)
from trainer.backbone.tokens import Vocabs

torch.set_num_threads(1)


def _model(**kw: object) -> tuple[LumBackbone, list[tuple[int, np.ndarray]]]:
    cfg = BackboneConfig(dim=16, heads=2, layers=2, max_len=12, dropout=0.0, **kw)  # type: ignore[arg-type]
    pairs = make_pairs(n_users=9, max_len=12, seed=11)
    torch.manual_seed(1)
    return LumBackbone(cfg, Vocabs.build([s for _, s in pairs], cfg)).double(), pairs


@pytest.mark.parametrize("attention", ["softmax", "hstu"])
def test_group_query_equals_one_condition_at_a_time(attention: str) -> None:
    model, pairs = _model(attention=attention)
    conds = np.array([1000, 1001, 1002, 1003])  # all four known conditions
    now = np.array([int(s["ts"][-1]) + 5_000 * (i + 1) for i, (_, s) in enumerate(pairs)])
    users, grouped = compute_vectors(model, pairs, conds, now_ms=now, batch_users=4)
    users2, single = compute_vectors_one_at_a_time(model, pairs, conds, now_ms=now)
    assert users.tolist() == users2.tolist() == [u for u, _ in pairs]
    assert grouped.shape == (len(pairs), 4, 16)
    torch.testing.assert_close(grouped, single, rtol=1e-9, atol=1e-11)
    # different conditions give different vectors: the condition token matters
    assert (grouped[:, 0] - grouped[:, 1]).abs().max() > 1e-3
    torch.testing.assert_close(grouped.norm(dim=-1), torch.ones(len(pairs), 4, dtype=torch.float64))


def test_per_user_conditions_and_several_fields() -> None:
    model, pairs = _model(condition_fields=("cond", "cat"))
    conds = np.stack(
        [np.array([[1000 + (i + k) % 4, 2000 + k] for k in range(3)]) for i in range(len(pairs))]
    )  # (U, 3, 2)
    _, grouped = compute_vectors(model, pairs, conds)
    _, single = compute_vectors_one_at_a_time(model, pairs, conds)
    torch.testing.assert_close(grouped, single, rtol=1e-9, atol=1e-11)


def test_unknown_conditions_use_the_oov_row_with_a_count_and_a_warning(
    caplog: pytest.LogCaptureFixture, metrics: Metrics
) -> None:
    model, pairs = _model()
    with caplog.at_level(logging.WARNING):
        _, vecs = compute_vectors(
            model, pairs, np.array([1000, stable_id("never-seen")]), metrics=metrics
        )
    assert torch.isfinite(vecs).all()
    assert sample(metrics, "lumstream_backbone_unknown_conditions_total") == len(pairs)
    assert "unknown to this version" in caplog.text


def test_empty_sequences_are_skipped_and_counted(metrics: Metrics) -> None:
    model, pairs = _model()
    mixed = [pairs[0], (555, make_seq([])), pairs[1]]
    users, vecs = compute_vectors(model, mixed, np.array([1000]), metrics=metrics)
    assert users.tolist() == [pairs[0][0], pairs[1][0]]
    assert vecs.shape[0] == 2
    assert sample(metrics, "lumstream_backbone_sequences_skipped_total", reason="empty") == 1
    one_event = [(7, make_seq([3]))]  # a one-event prefix is a valid query
    assert compute_vectors(model, one_event, np.array([1000]))[1].shape == (1, 1, 16)


def test_next_item_model_repeats_its_single_vector() -> None:
    model, pairs = _model(objective="next_item")
    _, vecs = compute_vectors(model, pairs, np.array([1000, 1001, 1002]))
    assert vecs.shape == (len(pairs), 3, 16)
    torch.testing.assert_close(vecs[:, 0], vecs[:, 2])
    _, single = compute_vectors_one_at_a_time(model, pairs, np.array([1000]))
    torch.testing.assert_close(vecs[:, :1], single, rtol=1e-9, atol=1e-11)


def test_item_embeddings_cover_every_item() -> None:
    model, _ = _model()
    ids, emb = item_embeddings(model, batch=7)
    assert ids.tolist() == model.vocabs.items.ids.tolist()
    assert emb.shape == (len(ids), 16)
    rows = torch.from_numpy(model.vocabs.items.lookup(ids[:3]))
    torch.testing.assert_close(
        emb[:3], torch.nn.functional.normalize(model.item_embeddings(rows), dim=-1)
    )


def test_query_condition_ids_from_config_or_most_frequent() -> None:
    model, _ = _model(query_conditions=("Comedy", "1001"), query_top=2)
    assert query_condition_ids(model).tolist() == [[stable_id("Comedy")], [1001]]
    model, _ = _model(query_top=2)
    top = query_condition_ids(model)
    assert top.shape == (2, 1)
    assert set(top[:, 0].tolist()) <= {1000, 1001, 1002, 1003}
    model, _ = _model(query_conditions=("a|b",))
    with pytest.raises(ValueError, match="expected 1"):
        query_condition_ids(model)
