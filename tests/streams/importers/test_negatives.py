"""Sampled negative impressions for implicit-feedback logs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lumstream.cli import main
from streams.config import EventConfig
from streams.contracts.eventlog import iter_event_log, read_meta
from streams.contracts.events import Event, decode
from streams.importers.negatives import ImpressionSampler, NegativeSampling

CFG = EventConfig()
T0 = 1_700_000_000_000
HOUR = 3_600_000


def interactions(seed: int = 0, users: int = 20, per_user: int = 30) -> list[Event]:
    """Clicks in time order; item popularity falls off with the item number."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, 61)
    p /= p.sum()
    out = []
    for u in range(users):
        for k in range(per_user):
            item = int(rng.choice(60, p=p))
            t = T0 + int(rng.integers(0, 200)) * HOUR
            out.append(Event(f"e{u}-{k}", f"u{u}", f"i{item}", "click", f"c{item % 3}", t))
    out.sort(key=lambda e: e.ts)
    return out


def run(cfg: NegativeSampling, events: list[Event]) -> tuple[list[Event], ImpressionSampler]:
    s = ImpressionSampler(cfg)
    return list(s.run(iter(events))), s


@pytest.mark.parametrize("mode", ["uniform", "popularity"])
def test_sampled_impressions_avoid_the_users_items_near_that_time(mode: str) -> None:
    events = interactions()
    cfg = NegativeSampling(k=3, mode=mode, seed=1, exclude_s=48 * 3600)
    out, s = run(cfg, events)
    sampled = [e for e in out if e.features and "sampled" in e.features]
    assert len(sampled) == s.sampled == len(out) - len(events) > len(events)
    assert s.sampled + s.short == 3 * len(events)
    assert [e.ts for e in out] == sorted(e.ts for e in out)
    near: dict[tuple[str, str], list[int]] = {}
    for e in events:
        near.setdefault((e.user_id, e.item_id), []).append(e.ts)
    for e in sampled:
        assert e.action == "impression"
        assert e.features is not None
        assert e.features["sampled"] == mode
        assert "~n" in e.event_id
        assert e.condition == f"c{int(e.item_id[1:]) % 3}"  # the drawn item's own condition
        for t in near.get((e.user_id, e.item_id), []):
            assert abs(t - e.ts) > 48 * HOUR, (e, t)
    # a sampled impression goes before every event of its time, so the user's history at
    # it does not hold its interaction yet (as at the interaction's own impression)
    where = {e.event_id: k for k, e in enumerate(out)}
    for e in sampled:
        same_time = [where[x.event_id] for x in events if x.ts == e.ts]
        assert where[e.event_id] < min(same_time)
    # one interaction's draws are distinct items
    per = Counter((e.event_id.split("~")[0], e.item_id) for e in sampled)
    assert max(per.values()) == 1


def test_sampling_is_seeded_and_deterministic() -> None:
    events = interactions(2)
    a, _ = run(NegativeSampling(k=2, seed=7), events)
    b, _ = run(NegativeSampling(k=2, seed=7), events)
    c, _ = run(NegativeSampling(k=2, seed=8), events)
    assert a == b
    assert [e.item_id for e in a] != [e.item_id for e in c]


def test_popularity_draws_popular_items_more_often() -> None:
    events = interactions(3, users=40)
    drawn = {}
    for mode in ("uniform", "popularity"):
        out, _ = run(NegativeSampling(k=4, mode=mode, seed=0, exclude_s=0), events)
        items = Counter(e.item_id for e in out if e.features and "sampled" in e.features)
        drawn[mode] = items["i0"] / sum(items.values())
    assert drawn["popularity"] > 3 * drawn["uniform"]


def test_exclude_ever_and_items_seen_so_far_only() -> None:
    events = interactions(4, users=5, per_user=10)
    out, _ = run(NegativeSampling(k=2, seed=0, exclude_s=float("inf")), events)
    ever = {(e.user_id, e.item_id) for e in events}
    first: dict[str, int] = {}
    for e in events:
        first.setdefault(e.item_id, e.ts)
    for e in out:
        if e.features and "sampled" in e.features:
            assert (e.user_id, e.item_id) not in ever
            assert first[e.item_id] <= e.ts  # never an item that appears only later in the log


def test_out_of_order_input_is_refused() -> None:
    a = Event("a", "u", "i", "click", "c", T0 + 10)
    b = Event("b", "u", "j", "click", "c", T0)
    with pytest.raises(ValueError, match="event-time order"):
        run(NegativeSampling(k=1), [a, b])


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="k must be"):
        NegativeSampling(k=0)
    with pytest.raises(ValueError, match="mode"):
        NegativeSampling(k=1, mode="random")


def test_cli_purchases_only_log_gets_impressions_and_negatives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = sorted(interactions(5), key=lambda e: (e.user_id, e.ts))  # by user, as logs often are
    log = tmp_path / "buys.csv"
    log.write_text("user,sku,t\n" + "".join(f"{e.user_id},{e.item_id},{e.ts}\n" for e in rows))
    out = tmp_path / "ev.jsonl"
    args = ["import", "generic", str(log), "--map", "user_id=user,item_id=sku,ts=t"]
    args += ["--action", "purchase", "--out", str(out), "--json", "--quiet"]
    args += ["--negatives", "2", "--impress-interactions", "--negative-exclude-s", "3600"]
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["negatives"]["sampled"] > len(rows)
    assert stats["disorder"]["behind"] > 0
    assert stats["disorder"]["sorted"] is True
    got = [decode(r, CFG) for _, r in iter_event_log(out)]
    assert Counter(e.action for e in got)["impression"] == len(rows) + stats["negatives"]["sampled"]
    meta = read_meta(out)
    assert meta is not None
    assert meta["negatives"] == stats["negatives"]
    assert meta["recommended_label_window_s"] == 1.0  # impression and purchase at one time
    assert main([*args[:-6], "--negatives", "-1"]) == 2
    assert "--negatives -1" in capsys.readouterr().err


def test_presorted_import_streams_and_samples_the_same(tmp_path: Path) -> None:
    """--presorted writes as it reads (nothing held but the sampler's look-ahead) and gives
    the same events as the sorted import of the same time-ordered input."""
    rows = interactions(6, users=8, per_user=12)
    log = tmp_path / "t.csv"
    log.write_text("user,sku,t\n" + "".join(f"{e.user_id},{e.item_id},{e.ts}\n" for e in rows))
    outs = []
    for i, extra in enumerate(([], ["--presorted"])):
        out = tmp_path / f"o{i}.jsonl"
        args = ["import", "generic", str(log), "--map", "user_id=user,item_id=sku,ts=t"]
        args += ["--action", "click", "--out", str(out), "--quiet", "--negatives", "3", *extra]
        assert main(args) == 0
        outs.append([decode(r, CFG) for _, r in iter_event_log(out)])
    assert outs[0] == outs[1]
    assert len(outs[0]) > 2 * len(rows)
