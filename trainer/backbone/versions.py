"""Published backbone versions: ``ROOT/vN/`` directories, atomic, validated, retained.

A version directory holds ``manifest.json`` (format, number, parent, creation time, config,
parameter count, data watermark, metrics, and the size and SHA-256 of every file) and
``model.safetensors`` (parameters, buffers and vocab arrays; weights only, never pickle).

Publishing writes everything into a hidden temporary directory ``ROOT/.tmp-<pid>-<hex>``,
fsyncs the files and the directory, then renames it to ``vN`` in one ``os.rename`` and fsyncs
``ROOT``: a reader sees either no ``vN`` or a complete one, also when the publisher dies
mid-way. Temporary directories of dead publishers are removed by the next publish (or
:func:`clean_temp`). Retention renames an old version to a hidden name before deleting it,
so a half-deleted version is never visible either.

Loading (:func:`load_model`) checks the manifest, the file sizes and hashes, and the tensor
names and shapes, and raises :class:`VersionError` naming what is wrong.

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> list_versions(root)
    []
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.durable import fsync_path, sha256_file
from core.settings import ConfigError, build
from monitoring.metrics import Metrics
from trainer.backbone.config import BackboneConfig
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.tokens import Vocabs

FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
_NAME = re.compile(r"^v([0-9]+)$")
_HIDDEN = re.compile(r"^\.(tmp|del)-([0-9]+)-[0-9a-f]+$")
_REQUIRED = (
    "format",
    "number",
    "parent",
    "created_at_ms",
    "config",
    "param_count",
    "data_watermark",
    "metrics",
    "files",
)


class VersionError(RuntimeError):
    """A version directory that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class VersionInfo:
    """A published version.

    Args:
        name: ``vN``.
        number: N.
        path: its directory.
        manifest: the parsed manifest.
    """

    name: str
    number: int
    path: Path
    manifest: dict[str, Any]


def _numbers(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _NAME.match(p.name)))


def _tensors(model: LumBackbone) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out.update(
        {k: torch.from_numpy(np.array(v, dtype=np.int64)) for k, v in model.vocabs.state().items()}
    )
    return out


def _write_manifest(tmp: Path, manifest: dict[str, Any]) -> None:
    path = tmp / MANIFEST
    path.write_bytes(json.dumps(manifest, indent=2, sort_keys=True).encode())
    fsync_path(path)


def clean_temp(root: Path) -> list[Path]:
    """Remove hidden temporary/deletion directories of processes that no longer run."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for p in root.iterdir():
        m = _HIDDEN.match(p.name)
        if not m or (int(m.group(2)) != os.getpid() and _alive(int(m.group(2)))):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(
    root: str | Path,
    model: LumBackbone,
    *,
    watermark: int,
    metrics: dict[str, float] | None = None,
    parent: str | None = None,
    keep: int | None = None,
    registry: Metrics | None = None,
) -> VersionInfo:
    """Atomically publish ``model`` as the next version ``vN`` under ``root``.

    Args:
        root: the versions directory (created when missing).
        model: the frozen backbone.
        watermark: newest event time (ms) of the data it was trained on.
        metrics: evaluation metrics to record (e.g. hr@10, ndcg@10, mrr).
        parent: the version it was warm-started from (None: trained from scratch).
        keep: retain only the newest ``keep`` versions afterwards (None: keep all).
        registry: Prometheus metrics (current version, per-version eval metrics).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clean_temp(root)
    tmp = root / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        info = _publish_from(root, tmp, model, watermark, metrics, parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if registry is not None:
        registry.backbone_version.set(info.number)
        for k, v in info.manifest["metrics"].items():
            registry.backbone_eval.labels(version=info.name, metric=k).set(v)
    if keep is not None:
        retain(root, keep)
    return info


def _publish_from(
    root: Path,
    tmp: Path,
    model: LumBackbone,
    watermark: int,
    metrics: dict[str, float] | None,
    parent: str | None,
) -> VersionInfo:
    weights = tmp / WEIGHTS
    save_file(_tensors(model), str(weights))
    fsync_path(weights)
    now_ms = time.time_ns() // 1_000_000
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "parent": parent,
        "created_at_ms": now_ms,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000)),
        "config": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(model.cfg).items()
        },
        "param_count": model.param_count(),
        "data_watermark": int(watermark),
        "metrics": dict(metrics or {}),
        "vocab_sizes": {
            "items": len(model.vocabs.items),
            "cats": len(model.vocabs.cats),
            "conds": [len(v) for v in model.vocabs.conds],
        },
        "files": {WEIGHTS: {"bytes": weights.stat().st_size, "sha256": sha256_file(weights)}},
    }
    for _attempt in range(100):
        number = max(_numbers(root), default=0) + 1
        manifest["number"] = number
        _write_manifest(tmp, manifest)
        fsync_path(tmp)
        try:
            os.rename(tmp, root / f"v{number}")
        except OSError:  # another publisher took vN: take the next number
            continue
        break
    else:
        raise VersionError(f"{root}: could not claim a version number after 100 attempts")
    fsync_path(root)
    return VersionInfo(f"v{number}", number, root / f"v{number}", manifest)


