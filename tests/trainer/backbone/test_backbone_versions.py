"""Versions: atomic publish (also when the publisher is killed), retention, validation of
corrupt or partial directories, weights-only round trip."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from support.backbone import make_pairs
from support.metrics import sample
from support.paths import REPO, TESTS

from core.durable import VersionError, sha256_file
from monitoring.metrics import Metrics
from trainer.backbone import versions
from trainer.backbone.config import BackboneConfig
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.group_query import compute_vectors
from trainer.backbone.tokens import Vocabs

torch.set_num_threads(1)

_CHILD = """
import os, signal, sys
import torch
sys.path[:0] = [{repo!r}, {tests!r}]
from support.backbone import make_pairs
from trainer.backbone import versions
from trainer.backbone.config import BackboneConfig
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.tokens import Vocabs
torch.set_num_threads(1)
cfg = BackboneConfig(dim=8, heads=2, layers=1)
model = LumBackbone(cfg, Vocabs.build([s for _, s in make_pairs(n_users=4)], cfg))
mode, root = sys.argv[1], sys.argv[2]
while True:
    versions.publish(root, model, watermark=1, keep=2)
"""


def _model(seed: int = 0) -> LumBackbone:
    cfg = BackboneConfig(dim=8, heads=2, layers=1, max_len=12)
    torch.manual_seed(seed)
    return LumBackbone(cfg, Vocabs.build([s for _, s in make_pairs(n_users=6)], cfg)).eval()


def _child(mode: str, root: Path) -> subprocess.Popen[bytes]:
    code = _CHILD.format(repo=str(REPO), tests=str(TESTS))
    return subprocess.Popen(
        [sys.executable, "-c", code, mode, str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_publish_and_load_round_trip(tmp_path: Path, metrics: Metrics) -> None:
    model = _model()
    info = versions.publish(
        tmp_path, model, watermark=123, metrics={"hr@10": 0.25}, registry=metrics
    )
    assert info.name == "v1"
    assert sorted(p.name for p in info.path.iterdir()) == ["manifest.json", "model.safetensors"]
    m = info.manifest
    assert m["param_count"] == model.param_count()
    assert m["data_watermark"] == 123
    assert m["parent"] is None
    assert m["metrics"] == {"hr@10": 0.25}
    assert m["config"]["dim"] == 8
    assert sample(metrics, "lumstream_backbone_version") == 1
    assert sample(metrics, "lumstream_backbone_eval", version="v1", metric="hr@10") == 0.25
    loaded = versions.load_model(info.path)
    assert loaded.cfg == model.cfg
    assert loaded.vocabs.items == model.vocabs.items
    pairs = make_pairs(n_users=3)
    conds = np.array([1000, 1001])
    torch.testing.assert_close(
        compute_vectors(loaded, pairs, conds)[1],
        compute_vectors(model, pairs, conds)[1],
        rtol=0,
        atol=0,
    )
    second = versions.publish(tmp_path, loaded, watermark=200, parent=info.name)
    assert second.name == "v2"
    assert versions.latest(tmp_path).manifest["parent"] == "v1"  # type: ignore[union-attr]


def test_retention_keeps_the_newest_versions(tmp_path: Path) -> None:
    model = _model()
    for _ in range(5):
        versions.publish(tmp_path, model, watermark=1, keep=2)
    assert [v.name for v in versions.list_versions(tmp_path)] == ["v4", "v5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v4", "v5"]
    assert versions.publish(tmp_path, model, watermark=1).name == "v6"
    assert versions.retain(tmp_path, 1) == ["v4", "v5"]
    with pytest.raises(ValueError, match="at least 1"):
        versions.retain(tmp_path, 0)


def test_kill_at_a_random_moment_never_exposes_a_broken_version(tmp_path: Path) -> None:
    child = _child("loop", tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(versions.versions_dir(tmp_path).paths()) < 3:
        time.sleep(0.05)
    time.sleep(0.137)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    visible = sorted(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible, "the child published nothing"
    for path in visible:
        versions.load_model(path)  # complete and valid, or this raises
    versions.versions_dir(tmp_path).clean()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.fixture
def published(tmp_path: Path) -> Path:
    return versions.publish(tmp_path, _model(), watermark=1).path


def test_corrupt_manifest_is_refused(published: Path) -> None:
    (published / "manifest.json").write_text("{not json")
    with pytest.raises(VersionError, match="corrupt manifest, not valid JSON"):
        versions.load_model(published)
    assert versions.list_versions(published.parent) == []


def test_manifest_missing_fields_is_refused(published: Path) -> None:
    m = json.loads((published / "manifest.json").read_text())
    del m["files"]
    (published / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VersionError, match="corrupt manifest"):
        versions.load_model(published)


def test_missing_manifest_or_weights_is_a_partial_version(published: Path) -> None:
    (published / "model.safetensors").unlink()
    with pytest.raises(VersionError, match=r"model.safetensors is missing \(partial"):
        versions.load_model(published)
    (published / "manifest.json").unlink()
    with pytest.raises(VersionError, match=r"manifest\.json is missing"):
        versions.load_model(published)


def test_truncated_weights_are_refused(published: Path) -> None:
    weights = published / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(VersionError, match="truncated"):
        versions.load_model(published)
    # even with a manifest that agrees with the truncated file, safetensors refuses it
    m = json.loads((published / "manifest.json").read_text())
    m["files"]["model.safetensors"] = {"bytes": len(data) // 2, "sha256": sha256_file(weights)}
    (published / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VersionError, match="unreadable safetensors"):
        versions.load_model(published)


def test_altered_weights_fail_the_hash(published: Path) -> None:
    weights = published / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(VersionError, match="SHA-256"):
        versions.load_model(published)


def test_config_that_does_not_match_the_weights_is_refused(published: Path) -> None:
    m = json.loads((published / "manifest.json").read_text())
    m["config"]["dim"] = 16
    (published / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VersionError, match="do not match"):
        versions.load_model(published)
    m["config"]["attention"] = "linear"
    (published / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VersionError, match="invalid config"):
        versions.load_model(published)


def test_not_a_version_directory(tmp_path: Path) -> None:
    with pytest.raises(VersionError, match="not a version directory"):
        versions.load_model(tmp_path)
    with pytest.raises(VersionError, match="no such version"):
        versions.load_model(tmp_path / "v9")
