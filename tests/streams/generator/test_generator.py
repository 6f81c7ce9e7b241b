"""The synthetic click-stream generator: determinism, ground truth, emission, bad records."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.settings import ConfigError
from lumstream.cli import main
from streams.config import EventConfig, GeneratorConfig, KafkaConfig
from streams.contracts.eventlog import iter_event_log
from streams.contracts.events import Event, EventError, decode, encode, to_dict, validate
from streams.generator import EXPECTED_REASON, ClickStream, Malformed, StreamStats, World
from streams.generator.draws import Draws, dedupe
from streams.generator.pacing import TokenBucket, batch_size_for
from streams.generator.pump import generate
from streams.generator.world import child_rng
from streams.kafka.consumer import read_topic

SMALL = GeneratorConfig(users=300, items=1_000, categories=8, events=20_000)
MID = replace(SMALL, events=120_000)


def columns(cfg: GeneratorConfig) -> dict[str, np.ndarray]:
    """The good events of the first ``cfg.events`` records as columns (from the batches)."""
    stream = ClickStream(cfg)
    parts: list[dict[str, np.ndarray]] = []
    total = 0
    for batch in stream.batches():
        parts.append(
            {
                k: getattr(batch, k)
                for k in (
                    "ts",
                    "users",
                    "items",
                    "conditions",
                    "actions",
                    "probs",
                    "shown_ts",
                    "clicked",
                )
            }
        )
        total += len(batch)
        if total >= cfg.events:
            break
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["drift_ts"] = np.array([stream.stats.drift_ts_ms or -1])
    return out


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    ranks = np.argsort(np.argsort(scores, kind="stable")) + 1.0
    pos = labels.sum()
    neg = labels.size - pos
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


@pytest.fixture(scope="module")
def mid() -> dict[str, np.ndarray]:
    return columns(MID)


# -- determinism and the two output paths -------------------------------------------------
def test_same_seed_same_bytes_different_seed_different() -> None:
    cfg = replace(SMALL, malformed_fraction=0.02, drift_at=0.5)
    first = [p for b in ClickStream(cfg).pair_batches() for p in b]
    again = [p for b in ClickStream(cfg).pair_batches(batch_size=777) for p in b]
    other = [p for b in ClickStream(replace(cfg, seed=8)).pair_batches() for p in b]
    assert len(first) == len(again) == len(other) == cfg.events
    assert b"".join(v for _, v in first) == b"".join(v for _, v in again)
    assert [k for k, _ in first] == [k for k, _ in again]
    assert first != other


def test_event_objects_encode_to_the_fast_path_bytes() -> None:
    cfg = replace(SMALL, events=8_000, malformed_fraction=0.05)
    pairs = [p for b in ClickStream(cfg).pair_batches(batch_size=1000) for p in b]
    objects = list(ClickStream(cfg).events())
    assert len(pairs) == len(objects) == cfg.events
    for (key, value), obj in zip(pairs, objects, strict=True):
        if isinstance(obj, Malformed):
            assert (key, value) == (obj.key, obj.value)
        else:
            assert value == encode(obj)
            assert key == obj.user_id.encode()


def test_limit_and_stats_count_what_was_emitted() -> None:
    cfg = replace(SMALL, malformed_fraction=0.1)
    stream = ClickStream(cfg)
    got = sum(len(b) for b in stream.pair_batches(limit=12_345, batch_size=1000))
    s = stream.stats
    assert got == s.events == 12_345
    assert s.impressions + s.clicks + s.purchases + s.malformed == s.events
    assert 0 < s.users <= cfg.users
    assert s.clicks >= s.purchases


def test_every_good_event_validates_and_every_malformed_is_rejected() -> None:
    cfg = replace(SMALL, events=30_000, malformed_fraction=0.05)
    ecfg = EventConfig()
    reasons: Counter[str] = Counter()
    n_bad = 0
    for obj in ClickStream(cfg).events():
        if isinstance(obj, Malformed):
            n_bad += 1
            with pytest.raises(EventError) as info:
                decode(obj.value, ecfg)
            assert info.value.reason == EXPECTED_REASON[obj.kind], obj
            reasons[info.value.reason] += 1
        else:
            assert isinstance(obj, Event)
            assert validate(to_dict(obj), ecfg) == obj
            assert decode(encode(obj), ecfg) == obj
    assert 0.04 < n_bad / cfg.events < 0.06
    assert len(reasons) >= 8  # truncated, garbage, NaN, unknown action, missing id, ...


# -- the ground truth ---------------------------------------------------------------------
def test_views_match_the_reference_click_probability() -> None:
    world = World(replace(SMALL, drift_at=0.5))
    for drifted in (False, True):
        views = world.views(Draws.draw(child_rng(1, 2), 256, world.slate_size), drifted)
        shown = views.items >= 0
        users = np.broadcast_to(views.users[:, None], views.items.shape)[shown]
        conds = np.broadcast_to(views.conditions[:, None], views.items.shape)[shown]
        ref = world.click_prob(users, views.items[shown], conds, drifted=drifted)
        np.testing.assert_allclose(views.probs[shown], ref, rtol=1e-5)
        mixed = world.click_prob(
            users, views.items[shown], conds, drifted=np.full(users.shape, drifted)
        )
        np.testing.assert_allclose(mixed, ref)


@pytest.mark.parametrize("base_ctr", [0.01, 0.03, 0.1])
def test_calibrated_intercept_hits_the_target_ctr(base_ctr: float) -> None:
    world = World(replace(SMALL, base_ctr=base_ctr))
    views = world.views(Draws.draw(child_rng(3, 4), 4096, world.slate_size))
    assert views.probs[views.items >= 0].mean() == pytest.approx(base_ctr, rel=0.05)


def test_ctr_of_a_mid_size_run_is_in_band(mid: dict[str, np.ndarray]) -> None:
    impressions = mid["actions"] == 0
    clicks = (mid["actions"] == 1).sum()
    assert 0.025 < clicks / impressions.sum() < 0.035
    assert 0.025 < mid["clicked"][impressions].mean() < 0.035


def test_popularity_is_skewed(mid: dict[str, np.ndarray]) -> None:
    counts = np.sort(np.bincount(mid["items"][mid["actions"] == 0], minlength=MID.items))[::-1]
    top = counts[: MID.items // 10].sum() / counts.sum()
    assert top > 0.45  # 0.10 for uniform exposure; about 0.6 with the default 5000 items


def test_condition_specific_profile_beats_a_global_profile() -> None:
    """A per-(user, condition) profile, estimated from the first half of the clicks with the
    true item vectors, predicts the second half better than a per-user profile; with
    condition_share = 0 (one taste everywhere) the global profile wins instead."""
    gains = {}
    for share in (0.8, 0.0):
        cfg = replace(MID, condition_share=share)
        cols = columns(cfg)
        world = World(cfg)
        imp = cols["actions"] == 0
        u, i, c = cols["users"][imp], cols["items"][imp], cols["conditions"][imp]
        y = cols["clicked"][imp]
        half = y.size // 2
        vec = world.item_vectors.astype(np.float64)
        signal = (y[:half] - y[:half].mean())[:, None] * vec[i[:half]]  # (N, D)
        per_cond = np.zeros((world.n_users, world.n_categories, world.dim))
        np.add.at(per_cond, (u[:half], c[:half]), signal)
        per_user = per_cond.sum(axis=1)
        uu, ii, cc, yy = u[half:], i[half:], c[half:], y[half:]
        cond_auc = auc(yy, (per_cond[uu, cc] * vec[ii]).sum(1))
        user_auc = auc(yy, (per_user[uu] * vec[ii]).sum(1))
        gains[share] = cond_auc - user_auc
    assert gains[0.8] > 0.02
    assert gains[0.0] < 0.0


def test_drift_redraws_interests_of_a_share_of_users() -> None:
    cfg = replace(MID, drift_at=0.5, drift_share=0.5)
    world = World(cfg)
    before, after = world.tastes
    share = world.drifted_users.mean()
    assert 0.4 < share < 0.6
    same = (before.interests == after.interests).all(axis=1)
    assert same[~world.drifted_users].all()
    assert (~same[world.drifted_users]).mean() > 0.5
    cols = columns(cfg)
    drift_ts = int(cols["drift_ts"][0])
    first_after = int(np.searchsorted(cols["ts"], drift_ts))
    assert 0.45 * cfg.events < first_after < 0.55 * cfg.events
    # drifted users browse other conditions after the drift; the others do not
    imp = cols["actions"] == 0
    late = cols["ts"] >= drift_ts

    def moved(users: np.ndarray) -> float:
        mask = imp & np.isin(cols["users"], users)
        early_mix = np.bincount(cols["conditions"][mask & ~late], minlength=cfg.categories)
        late_mix = np.bincount(cols["conditions"][mask & late], minlength=cfg.categories)
        return float(np.abs(early_mix / early_mix.sum() - late_mix / late_mix.sum()).sum())

    drifted = np.flatnonzero(world.drifted_users)
    stayed = np.flatnonzero(~world.drifted_users)
    assert moved(drifted) > 3 * moved(stayed)


def test_world_rejects_impossible_sizes_and_unbounded_drift() -> None:
    with pytest.raises(ConfigError, match=r"generator\.items"):
        World(GeneratorConfig(items=3, categories=8))
    with pytest.raises(ConfigError, match=r"generator\.drift_at"):
        ClickStream(replace(SMALL, events=0, drift_at=0.5))


def test_condition_names_round_trip() -> None:
    world = World(SMALL)
    with pytest.raises(ValueError, match="item index"):
        world.click_prob(0, -1, 0)
    with pytest.raises(ValueError, match="condition index"):
        world.click_prob([0, 1], [2, 3], [0, 8])
    assert [world.condition_index(World.condition_name(c)) for c in range(8)] == list(range(8))
    for bad in ("Comedy", "cat", "cat99"):
        with pytest.raises(ValueError, match="condition"):
            world.condition_index(bad)


# -- emission -----------------------------------------------------------------------------
def test_events_are_in_event_time_order(mid: dict[str, np.ndarray]) -> None:
    assert (np.diff(mid["ts"]) >= 0).all()
    assert mid["ts"][0] >= MID.start_ts_ms


def test_clicks_follow_their_impression_by_the_delay_law(mid: dict[str, np.ndarray]) -> None:
    clicks = mid["actions"] == 1
    delay = mid["ts"][clicks] - mid["shown_ts"][clicks]
    assert delay.min() >= 1
    mean_ms = MID.click_delay_mean_s * 1000
    assert delay.mean() == pytest.approx(mean_ms, rel=0.1)
    assert (delay > mean_ms).mean() == pytest.approx(np.exp(-1), abs=0.04)  # exponential tail
    assert mid["clicked"][clicks].all()
    buys = mid["actions"] == 2
    assert (mid["ts"][buys] > mid["shown_ts"][buys]).all()
    # every click's impression was emitted before it, with the same user and item
    shown = {
        (int(u), int(i), int(t))
        for u, i, t in zip(
            mid["users"][mid["actions"] == 0],
            mid["items"][mid["actions"] == 0],
            mid["ts"][mid["actions"] == 0],
            strict=True,
        )
    }
    first_ts = mid["ts"][0]
    for u, i, t in zip(
        mid["users"][clicks], mid["items"][clicks], mid["shown_ts"][clicks], strict=True
    ):
        assert (int(u), int(i), int(t)) in shown or t < first_ts


def test_slates_hold_distinct_items_of_the_condition() -> None:
    world = World(SMALL)
    views = world.views(Draws.draw(child_rng(5, 6), 512, world.slate_size))
    for row, cond in zip(views.items, views.conditions, strict=True):
        shown = row[row >= 0]
        assert len(set(shown.tolist())) == shown.size == world.slate_size
        assert (world.item_category[shown] == cond).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 6), min_size=8, max_size=8), min_size=1, max_size=5),
    st.integers(1, 8),
)
def test_dedupe_keeps_first_distinct_in_draw_order(rows: list[list[int]], size: int) -> None:
    got = dedupe(np.array(rows, dtype=np.int64), size)
    for row, out in zip(rows, got, strict=True):
        expected = list(dict.fromkeys(row))[:size]
        assert out.tolist() == expected + [-1] * (size - len(expected))


def test_unbounded_stream_is_lazy() -> None:
    stream = ClickStream(replace(SMALL, events=0))  # unbounded
    head = list(itertools.islice(stream.events(), 50))
    assert len(head) == 50
    assert all(isinstance(e, Event) for e in head)


# -- pacing and the command ---------------------------------------------------------------
def test_token_bucket_holds_the_rate_with_a_fake_clock() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(rate=1000, clock=lambda: now[0], sleep=sleep)
    for _ in range(50):
        bucket.acquire(100)
    # 5000 tokens at 1000/s; the bucket starts with its burst of 0.1 s = 100 tokens
    assert sum(slept) == pytest.approx(4.9)
    assert batch_size_for(0) == 4096
    assert batch_size_for(1000) == 50
    assert batch_size_for(1) == 1
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0)


def test_generate_stops_after_the_batch_and_keeps_what_was_written(tmp_path: Path) -> None:
    stop = threading.Event()
    seen: list[int] = []

    def progress(stats: StreamStats) -> None:
        seen.append(stats.events)
        if len(seen) == 3:
            stop.set()

    out = tmp_path / "events.jsonl"
    result = generate(replace(SMALL, events=100_000), out=out, stop=stop, progress=progress)
    assert result.interrupted
    assert seen == sorted(seen)
    assert result.stats.events == seen[-1] == len(list(iter_event_log(out)))
    assert f"interrupted: {seen[-1]:,} events -> {out}" in result.summary()
    assert not generate(replace(SMALL, events=500), out=tmp_path / "all.jsonl").interrupted


def test_generate_leaves_no_log_when_writing_fails(tmp_path: Path) -> None:
    def fail(stats: StreamStats) -> None:
        raise RuntimeError("disk full")

    out = tmp_path / "events.jsonl"
    with pytest.raises(RuntimeError, match="disk full"):
        generate(replace(SMALL, events=10_000), out=out, progress=fail)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz", "events.parquet"])
def test_generate_command_writes_the_stream_to_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    out = tmp_path / name
    argv = [
        "--set",
        "metrics.enabled=false",
        "--set",
        "generator.users=300",
        "--set",
        "generator.items=1000",
        "--set",
        "generator.categories=8",
        "generate",
        "--out",
        str(out),
        "--events",
        "3000",
        "--seed",
        "5",
        "--quiet",
    ]
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert "done: 3,000 events" in summary
    assert "CTR" in summary
    expected = [
        v for b in ClickStream(replace(SMALL, events=3000, seed=5)).pair_batches() for _, v in b
    ]
    got = [raw for _, raw in iter_event_log(out)]
    if name.endswith(".parquet"):  # rebuilt from columns: same events, same canonical bytes
        got = [encode(decode(raw, EventConfig())) for raw in got]
    assert got == expected


def test_generate_command_rejects_bad_flags(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = ["--set", "metrics.enabled=false", "generate", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "x.jsonl"), "--malformed-fraction", "0.1"]) == 2
    assert "generator.malformed_fraction" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "x.csv"), "--events", "5"]) == 2
    assert "unknown event-log format" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "x.jsonl"), "--rate", "-1"]) == 2
    assert "generator.rate" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.integration
def test_generate_command_produces_to_kafka(
    kafka_cfg: KafkaConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = kafka_cfg.topic_events
    cfg = replace(SMALL, events=3000, malformed_fraction=0.05)
    argv = [
        "--set", "metrics.enabled=false",
        "--set", f"kafka.bootstrap_servers={kafka_cfg.bootstrap_servers}",
        "--set", "generator.users=300", "--set", "generator.items=1000",
        "--set", "generator.categories=8",
        "generate", "--topic", topic, "--events", "3000", "--malformed-fraction", "0.05",
        "--rate", "20000", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    assert f"done: 3,000 events -> {topic}" in capsys.readouterr().out
    expected = [p for b in ClickStream(cfg).pair_batches() for p in b]
    records = read_topic(kafka_cfg, kafka_cfg.bootstrap_servers, topic, timeout_s=30)
    assert sorted((r.key, r.value) for r in records) == sorted(expected)
    rejected = 0
    for r in records:
        try:
            decode(r.value, EventConfig())
        except EventError:
            rejected += 1
    assert rejected == sum(isinstance(e, Malformed) for e in ClickStream(cfg).events()) > 0


def test_page_views_draw_distinct_candidates_of_the_browsed_condition() -> None:
    from streams.generator.world import World

    world = World(GeneratorConfig(users=50, items=400, categories=4, drift_at=1.0, drift_share=1.0))
    rng = np.random.default_rng(0)
    users, conds, items = world.page_views(rng, 200, 30)
    assert users.shape == conds.shape == (200,)
    assert items.shape == (200, 30)
    for c, row in zip(conds, items, strict=True):
        row = row[row >= 0]
        assert len(row) == len(set(row.tolist())) > 0
        assert (world.item_category[row] == c).all()
    # shifted tastes move what the users browse
    _, after, _ = world.page_views(np.random.default_rng(0), 2000, 5, drifted=True)
    _, before, _ = world.page_views(np.random.default_rng(0), 2000, 5)
    assert (after != before).mean() > 0.2
