"""``lumstream train`` on a sample file: live mode resumes from its checkpoint, replay mode
trains epochs over a --from/--to range and publishes; no LUM vectors, options that need
--replay without it, and a backwards range are clear errors."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from support.ranker import CFG, EMB, blocks, truth_store

from core.paths import PathsConfig
from lumstream.commands import train
from lumstream.config import Config, load
from monitoring.config import MetricsConfig
from streams.sinks.samples import write_sample_file
from trainer.ranker.checkpoint import load_ranker

torch.set_num_threads(1)


def config(tmp: Path, **ranker: object) -> Config:
    rcfg = dataclasses.replace(CFG, checkpoint_every_s=0, checkpoint_every_batches=5, **ranker)
    base = load(env={})
    return dataclasses.replace(
        base,
        ranker=rcfg,
        embeddings=EMB,
        paths=PathsConfig(data_dir=tmp),
        metrics=MetricsConfig(enabled=False),
        backbone=dataclasses.replace(base.backbone, dim=8, heads=2),
        refresh=dataclasses.replace(base.refresh, condition_capacity=4),
    )


def args(**kw: object) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    ns = p.parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return p.parse_args(list(argv))


def test_the_replay_grammar(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    plan = train.plan(cfg, parse("--replay", "--from", "1000", "--to", "2018-01-01T00:00:01"))
    assert plan.replay is not None
    assert plan.replay.ts_range == (1000, 1514764801000)
    assert (plan.replay.epochs, plan.replay.mode, plan.replay.inherit) == (1, "sparse_reset", False)
    plan = train.plan(cfg, parse("--replay", "--epochs", "3", "--epoch-mode", "naive"))
    assert plan.replay is not None
    assert plan.replay.ts_range == (None, None)
    assert plan.replay.bounds == (0, 2**63 - 1)
    assert (plan.replay.epochs, plan.replay.mode) == (3, "naive")
    live = train.plan(cfg, parse("--max-batches", "5"))
    assert (live.replay, live.max_batches) == (None, 5)
    assert live.checkpoints == tmp_path / "ranker" / "ckpt"
    assert live.versions == tmp_path / "ranker" / "versions"
    assert live.vector_store == tmp_path / "vectors"
    assert (live.lum_dim, live.lum_capacity) == (8, 4)  # backbone.dim, condition_capacity


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "2"], "lumstream train: --epochs 2 needs --replay"),
        (["--from", "2026-01-01"], "lumstream train: --from needs --replay"),
        (["--inherit", "--epoch-mode", "naive"], "--epoch-mode, --inherit need --replay"),
        (["--replay", "--epochs", "0"], "lumstream train: --epochs 0: must be at least 1"),
        (["--replay", "--max-batches", "3"], "--max-batches is for live training"),
        (
            ["--replay", "--from", "2026-02-01", "--to", "2026-01-01"],
            "lumstream train: --to 2026-01-01 is before --from 2026-02-01",
        ),
        (["--replay", "--from", "yesterday"], "'yesterday' is neither ms since the epoch"),
    ],
)
def test_arguments_that_do_not_go_together_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """One line on stderr, exit 2, before anything is trained or written."""
    assert train.run(config(tmp_path), parse(*argv, "--samples-file", "x")) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "ranker").exists()


def test_live_then_resume_then_replay(tmp_path: Path) -> None:
    truth_store(tmp_path / "vectors")
    data = tmp_path / "samples.bin"
    write_sample_file(data, blocks()[:20])
    cfg = config(tmp_path)
    assert train.run(cfg, args(samples_file=str(data), max_batches=6)) == 0
    assert train.run(cfg, args(samples_file=str(data))) == 0
    versions = sorted((tmp_path / "ranker" / "versions").iterdir())
    last = load_ranker(versions[-1])
    assert last.manifest["samples_learned"] == sum(len(b) for b in blocks()[:20])
    assert last.manifest["backbone"] == "v1"
    replay = config(tmp_path / "replay")
    (tmp_path / "replay").mkdir()
    ok = train.run(
        replay,
        args(
            samples_file=str(data),
            epochs=2,
            replay=True,
            vectors=str(tmp_path / "vectors"),
        ),
    )
    assert ok == 0
    assert (tmp_path / "replay" / "ranker" / "versions" / "r1").is_dir()


def test_a_vector_store_of_another_shape_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth_store(tmp_path / "vectors", dim=4)  # the ranker is built for 8 wide vectors
    assert train.run(config(tmp_path), args(samples_file="x")) == 2
    err = capsys.readouterr().err
    assert "holds 4 conditions x 4, this ranker is built for 4 x 8" in err
    assert err.count("\n") == 1


def test_no_vector_store_yet_trains_with_missing_lum_inputs(tmp_path: Path) -> None:
    """The ranker may start before the backbone has written anything (a deployment's
    start-up order): LUM inputs are missing until the store appears."""
    data = tmp_path / "samples.bin"
    write_sample_file(data, blocks()[:4])
    assert train.run(config(tmp_path), args(samples_file=str(data))) == 0
    (version,) = (tmp_path / "ranker" / "versions").iterdir()
    assert load_ranker(version).manifest["backbone"] is None


def test_a_replay_learns_only_the_samples_of_its_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth_store(tmp_path / "vectors")
    bl = blocks()[:20]
    data = tmp_path / "samples.bin"
    write_sample_file(data, bl)
    ts = np.concatenate([b.rows["ts"] for b in bl])
    lo, hi = (int(x) for x in np.quantile(ts, [0.25, 0.75]))
    inside = int(((ts >= lo) & (ts < hi)).sum())
    assert 0 < inside < len(ts)
    argv = ["--replay", "--from", str(lo), "--to", str(hi), "--samples-file", str(data)]
    assert train.run(config(tmp_path), parse(*argv)) == 0
    assert "epoch 1: progressive auc" in capsys.readouterr().err
    (version,) = (tmp_path / "ranker" / "versions").iterdir()
    manifest = load_ranker(version).manifest
    assert manifest["samples_learned"] == inside
    assert lo <= manifest["data_watermark"] < hi
    # an empty range: exit 1, one line, nothing new published
    empty = ["--replay", "--to", str(int(ts.min())), "--samples-file", str(data)]
    empty += ["--vectors", str(tmp_path / "vectors")]
    assert train.run(config(tmp_path / "empty"), parse(*empty)) == 1
    assert "lumstream train: --replay: no samples in the range" in capsys.readouterr().err
