"""Ranker checkpoints (everything needed to resume) and ranker versions (what serving loads).

**Checkpoint** ``CKPT/ck-<steps>/``: ``torch.distributed.checkpoint`` files of the dense
weights, the sharded tables, the fused row-wise Adagrad state, the dense Adam state and the
id mappers (each rank writes its own shards), plus ``stream.json``: where the consumer
resumes (offsets per lum.samples partition, high-water ``seq`` per source partition), the
step and sample counters, the backbone versions used, and the size and SHA-256 of every
file. All ranks write into one staging directory of :class:`core.durable.VersionedDir`;
rank 0 then publishes it: a SIGKILL at any moment leaves either the previous checkpoint or
the new one, never a half one. Loading checks sizes and hashes first; a truncated or
corrupt checkpoint is skipped (logged, counted) and the previous one is used, and the next
checkpoint of the same step replaces the damaged one.

**Version** ``VERSIONS/rN/``: ``manifest.json`` and ``model.safetensors`` (the dense
weights, the full tables gathered to rank 0, the id -> row owners), published atomically
the same way and loaded weights-only by :func:`load_ranker` into the plain model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.durable import MANIFEST, VersionedDir, VersionError
from core.settings import ConfigError, build
from embeddings.config import EmbeddingsConfig
from embeddings.ids import IdMapper
from embeddings.tables import TABLES, PlainEmbeddingCollection
from monitoring.metrics import Metrics
from trainer.ranker.config import RankerConfig
from trainer.ranker.distributed import barrier, broadcast_bytes, world
from trainer.ranker.engine import RankerEngine, make_mappers
from trainer.ranker.model import RankerModel
from trainer.ranker.seen import SeenSeqs

log = logging.getLogger(__name__)

STREAM = "stream.json"
WEIGHTS = "model.safetensors"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint or version that cannot be used; the message says which and why."""


def _checked(vd: VersionedDir, path: Path) -> dict[str, Any]:
    """The verified manifest of a checkpoint or version, with this build's format."""
    try:
        meta = vd.verify(path)
    except VersionError as exc:
        raise CheckpointError(str(exc)) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / vd.manifest}: not a format-{FORMAT} file")
    return meta


def versions_dir(root: str | Path) -> VersionedDir:
    """Published ranker versions ``ROOT/rN``."""
    return VersionedDir(Path(root), "r")


