"""``lumstream backbone train|refresh|eval|versions`` through the command line, on a tiny
model (dim 8, one layer, one epoch): what each prints and publishes, and one-line errors
(exit 1) for a missing store, event log or version and a corrupt version."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry
from support.replay import generated, write_jsonl

from lumstream.cli import main
from monitoring.metrics import Metrics
from streams.config import EventConfig, GeneratorConfig, StoreConfig, WorkerConfig
from streams.generator import ClickStream
from streams.worker.processor import open_processor
from trainer.vectors.store import VectorReader

torch.set_num_threads(1)

TINY = {
    "backbone.dim": 8,
    "backbone.feature_dim": 4,
    "backbone.layers": 1,
    "backbone.heads": 1,
    "backbone.epochs": 1,
    "backbone.batch_users": 32,
    "backbone.max_len": 20,
    "backbone.query_top": 4,
    "refresh.eval_users": 50,
    "refresh.vector_batch_users": 64,
}
ROW = re.compile(r"^  (backbone|popularity) +(\d\.\d{4}) +(\d\.\d{4}) +(\d\.\d{4})$", re.M)


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LUMSTREAM_"):
            monkeypatch.delenv(name)


def backbone(data: Path, *argv: str, metrics: bool = False, sets: tuple[str, ...] = ()) -> int:
    """``lumstream backbone ARGV`` with the tiny model, data under ``data`` and the
    settings ``sets`` (``SECTION.NAME=VALUE``)."""
    settings = [f"paths.data_dir={data}", f"metrics.enabled={str(metrics).lower()}"]
    settings += [f"{k}={v}" for k, v in TINY.items()]
    settings += sets
    return main([*(x for s in settings for x in ("--set", s)), "backbone", *argv])


@pytest.fixture(scope="module")
def event_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generator events (a few malformed ones and duplicates) as a JSONL event log."""
    return write_jsonl(tmp_path_factory.mktemp("log") / "events.jsonl", generated(3000))


def feed_store(root: Path, events: int = 6000) -> None:
    """Generator events applied to a one-partition sequence store, as a worker would."""
    gen = GeneratorConfig(events=events, users=60, seed=5, base_ctr=0.2)
    records = [v for batch in ClickStream(gen).pair_batches() for _, v in batch]
    proc = open_processor(
        root, 0, StoreConfig(), WorkerConfig(), EventConfig(), Metrics(CollectorRegistry())
    )
    try:
        proc.process(list(range(len(records))), [None] * len(records), records, 1_800_000_000_000)
        proc.commit()
    finally:
        proc.close()


def one_line(err: str) -> str:
    """The single line of ``err`` (asserting there is exactly one)."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_train_on_a_log_then_versions_then_eval(
    tmp_path: Path, event_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert backbone(tmp_path, "versions") == 0
    assert capsys.readouterr().out == f"no versions under {tmp_path / 'backbone'}\n"

    assert backbone(tmp_path, "train", "--log", str(event_log)) == 0
    out = capsys.readouterr().out
    assert f"published v1 at {tmp_path / 'backbone' / 'v1'} (" in out
    assert "previous: none" in out
    assert re.search(r"hr@10 \d\.\d{4}  mrr \d\.\d{4}  ndcg@10 \d\.\d{4}", out), out

    assert backbone(tmp_path, "versions") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["version", "created"]
    assert row.split()[0] == "v1"
    assert row.split()[2] == "-"  # no parent: trained from scratch
    assert "hr@10=" in row

    for version in ([], ["--version", "v1"]):
        assert backbone(tmp_path, "eval", "--log", str(event_log), *version) == 0
        out = capsys.readouterr().out
        assert out.startswith("v1 (")
        assert "leave-last-out, full ranking, history excluded" in out
        assert re.search(r"^  model +hr@10 +ndcg@10 +mrr$", out, re.M), out
        assert [m[0] for m in ROW.findall(out)] == ["backbone", "popularity"], out

    assert backbone(tmp_path, "train", "--log", str(event_log)) == 0
    out = capsys.readouterr().out
    assert "published v2" in out
    assert "previous: v1" in out


def test_refresh_once_on_a_store_publishes_and_writes_vectors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import lumstream.commands.base

    served: list[str] = []
    real = lumstream.commands.base.serving_metrics
    monkeypatch.setattr(
        lumstream.commands.base,
        "serving_metrics",
        lambda cfg, role: served.append(role) or real(cfg, role),
    )
    feed_store(tmp_path / "store")
    assert backbone(tmp_path, "refresh", "--once", metrics=True) == 0
    captured = capsys.readouterr()
    assert "refresh: published v1 in" in captured.out
    found = re.search(r"([\d,]+) users' vectors written", captured.out)
    assert found is not None, captured.out
    written = int(found[1].replace(",", ""))
    assert written > 0
    reader = VectorReader(tmp_path / "vectors", tmp_path / "scratch")
    try:
        assert sorted(reader.versions()) == [1]
        assert len(list(reader.users())) == written  # the vector store has every user
    finally:
        reader.close()
    assert served == []  # --once serves no metrics

    assert backbone(tmp_path, "refresh", "--once") == 0
    assert "refresh: nothing to do (no events after v1's watermark)" in capsys.readouterr().out


def test_refresh_serves_metrics_until_a_signal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Forever: /metrics registered for discovery while it runs; SIGINT stops it after the
    refresh in progress (exit 0) and the previous handler comes back."""
    feed_store(tmp_path / "store", events=3000)
    discovery = tmp_path / "run" / "metrics"
    seen: list[str] = []

    def interrupt_after_v1() -> None:
        deadline = time.monotonic() + 240
        while not (tmp_path / "backbone" / "v1").is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.extend(p.name for p in discovery.glob("backbone-*.json"))
        os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=interrupt_after_v1)
    thread.start()
    try:
        code = backbone(tmp_path, "refresh", metrics=True, sets=("refresh.cadence_s=1",))
    finally:
        thread.join()
    assert code == 0
    assert seen == [f"backbone-{os.getpid()}.json"]
    assert not list(discovery.glob("backbone-*.json"))  # unregistered at exit
    assert signal.getsignal(signal.SIGINT) is before
    captured = capsys.readouterr()
    assert "refresh: published v1" in captured.out
    assert "stopping after the refresh in progress" in captured.err


@pytest.mark.parametrize("argv", [["train"], ["refresh", "--once"]])
def test_a_missing_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert backbone(tmp_path, *argv) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("lumstream backbone: no sequence store at ")
    assert str(tmp_path / "store") in line


def test_missing_and_corrupt_versions_and_logs_are_one_line(
    tmp_path: Path, event_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert backbone(tmp_path, "eval", "--log", str(event_log)) == 1
    line = one_line(capsys.readouterr().err)
    assert line == f"lumstream backbone: no versions under {tmp_path / 'backbone'}"

    assert backbone(tmp_path, "train", "--log", str(tmp_path / "absent.jsonl")) == 1
    line = one_line(capsys.readouterr().err)
    assert line == f"lumstream backbone: no event log at {tmp_path / 'absent.jsonl'}"

    assert backbone(tmp_path, "train", "--log", str(event_log)) == 0
    capsys.readouterr()
    assert backbone(tmp_path, "eval", "--version", "v9", "--log", str(event_log)) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("lumstream backbone: ")
    assert str(tmp_path / "backbone" / "v9") in line

    weights = tmp_path / "backbone" / "v1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    assert backbone(tmp_path, "eval", "--version", "v1", "--log", str(event_log)) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("lumstream backbone: ")
    assert "model.safetensors" in line