def retain(root: str | Path, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` versions; returns the removed names."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    root = Path(root)
    removed = []
    for n in _numbers(root)[:-keep]:
        hidden = root / f".del-{os.getpid()}-{uuid.uuid4().hex}"
        os.rename(root / f"v{n}", hidden)
        shutil.rmtree(hidden, ignore_errors=True)
        removed.append(f"v{n}")
    if removed:
        fsync_path(root)
    return removed


def read_manifest(path: str | Path, verify: bool = True) -> VersionInfo:
    """Parse and check a version directory's manifest (and, with ``verify``, its files).

    Raises:
        VersionError: not a version name, no or corrupt manifest, a missing, truncated or
            altered file.
    """
    path = Path(path)
    m = _NAME.match(path.name)
    if not m:
        raise VersionError(f"{path}: not a version directory (expected a name like v3)")
    if not path.is_dir():
        raise VersionError(f"{path}: no such version directory")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise VersionError(f"{path}: {MANIFEST} is missing (partial or foreign directory)")
    try:
        manifest = json.loads(mpath.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VersionError(f"{mpath}: corrupt manifest, not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise VersionError(f"{mpath}: corrupt manifest, expected a JSON object")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise VersionError(f"{mpath}: corrupt manifest, missing {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise VersionError(f"{mpath}: format {manifest['format']!r}, this build reads {FORMAT}")
    if manifest["number"] != int(m.group(1)):
        raise VersionError(
            f"{mpath}: manifest number {manifest['number']!r} does not match "
            f"the directory name {path.name}"
        )
    files = manifest["files"]
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise VersionError(f"{mpath}: corrupt manifest, files must list {WEIGHTS}")
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise VersionError(f"{path}: {name} is missing (partial version)")
        size = f.stat().st_size
        if size != meta.get("bytes"):
            raise VersionError(
                f"{f}: {size} bytes, the manifest says {meta.get('bytes')} (truncated or replaced)"
            )
        if verify and sha256_file(f) != meta.get("sha256"):
            raise VersionError(f"{f}: SHA-256 differs from the manifest (corrupt)")
    return VersionInfo(path.name, int(m.group(1)), path, manifest)


def load_model(
    path: str | Path, verify: bool = True, device: torch.device | str = "cpu"
) -> LumBackbone:
    """Load a published version into a :class:`LumBackbone` (eval mode).

    Raises:
        VersionError: see :func:`read_manifest`; also unreadable weights, an invalid config,
            missing arrays or wrong shapes.
    """
    info = read_manifest(path, verify)
    try:
        cfg = build(BackboneConfig, info.manifest["config"], source=str(info.path / MANIFEST))
    except (ConfigError, TypeError) as exc:
        raise VersionError(f"{info.path}: invalid config in manifest: {exc}") from None
    try:
        tensors = load_file(str(info.path / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise VersionError(f"{info.path / WEIGHTS}: unreadable safetensors ({exc})") from None
    try:
        vocabs = Vocabs.from_state(
            {k: v.numpy() for k, v in tensors.items() if k.startswith("vocab.")},
            len(cfg.condition_fields),
        )
        model = LumBackbone(cfg, vocabs)
        model.load_state_dict(
            {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")},
            strict=True,
        )
    except (KeyError, ValueError, RuntimeError) as exc:
        raise VersionError(
            f"{info.path}: weights do not match the manifest's model: {exc}"
        ) from None
    return model.to(device).eval()


def list_versions(root: str | Path) -> list[VersionInfo]:
    """Valid versions under ``root``, oldest first (invalid ones are left out; use
    :func:`read_manifest` on a directory to see why it is invalid)."""
    out = []
    for n in _numbers(Path(root)):
        try:
            out.append(read_manifest(Path(root) / f"v{n}", verify=False))
        except VersionError:
            continue
    return out


def latest(root: str | Path) -> VersionInfo | None:
    """The newest valid version, or None."""
    versions = list_versions(root)
    return versions[-1] if versions else None
