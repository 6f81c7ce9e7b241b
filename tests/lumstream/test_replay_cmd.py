"""`lumstream replay`: the command line, its errors, and resuming after SIGTERM and SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from support.paths import REPO
from support.replay import dump_store, generated, sample_rows, write_jsonl

from lumstream.cli import main
from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.contracts.samplefile import iter_sample_file
from streams.replay.backfill import MANIFEST, Backfill
from streams.replay.produce import read_json
from streams.replay.sources import open_source
from streams.sinks.deadletters import DeadLetterFile, read_deadletter_file
from streams.sinks.samples import SampleFileWriter


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LUMSTREAM_"):
            monkeypatch.delenv(name)


def base_args(tmp: Path) -> list[str]:
    return ["--set", "metrics.enabled=false", "--set", f"paths.data_dir={tmp / 'data'}"]


def test_backfill_to_files_then_a_no_op_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_jsonl(tmp_path / "events.jsonl", generated(1500))
    argv = [
        *base_args(tmp_path),
        "--set",
        "kafka.partitions=3",
        "--set",
        "store.sync_writes=false",
        "replay",
        "backfill",
        str(log),
        "--samples-out",
        str(tmp_path / "s.lsb"),
        "--deadletters-out",
        str(tmp_path / "d.jsonl"),
        "--quiet",
        "--json",
    ]
    assert main(argv) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["complete"]
    assert out["read"] == 1500 + 1500 // 97 or out["read"] > 1500
    assert out["applied"] + out["rejected"] == out["read"]
    assert out["samples"] == sum(len(b) for b in iter_sample_file(tmp_path / "s.lsb"))
    assert out["rejected"] == len(read_deadletter_file(tmp_path / "d.jsonl"))
    manifest = read_json(tmp_path / "data" / "backfill" / "store" / MANIFEST)
    assert manifest is not None
    assert (manifest["partitions"], manifest["complete"]) == (3, True)
    assert main(argv) == 0
    again = orjson.loads(capsys.readouterr().out)
    assert (again["complete"], again["read"], again["skipped"]) == (True, 0, out["read"])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["produce", "{log}", "--from", "2026-01-01"], "time range of a kafka:TOPIC source"),
        (["produce", "kafka:t", "--from", "yesterday"], "neither ms since the epoch nor ISO"),
        (["backfill", "kafka:t", "--from", "2026-02-01", "--to", "2026-01-01"], "is before"),
        (["backfill", "{log}"], "no Kafka cluster"),
        (["backfill", "{log}", "--partitions", "0"], "--partitions must be >= 1"),
        (["backfill", "{none}", "--samples-out", "s", "--deadletters-out", "d"], "no such file"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    log = write_jsonl(tmp_path / "events.jsonl", generated(10))
    argv = [a.format(log=log, none=tmp_path / "none.jsonl") for a in argv]
    assert main([*base_args(tmp_path), "replay", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lumstream replay: ")
    assert needle in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["backfill", "{log}", "--topic", "x"],
        ["backfill", "{log}", "--checkpoint", "c.json"],
        ["backfill", "{log}", "--restart"],
        ["backfill", "{log}", "--rate", "10"],
        ["produce", "{log}", "--store", "x"],
        ["produce", "{log}", "--samples-out", "s"],
        ["produce", "{log}", "--partitions", "2"],
        ["produce", "{log}", "--from-ts", "1"],  # the old spelling
    ],
)
def test_the_flags_of_the_other_mode_are_refused_by_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    log = write_jsonl(tmp_path / "events.jsonl", generated(10))
    with pytest.raises(SystemExit) as exit_:
        main([*base_args(tmp_path), "replay", *(a.format(log=log) for a in argv)])
    assert exit_.value.code == 2
    assert f"unrecognized arguments: {' '.join(argv[2:])}" in capsys.readouterr().err


def test_the_mode_is_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_jsonl(tmp_path / "events.jsonl", generated(10))
    with pytest.raises(SystemExit) as exit_:
        main([*base_args(tmp_path), "replay", str(log)])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _topic_args(kafka_cfg: KafkaConfig) -> list[str]:
    out = ["--set", f"kafka.bootstrap_servers={kafka_cfg.bootstrap_servers}"]
    for name in ("events", "samples", "deadletter", "model_updates"):
        out += ["--set", f"kafka.topic_{name}={getattr(kafka_cfg, 'topic_' + name)}"]
    return out


@pytest.mark.integration
def test_produce_then_backfill_a_time_range_of_the_topic(
    tmp_path: Path, kafka_cfg: KafkaConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    values = generated(800)
    log = write_jsonl(tmp_path / "events.jsonl", values)
    common = [*base_args(tmp_path), *_topic_args(kafka_cfg)]
    argv = [*common, "replay", "produce", str(log), "--rate", "50000", "--quiet", "--json"]
    assert main(argv) == 0
    produced = orjson.loads(capsys.readouterr().out)
    assert (produced["produced"], produced["complete"]) == (len(values), True)
    now = int(time.time() * 1000)
    argv = [
        *common,
        "replay",
        "backfill",
        f"kafka:{kafka_cfg.topic_events}",
        "--from",
        str(now - 3_600_000),
        "--to",
        str(now + 3_600_000),
        "--samples-out",
        str(tmp_path / "s.lsb"),
        "--quiet",
        "--json",
    ]
    assert main(argv) == 0
    backfilled = orjson.loads(capsys.readouterr().out)
    assert backfilled["read"] == len(values)
    assert backfilled["applied"] + backfilled["rejected"] == len(values)


def _uninterrupted(tmp: Path, log: Path) -> tuple[object, object, list[Any]]:
    m = Metrics(CollectorRegistry())
    root = tmp / "ref-store"
    bf = Backfill(
        open_source(str(log)), root, 4, StoreConfig(), WorkerConfig(), EventConfig(), metrics=m
    )
    with SampleFileWriter(tmp / "ref.lsb") as samples:
        dead = DeadLetterFile(tmp / "ref.jsonl", m)
        assert bf.run(samples, dead).complete
        dead.close()
    return (
        dump_store(root, 4, StoreConfig()),
        sample_rows(iter_sample_file(tmp / "ref.lsb")),
        sorted((d["partition"], d["offset"]) for d in read_deadletter_file(tmp / "ref.jsonl")),  # type: ignore[type-var]
    )


@pytest.mark.slow
def test_sigterm_and_sigkill_then_resume_give_the_uninterrupted_store(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "events.jsonl", generated(40_000, seed=11))
    store, samples, dead = tmp_path / "store", tmp_path / "s.lsb", tmp_path / "d.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "lumstream.cli",
        *base_args(tmp_path),
        "--set",
        "kafka.partitions=4",
        "--set",
        "worker.batch_max=200",
        "replay",
        "backfill",
        str(log),
        "--store",
        str(store),
        "--samples-out",
        str(samples),
        "--deadletters-out",
        str(dead),
        "--quiet",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUMSTREAM_")}

    def start_and(sig: signal.Signals, after_bytes: int) -> int:
        before = samples.stat().st_size if samples.exists() else 0
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if samples.exists() and samples.stat().st_size > before + after_bytes:
                    break
                time.sleep(0.01)
            assert proc.poll() is None, "the backfill ended before it could be interrupted"
            os.kill(proc.pid, sig)
            return proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert start_and(signal.SIGTERM, 200_000) == 130  # stops cleanly at a resume point
    manifest = read_json(store / MANIFEST)
    assert manifest is not None
    assert manifest["resume"] is not None
    assert not manifest["complete"]
    assert start_and(signal.SIGKILL, 200_000) == -signal.SIGKILL
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "resumed" in done.stdout
    want_store, want_samples, want_dead = _uninterrupted(tmp_path, log)
    assert dump_store(store, 4, StoreConfig()) == want_store
    blocks = list(iter_sample_file(samples))
    assert sample_rows(blocks) == want_samples
    assert sum(map(len, blocks)) == len(want_samples)  # each sample once in the file
    got_dead = sorted((d["partition"], d["offset"]) for d in read_deadletter_file(dead))  # type: ignore[type-var]
    assert got_dead == want_dead
