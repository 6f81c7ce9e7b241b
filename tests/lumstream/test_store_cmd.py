"""`lumstream store stats|get USER` on a small store built by the worker's processor."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry
from support.replay import STORE, T0, WORKER

from lumstream.cli import main
from monitoring.metrics import Metrics
from streams.config import EventConfig
from streams.contracts.ids import stable_id
from streams.worker.processor import open_processor

NOW = T0 + 86_400_000
# partition -> users whose events it holds
USERS = {0: ("alice", "bob"), 1: ("carol",)}


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LUMSTREAM_"):
            monkeypatch.delenv(name)


def event(user: str, n: int, item: int, action: str, ts: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"{user}-{n}",
            "user_id": user,
            "item_id": str(item),
            "action": action,
            "condition": "home",
            "ts": ts,
        }
    )


def build_store(root: Path) -> None:
    """Per user three impressions (items 100..102), then two clicks (items 200, 201)."""
    metrics = Metrics(CollectorRegistry())
    for part, users in USERS.items():
        values = []
        for u, user in enumerate(users):
            ts = T0 + 10_000 * u
            values += [event(user, i, 100 + i, "impression", ts + i) for i in range(3)]
            values += [event(user, 3 + i, 200 + i, "click", ts + 100 + i) for i in range(2)]
        proc = open_processor(root, part, STORE, WORKER, EventConfig(), metrics)
        try:
            proc.process(list(range(len(values))), [None] * len(values), values, now_ms=NOW)
            proc.commit()
        finally:
            proc.close()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    build_store(root)
    return root


def cli(tmp: Path, *args: str) -> int:
    return main(
        ["--set", "metrics.enabled=false", "--set", f"paths.data_dir={tmp / 'data'}", *args]
    )


@pytest.mark.parametrize("where", ["before", "after"])
def test_stats_prints_a_row_per_partition(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    args = (
        ["--store", str(store), "stats"] if where == "before" else ["stats", "--store", str(store)]
    )
    assert cli(tmp_path, "store", *args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["part", "next"]
    rows = {int(line.split()[0]): line.split() for line in lines[1:3]}
    assert sorted(rows) == [0, 1]
    assert rows[0][1] == "10"  # next offset: ten records applied
    assert rows[1][1] == "5"
    assert rows[0][4] == "2"  # users
    assert rows[1][4] == "1"
    assert lines[3].startswith("sequence length: users 3,")


@pytest.mark.parametrize("where", ["before", "after"])
def test_get_prints_the_users_events(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    args = (
        ["--store", str(store), "get", "bob"]
        if where == "before"
        else ["get", "bob", "--store", str(store)]
    )
    assert cli(tmp_path, "store", *args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"user 'bob' (id {stable_id('bob')}), partition 0: 2 sequence events")
    assert "'impression': 3" in out[0]
    assert "'click': 2" in out[0]
    events = [line.split() for line in out[2:]]
    assert [(row[-3], row[-2]) for row in events] == [("click", "200"), ("click", "201")]


def test_an_unknown_user_exits_1(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(tmp_path, "store", "get", "dave", "--store", str(store)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("lumstream store: user 'dave'")
    assert "is not in the store" in captured.err


@pytest.mark.parametrize("action", [["stats"], ["get", "alice"]])
def test_no_store_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: list[str]
) -> None:
    assert cli(tmp_path, "store", *action) == 1  # the default: <data_dir>/store
    err = capsys.readouterr().err
    assert err.startswith(f"lumstream store: no store at {tmp_path / 'data' / 'store'}")
    assert len(err.strip().splitlines()) == 1
    assert cli(tmp_path, "store", *action, "--store", str(tmp_path / "none")) == 1
    assert f"no store at {tmp_path / 'none'}" in capsys.readouterr().err
