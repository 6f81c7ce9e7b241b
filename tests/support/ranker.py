"""Tiny ranker fixtures: samples from the synthetic generator through the label join, small
configs, and LUM vectors from the generator's ground truth (no backbone training)."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry

from embeddings.config import EmbeddingsConfig
from monitoring.metrics import Metrics
from streams.config import EventConfig, GeneratorConfig, StoreConfig, WorkerConfig
from streams.contracts.ids import stable_id
from streams.contracts.samples import SampleBlock, split_blocks
from streams.generator import ClickStream, World
from streams.worker.processor import open_processor
from trainer.ranker.batch import Samples
from trainer.ranker.config import RankerConfig
from trainer.vectors.layout import ConditionLayout
from trainer.vectors.lookup import MemoryVectors
from trainer.vectors.store import VectorStore

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

GEN = GeneratorConfig(
    users=120, items=300, categories=4, events=12_000, seed=3, base_ctr=0.15, slate_size=5
)
EMB = EmbeddingsConfig(
    dim=8,
    user_rows=256,
    item_rows=512,
    cond_rows=16,
    cat_rows=16,
    admit_count=1,
    sketch_width=1024,
)
CFG = RankerConfig(batch_size=128, history_len=20, mlp=(16,), attention_hidden=8, window=2000)


@functools.cache
def blocks(gen: GeneratorConfig = GEN, rows_per_block: int = 64) -> tuple[SampleBlock, ...]:
    """Labelled samples of the generator's stream, one source partition, in small blocks."""
    pairs = [p for batch in ClickStream(gen).pair_batches() for p in batch]
    worker = WorkerConfig(label_window_s=30.0, history_len=30)
    with tempfile.TemporaryDirectory() as d:
        proc = open_processor(
            Path(d),
            0,
            StoreConfig(sync_writes=False),
            worker,
            EventConfig(),
            Metrics(CollectorRegistry()),
        )
        out: list[SampleBlock] = []
        step = 2000
        for i in range(0, len(pairs), step):
            chunk = pairs[i : i + step]
            res = proc.process(
                list(range(i, i + len(chunk))),
                [k for k, _ in chunk],
                [v for _, v in chunk],
                now_ms=2_000_000_000_000,
            )
            if res.samples is not None:
                out.extend(split_blocks(res.samples, rows_per_block))
            proc.commit()
        proc.close()
    return tuple(out)


def samples(gen: GeneratorConfig = GEN) -> Samples:
    return Samples.concat([Samples.from_block(b) for b in blocks(gen)])


def _truth(gen: GeneratorConfig, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query conditions (N,), o_q (U, N, dim), e_i (I, dim)) from the generator's truth."""
    world = World(gen)
    d = gen.latent_dim
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(d, dim)) / np.sqrt(d)
    users = np.arange(gen.users)
    conds = np.arange(gen.categories)
    tastes = world.tastes[0]
    rho = gen.condition_share
    match = tastes.interests[:, None, :] == conds[None, :, None]  # (U, N, K)
    inside = match.any(axis=-1)[..., None]  # (U, N, 1)
    slot = match.argmax(axis=-1)  # (U, N)
    taste = (
        np.sqrt(rho) * inside * tastes.prefs[users[:, None], slot]
        + np.sqrt(1 - rho) * world.user_taste[:, None, :]
    )  # (U, N, d)
    o = taste @ proj
    e = world.item_vectors @ proj
    o /= np.linalg.norm(o, axis=-1, keepdims=True) + 1e-9
    e /= np.linalg.norm(e, axis=-1, keepdims=True) + 1e-9
    q = np.array([stable_id(World.condition_name(c)) for c in conds], np.int64)
    return q, o.astype(np.float32), e.astype(np.float32)


def truth_vectors(
    gen: GeneratorConfig = GEN, version: int = 1, dim: int = 8, capacity: int | None = None
) -> MemoryVectors:
    """o_q = the generator's true taste t(u, c) and e_i = v_i: what a perfect backbone
    would write (the query conditions are all categories), valid for every sample (a
    version with watermark 0, records covering no event)."""
    q, o, e = _truth(gen, dim)
    layout = ConditionLayout(("cond",), q, capacity or len(q), dim)
    mem = MemoryVectors(layout)
    mem.add_version(version, watermark=0, items=np.arange(gen.items), item_vectors=e)
    mem.add(version, np.arange(gen.users), np.zeros(gen.users, np.int64), o)
    return mem


def truth_store(path: Path, gen: GeneratorConfig = GEN, version: int = 1, dim: int = 8) -> Path:
    """:func:`truth_vectors` written to a vector store at ``path`` (what the backbone
    refresh would leave there)."""
    q, o, e = _truth(gen, dim)
    store = VectorStore(path, sync=False)
    try:
        store.agree_layout(q[:, None], ("cond",), dim, len(q))
        store.add_version(version, 0, np.arange(gen.items), e)
        users = np.arange(gen.users)
        store.write(version, users, np.zeros(gen.users, np.int64), o, np.ones(gen.users, np.int64))
    finally:
        store.close()
    return path


def set_args(section: str, settings: DataclassInstance) -> list[str]:
    """``--set SECTION.NAME=VALUE`` for every field of the settings dataclass ``settings``
    that differs from its default: the command-line form of e.g. :data:`CFG` or :data:`EMB`.

    Example:
        >>> set_args("embeddings", dataclasses.replace(EmbeddingsConfig(), dim=8))
        ['--set', 'embeddings.dim=8']
    """
    default = type(settings)()
    out: list[str] = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value != getattr(default, f.name):
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            out += ["--set", f"{section}.{f.name}={text}"]
    return out
