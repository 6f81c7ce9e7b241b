"""The training loop: learns, skips bad sequences with counts, filters actions, warm-starts,
reads event logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.backbone import make_pairs, make_seq
from support.metrics import sample

from core.settings import ConfigError
from monitoring.metrics import Metrics
from streams.config import EventConfig
from streams.contracts.events import validate
from streams.contracts.ids import stable_id
from streams.sinks.events import JsonlSink
from trainer.backbone import versions
from trainer.backbone.config import BackboneConfig
from trainer.backbone.data import (
    EventLogSequences,
    MemorySequences,
    action_indices,
    changed_first,
    prepare,
    since,
)
from trainer.backbone.eval import evaluate
from trainer.backbone.tokens import COND, Tokenizer, Vocabs
from trainer.backbone.train import any_condition, split_validation, train

torch.set_num_threads(1)
SMALL = {
    "dim": 16,
    "heads": 2,
    "layers": 1,
    "max_len": 14,
    "batch_users": 8,
    "dropout": 0.0,
    "lr": 3e-3,
}


def test_loss_goes_down_and_metrics_are_set(metrics: Metrics) -> None:
    pairs = make_pairs(n_users=32, seed=4)
    cfg = BackboneConfig(epochs=6, validation=False, all_positions=False, **SMALL)
    result = train(cfg, MemorySequences(dict(pairs)), metrics=metrics)
    assert result.steps == 6 * 4
    assert result.users == 32
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4]) - 0.2
    assert result.tokens == 6 * sum(2 * len(s) for _, s in pairs)
    assert sample(metrics, "lumstream_backbone_train_tokens_total") == result.tokens
    assert sample(metrics, "lumstream_backbone_train_loss") == pytest.approx(result.losses[-1])
    assert sample(metrics, "lumstream_backbone_tokens_per_second") > 0
    assert result.watermark == max(int(s["ts"][-1]) for _, s in pairs)
    assert not result.model.training


def test_same_seed_same_model() -> None:
    pairs = make_pairs(n_users=10, seed=6)
    a = train(BackboneConfig(epochs=2, **SMALL), pairs)
    b = train(BackboneConfig(epochs=2, **SMALL), pairs)
    assert a.losses == b.losses


def test_empty_and_one_event_sequences_are_skipped_with_counts(metrics: Metrics) -> None:
    pairs = dict(make_pairs(n_users=6, seed=1))
    pairs[900] = make_seq([])
    pairs[901] = make_seq([5])
    pairs[902] = make_seq([])
    result = train(BackboneConfig(epochs=1, **SMALL), MemorySequences(pairs), metrics=metrics)
    assert result.users == 6
    assert result.skipped == {"empty": 2, "too_short": 1}
    assert sample(metrics, "lumstream_backbone_sequences_skipped_total", reason="empty") == 2
    assert sample(metrics, "lumstream_backbone_sequences_skipped_total", reason="too_short") == 1


def test_nothing_to_train_on_is_not_a_crash() -> None:
    result = train(BackboneConfig(epochs=2, **SMALL), MemorySequences({1: make_seq([3])}))
    assert result.steps == 0
    assert result.users == 0


def test_sequence_actions_filter_events() -> None:
    seq = make_seq([1, 2, 3, 4, 5, 6])  # actions alternate 0 (impression), 1 (click)
    acts = action_indices(("click",), EventConfig())
    pairs, _ = prepare(MemorySequences({1: seq}), acts)
    assert pairs[0][1]["item"].tolist() == [2, 4, 6]
    assert action_indices((), EventConfig()) is None
    with pytest.raises(ConfigError, match="sequence_actions"):
        action_indices(("like",), EventConfig())


def test_max_steps_stops_early() -> None:
    result = train(BackboneConfig(epochs=50, max_steps=3, **SMALL), make_pairs(n_users=16))
    assert result.steps == 3


def test_warm_start_keeps_old_rows_and_learns_new_items(tmp_path: Path) -> None:
    cfg = BackboneConfig(epochs=2, **SMALL)
    old = train(cfg, make_pairs(n_users=12, n_items=20, seed=1)).model
    info = versions.publish(tmp_path, old, watermark=1)
    newer = make_pairs(n_users=12, n_items=40, seed=2)  # items 20..39 are new
    result = train(
        BackboneConfig(
            epochs=1, max_steps=1, lr=0.0, **{k: v for k, v in SMALL.items() if k != "lr"}
        ),
        newer,
        init_from=info.path,
    )
    model = result.model
    n_old = len(old.vocabs.items)
    assert len(model.vocabs.items) > n_old
    assert model.vocabs.items.ids[: n_old - 1].tolist() == old.vocabs.items.ids.tolist()
    # lr 0: the old rows and shared layers are exactly the old ones
    torch.testing.assert_close(model.tokens.item.weight[:n_old], old.tokens.item.weight)
    torch.testing.assert_close(model.blocks[0].qkv.weight, old.blocks[0].qkv.weight)


def test_warm_start_refuses_another_architecture() -> None:
    old = train(BackboneConfig(epochs=1, **SMALL), make_pairs(n_users=8)).model
    with pytest.raises(ValueError, match=r"backbone\.layers is 2 but 1"):
        train(
            BackboneConfig(epochs=1, **{**SMALL, "layers": 2}), make_pairs(n_users=8), init_from=old
        )


def test_since_keeps_changed_users_and_a_share_of_old_ones() -> None:
    pairs = dict(make_pairs(n_users=40, seed=9))
    cut = int(np.median([s["ts"][-1] for s in pairs.values()]))
    changed = {u for u, s in pairs.items() if s["ts"][-1] > cut}
    none = dict(since(MemorySequences(pairs), cut, 0.0, seed=1).sequences())
    assert set(none) == changed
    every = dict(since(MemorySequences(pairs), cut, 1.0, seed=1).sequences())
    assert set(every) == set(pairs)
    order = changed_first(list(pairs.items()), cut)
    new_counts = [int((s["ts"] > cut).sum()) for _, s in order]
    assert new_counts == sorted(new_counts, reverse=True)


def test_event_log_source_decodes_dedups_and_counts_bad_events(
    tmp_path: Path, metrics: Metrics
) -> None:
    cfg = EventConfig()
    path = tmp_path / "events.jsonl"
    rows = [
        ("u1", "10", "click", "Comedy", 3000),
        ("u1", "11", "impression", "Drama", 1000),
        ("u2", "10", "click", "Comedy", 2000),
        ("u1", "12", "click", "Comedy", 2000),
    ]
    with JsonlSink(path) as sink:
        for k, (user, item, action, cond, ts) in enumerate(rows):
            sink.write(
                validate(
                    {
                        "event_id": f"e{k}",
                        "user_id": user,
                        "item_id": item,
                        "action": action,
                        "condition": cond,
                        "ts": 1_700_000_000_000 + ts,
                        "features": {"category": cond},
                    },
                    cfg,
                )
            )
        sink.write(
            validate(
                {
                    "event_id": "e0",
                    "user_id": "u1",
                    "item_id": "99",
                    "action": "click",
                    "condition": "x",
                    "ts": 1_700_000_000_000,
                },
                cfg,
            )
        )  # duplicate id
    with path.open("ab") as fh:
        fh.write(b'{"event_id": "broken"\n')
    source = EventLogSequences(path, cfg, metrics=metrics)
    seqs = dict(source.sequences())
    u1 = seqs[stable_id("u1")]
    assert u1["item"].tolist() == [11, 12, 10]  # event-time order
    assert u1["cond"].tolist() == [stable_id(c) for c in ("Drama", "Comedy", "Comedy")]
    assert u1["cat"].tolist() == u1["cond"].tolist()
    assert u1["action"].tolist() == [0, 1, 1]
    assert source.rejected == {"duplicate": 1, "malformed_json": 1}
    assert (
        sample(metrics, "lumstream_events_rejected_total", stage="backbone", reason="duplicate")
        == 1
    )
    assert source.watermark() == 1_700_000_003_000
    clicks, skipped = prepare(source, action_indices(("click",), cfg))
    assert [len(s) for _, s in clicks] == [2]  # u2 has one click: too short
    assert skipped == {"too_short": 1}


@pytest.mark.parametrize("objective", ["lum", "next_item"])
def test_windows_train_every_event_once(objective: str) -> None:
    seq = make_seq(list(range(1, 38)))  # 37 events, windows of 10
    cfg = BackboneConfig(objective=objective, max_len=10, dim=8, heads=1)
    tok = Tokenizer(cfg, Vocabs.build([seq], cfg))
    wins = tok.windows(seq)
    assert all(len(w) <= cfg.max_tokens for w in wins)
    rows = tok.vocabs.items.lookup(seq["item"])
    if objective == "next_item":  # every transition (i_t -> i_t+1) exactly once
        pairs = sorted(
            (int(i), int(t)) for w in wins for i, t in zip(w.item, w.target, strict=True) if t
        )
        assert pairs == list(zip(rows[:-1].tolist(), rows[1:].tolist(), strict=True))
    else:  # every event is a condition token's target exactly once
        targets = sorted(int(t) for w in wins for t in w.target[w.kind == COND])
        assert targets == sorted(rows.tolist())
    assert tok.windows(seq[:5])[0].target.tolist() == tok.encode(seq[:5]).target.tolist()


def test_validation_stops_early_and_keeps_the_best_epoch() -> None:
    pairs = make_pairs(n_users=40, seed=5)
    frozen = train(BackboneConfig(epochs=20, patience=2, **{**SMALL, "lr": 0.0}), pairs)
    assert (frozen.epochs, frozen.best_epoch) == (3, 1)  # no epoch beats the first
    cfg = BackboneConfig(epochs=8, patience=8, **SMALL)
    result = train(cfg, pairs)
    scores = [v["ndcg@10"] for v in result.validation]
    assert len(scores) == result.epochs == 8
    assert result.best_epoch == 1 + int(np.argmax(scores))
    _, held = split_validation(pairs, cfg)
    assert held is not None
    assert len(held.histories) == 40
    assert evaluate(result.model, held) == result.validation[result.best_epoch - 1]


def test_validation_holds_out_the_last_event_from_training() -> None:
    pairs = make_pairs(n_users=6, seed=2)
    fit, held = split_validation(pairs, BackboneConfig(validation_users=4, **SMALL))
    assert held is not None
    assert len(held.histories) == 4
    assert [len(s) for _, s in fit] == [len(s) - 1 for _, s in pairs]
    assert split_validation(pairs, BackboneConfig(validation=False, **SMALL)) == (pairs, None)


def test_any_condition_replaces_a_share_of_condition_tokens_the_same_way_each_time() -> None:
    seq = make_seq(list(range(1, 401)))
    cfg = BackboneConfig(max_len=400, dim=8, heads=1)
    u = Tokenizer(cfg, Vocabs.build([seq], cfg)).encode(seq)
    a = any_condition(u, 0.25, seed=1, epoch=0, index=3)
    share = float((a.cond[u.kind == COND] == 0).mean())
    assert 0.18 < share < 0.32
    assert (a.cond[u.kind != COND] == u.cond[u.kind != COND]).all()
    assert (a.item == u.item).all()
    assert (a.target == u.target).all()
    again = any_condition(u, 0.25, seed=1, epoch=0, index=3)
    assert (again.cond == a.cond).all()
    assert not (any_condition(u, 0.25, seed=1, epoch=1, index=3).cond == a.cond).all()
