"""``lumstream train`` on a sample file: live mode resumes from its checkpoint, replay mode
trains epochs and publishes; no LUM vectors is a clear error."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch
from support.ranker import CFG, EMB, blocks, truth_vectors

from core.paths import PathsConfig
from lumstream.commands import train
from lumstream.config import Config, load
from monitoring.config import MetricsConfig
from streams.sinks.samples import write_sample_file
from trainer.ranker.checkpoint import load_ranker

torch.set_num_threads(1)


def config(tmp: Path, **ranker: object) -> Config:
    rcfg = dataclasses.replace(CFG, checkpoint_every_s=0, checkpoint_every_batches=5, **ranker)
    return dataclasses.replace(
        load(env={}),
        ranker=rcfg,
        embeddings=EMB,
        paths=PathsConfig(data_dir=tmp),
        metrics=MetricsConfig(enabled=False),
    )


def args(**kw: object) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    ns = p.parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_parse_range() -> None:
    assert train.parse_range("1000..2000") == (1000, 2000)
    assert train.parse_range("..2018-01-01T00:00:01")[1] == 1514764801000
    with pytest.raises(ValueError, match=r"FROM\.\.TO"):
        train.parse_range("2018")


def test_live_then_resume_then_replay(tmp_path: Path) -> None:
    truth_vectors().save(tmp_path / "backbone" / "vectors" / "v1")
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
            replay="..",
            vectors=str(tmp_path / "backbone" / "vectors"),
        ),
    )
    assert ok == 0
    assert (tmp_path / "replay" / "ranker" / "versions" / "r1").is_dir()


def test_missing_vectors_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train.run(config(tmp_path), args(samples_file="x")) == 2
    assert "no LUM vector set" in capsys.readouterr().err
