"""Published backbone versions: ``ROOT/vN/`` directories, atomic, validated, retained.

A version directory holds ``manifest.json`` (format, number, parent, creation time, config,
parameter count, data watermark, metrics, and the size and SHA-256 of every file) and
``model.safetensors`` (parameters, buffers and vocab arrays; weights only, never pickle).

Publishing, listing, verification and retention are :class:`core.durable.VersionedDir`'s:
a reader sees either no ``vN`` or a complete one, also when the publisher dies mid-way, and
retention never deletes a visible version in place.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.durable import MANIFEST, VersionedDir, VersionError
from core.settings import ConfigError, build
from monitoring.metrics import Metrics
from trainer.backbone.config import BackboneConfig
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.tokens import Vocabs

FORMAT = 1
WEIGHTS = "model.safetensors"
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


def versions_dir(root: str | Path) -> VersionedDir:
    """The backbone's versions ``ROOT/vN``."""
    return VersionedDir(Path(root), "v")


def _tensors(model: LumBackbone) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out.update(
        {k: torch.from_numpy(np.array(v, dtype=np.int64)) for k, v in model.vocabs.state().items()}
    )
    return out


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
    vd = versions_dir(root)
    staged = vd.stage()
    try:
        save_file(_tensors(model), str(staged / WEIGHTS))
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
        }
        path = vd.publish(staged, manifest)
    except BaseException:
        vd.discard(staged)
        raise
    info = read_manifest(path, verify=False)
    if registry is not None:
        export_newest(info, registry)
    if keep is not None:
        retain(root, keep)
    return info


def export_newest(info: VersionInfo, registry: Metrics) -> None:
    """Export ``info`` as the newest version: its number, publication time and retrieval
    metrics (the series of older versions are removed: one version's at a time)."""
    registry.backbone_version.set(info.number)
    registry.backbone_version_time.set(int(info.manifest["created_at_ms"]) / 1000.0)
    registry.backbone_eval.clear()
    for k, v in info.manifest["metrics"].items():
        registry.backbone_eval.labels(version=info.name, metric=k).set(v)


def retain(root: str | Path, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` versions; returns the removed names."""
    return versions_dir(root).retain(keep)


def read_manifest(path: str | Path, verify: bool = True) -> VersionInfo:
    """Parse and check a version directory's manifest (and, with ``verify``, its files).

    Raises:
        VersionError: not a version name, no or corrupt manifest, a missing, truncated or
            altered file.
    """
    path = Path(path)
    vd = versions_dir(path.parent)
    vd.number(path)  # the name first: a clearer error for a wrong directory
    if not path.is_dir():
        raise VersionError(f"{path}: no such version directory")
    manifest = vd.verify(path, hashes=verify)
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise VersionError(f"{path / MANIFEST}: corrupt manifest, missing {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise VersionError(
            f"{path / MANIFEST}: format {manifest['format']!r}, this build reads {FORMAT}"
        )
    if WEIGHTS not in manifest["files"]:
        raise VersionError(f"{path / MANIFEST}: corrupt manifest, files must list {WEIGHTS}")
    return VersionInfo(path.name, int(manifest["number"]), path, manifest)


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
    for path in versions_dir(root).paths():
        try:
            out.append(read_manifest(path, verify=False))
        except VersionError:
            continue
    return out


def latest(root: str | Path) -> VersionInfo | None:
    """The newest valid version, or None."""
    versions = list_versions(root)
    return versions[-1] if versions else None


def find_version(root: str | Path, name: str | None = None) -> VersionInfo:
    """Version ``name`` under ``root`` (its manifest checked), or the newest valid one.

    Raises:
        VersionError: no version ``name`` (or a corrupt one), or no versions at all.
    """
    if name:
        return read_manifest(Path(root) / name)
    info = latest(root)
    if info is None:
        raise VersionError(f"no versions under {root}")
    return info