class Checkpointer:
    """Saves and restores the full training state (collective: call on every rank).

    Args:
        root: the checkpoint directory.
        keep: checkpoints kept.
        metrics: ``ranker_checkpoints{outcome}`` and the checkpoint age.
    """

    def __init__(self, root: str | Path, keep: int = 3, metrics: Metrics | None = None) -> None:
        self.root, self.keep, self.metrics = Path(root), keep, metrics
        self.dir = VersionedDir(self.root, "ck-", width=12, manifest=STREAM)
        self.saved_at: float | None = None

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.ranker_checkpoints.labels(outcome=outcome).inc()

    def list(self) -> list[Path]:
        """Checkpoint directories, newest first."""
        return self.dir.paths()[::-1]

    def save(self, engine: RankerEngine, stream: dict[str, Any]) -> Path:
        """Write a checkpoint of ``engine`` and the consumer state ``stream`` atomically.

        A checkpoint of the same step that exists and verifies is kept (no step since it:
        the same state); one that does not verify (truncated, corrupt) is replaced.
        """
        import torch.distributed.checkpoint as dcp

        rank, _ = world()
        staged = self.dir.stage() if rank == 0 else None
        staged = Path(broadcast_bytes(str(staged).encode() if rank == 0 else None).decode())
        barrier()
        dcp.save(engine.state(), checkpoint_id=str(staged))
        barrier()
        final = self.dir.root / self.dir.name(engine.steps)
        if rank == 0:
            meta = dict(stream)
            meta.update(
                format=FORMAT,
                steps=engine.steps,
                samples_learned=engine.samples_learned,
                created_at_ms=time.time_ns() // 1_000_000,
            )
            final = self.dir.publish(staged, meta, number=engine.steps)
            self.dir.retain(self.keep)
        barrier()
        self.saved_at = time.time()
        self._count("saved")
        if self.metrics is not None:
            self.metrics.ranker_checkpoint_time.set(self.saved_at)
        return final

    def restore(self, engine: RankerEngine) -> dict[str, Any] | None:
        """Load the newest valid checkpoint into ``engine``; its stream state, or None.

        Raises:
            CheckpointError: a verified checkpoint that does not fit the model (the config
                changed: use another checkpoint directory).
        """
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        rank, _ = world()
        chosen = b""
        if rank == 0:
            for path in self.list():
                try:
                    _checked(self.dir, path)
                except CheckpointError as exc:
                    log.warning("ranker checkpoint skipped: %s", exc)
                    self._count("load_failed")
                    continue
                chosen = str(path).encode()
                break
        picked = broadcast_bytes(chosen if rank == 0 else None).decode()
        if not picked:
            return None
        path = Path(picked)
        state = engine.state()
        try:
            dcp.load(state, checkpoint_id=str(path))
            engine.load_state(state)
        except (CheckpointException, RuntimeError, ValueError, KeyError) as exc:
            # DCP's CheckpointException is a BaseException
            raise CheckpointError(
                f"{path}: does not fit this model ({exc}); the ranker or embeddings config "
                "changed: point ranker.checkpoint_dir elsewhere"
            ) from exc
        self._count("restored")
        meta = json.loads((path / STREAM).read_text())
        log.info("ranker: resumed from %s (%d samples learned)", path, engine.samples_learned)
        return meta


# -- versions -----------------------------------------------------------------------------------
def _config_dict(cfg: object) -> dict[str, Any]:
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(cfg).items()  # type: ignore[call-overload]
    }


def publish_version(
    root: str | Path,
    engine: RankerEngine,
    info: dict[str, Any],
    *,
    keep: int = 3,
    metrics: Metrics | None = None,
) -> Path | None:
    """Export ``engine`` as the next version ``rN`` under ``root`` (collective; rank 0
    writes and returns the path, other ranks return None).

    Args:
        info: recorded in the manifest (backbone version, watermark, window metrics...).
    """
    from safetensors.torch import save_file

    tables = {t: engine.access.full_table(t) for t in TABLES}  # collective gather
    rank, _ = world()
    if rank != 0:
        return None
    vd = versions_dir(root)
    staged = vd.stage()
    try:
        tensors: dict[str, torch.Tensor] = {
            f"dense.{k}": v.detach().contiguous()
            for k, v in engine.model.state_dict().items()
            if not k.startswith("sparse.")
        }
        for t, table in tables.items():
            assert table is not None
            tensors[f"table.{t}"] = table.contiguous()
        for t, mapper in engine.mappers.items():
            tensors[f"ids.{t}.owner"] = torch.from_numpy(mapper.owner.copy())
            tensors[f"ids.{t}.last_seen"] = torch.from_numpy(mapper.last_seen.copy())
        save_file(tensors, str(staged / WEIGHTS))
        manifest = dict(info)
        manifest.update(
            format=FORMAT,
            kind="ranker",
            created_at_ms=time.time_ns() // 1_000_000,
            ranker=_config_dict(engine.cfg),
            embeddings=_config_dict(engine.emb),
            lum={"dim": engine.lum_dim, "conditions": engine.lum_conditions},
            steps=engine.steps,
            samples_learned=engine.samples_learned,
        )
        final = vd.publish(staged, manifest)
    except BaseException:
        vd.discard(staged)
        raise
    vd.retain(keep)
    if metrics is not None:
        metrics.ranker_version.set(vd.number(final))
        metrics.ranker_version_time.set(int(manifest["created_at_ms"]) / 1000.0)
    return final


def export_newest_version(root: str | Path, metrics: Metrics) -> None:
    """Export the newest version already under ``root`` (its number and publication time),
    so a restarted trainer reports its age before it publishes again."""
    vd = versions_dir(root)
    path = vd.latest()
    if path is None:
        return
    try:
        manifest = vd.read_manifest(path)
    except VersionError:
        return
    metrics.ranker_version.set(vd.number(path))
    metrics.ranker_version_time.set(int(manifest.get("created_at_ms", 0)) / 1000.0)


@dataclass
class LoadedRanker:
    """A published version, ready to score (plain embeddings, eval mode).

    Args:
        model: the ranker.
        mappers: table -> id mapper (owners and last-seen times; no admission counts).
        manifest: the parsed manifest.
    """

    model: RankerModel
    mappers: dict[str, IdMapper]
    manifest: dict[str, Any]


def load_ranker(path: str | Path) -> LoadedRanker:
    """Load ``VERSIONS/rN`` weights-only (safetensors), checking sizes and hashes.

    Raises:
        CheckpointError: missing, truncated or corrupt files, an invalid config, weights
            that do not fit.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    manifest = _checked(versions_dir(path.parent), path)
    try:
        cfg = build(RankerConfig, manifest["ranker"], source=str(path / MANIFEST))
        emb = build(EmbeddingsConfig, manifest["embeddings"], source=str(path / MANIFEST))
        lum = manifest["lum"]
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid config in manifest: {exc}") from None
    try:
        tensors = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path / WEIGHTS}: unreadable ({exc})") from None
    model = RankerModel(cfg, emb, PlainEmbeddingCollection(emb), lum["dim"], lum["conditions"])
    state = {k[len("dense.") :]: v for k, v in tensors.items() if k.startswith("dense.")}
    for t in TABLES:
        state[f"sparse.embeddings.{t}.weight"] = tensors.get(f"table.{t}", torch.empty(0))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the manifest's model: {exc}") from None
    mappers = make_mappers(emb)
    for t, m in mappers.items():
        m.owner[...] = tensors[f"ids.{t}.owner"].numpy()
        m.last_seen[...] = tensors[f"ids.{t}.last_seen"].numpy()
    return LoadedRanker(model.eval(), mappers, manifest)


def announce(
    send: Callable[[bytes, bytes], None], version: Path, manifest_extra: dict[str, Any]
) -> None:
    """Announce a published version: key ``b"ranker"``, value a JSON object (name, path,
    time, and ``manifest_extra``), through ``send(key, value)`` (e.g. a producer on
    ``lum.model-updates``)."""
    value = {
        "kind": "ranker",
        "name": version.name,
        "path": str(version.resolve()),
        "announced_at_ms": time.time_ns() // 1_000_000,
    }
    value.update(manifest_extra)
    send(b"ranker", json.dumps(value, sort_keys=True).encode())


def stream_state(
    seen: dict[int, SeenSeqs], positions: dict[int, int], **extra: Any
) -> dict[str, Any]:
    """The consumer part of a checkpoint (JSON keys are strings): per source partition the
    highest learned seq (``hwm``) and the holes below it (``holes``, only where some)."""
    out: dict[str, Any] = {
        "hwm": {str(k): v.top for k, v in seen.items()},
        "holes": {str(k): [list(h) for h in v.holes] for k, v in seen.items() if v.holes},
        "positions": {str(k): int(v) for k, v in positions.items()},
    }
    out.update(extra)
    return out


def parse_stream_state(meta: dict[str, Any]) -> tuple[dict[int, SeenSeqs], dict[int, int]]:
    """(seen, positions) of a checkpoint's stream state (one without ``holes`` has none)."""
    holes = meta.get("holes", {})
    seen = {
        int(k): SeenSeqs(int(v), [(int(a), int(b)) for a, b in holes.get(k, [])])
        for k, v in meta.get("hwm", {}).items()
    }
    return seen, {int(k): int(v) for k, v in meta.get("positions", {}).items()}
