"""From sample blocks to the ranker's batch: validation, id mapping, history, LUM lookups.

:class:`Samples` is many :class:`~streams.contracts.samples.SampleBlock` rows in one columnar
set (with each row's source partition). :class:`BatchBuilder` turns a *global* batch of samples into
the rank's :class:`RankerBatch`: every rank receives the same global batch, maps its ids
with the same mappers (so they stay identical without communication) and keeps its slice.

Bad input is handled here, at the edge, never inside the model:

- label not 0/1, negative user or item id -> the sample is dropped (``ranker_samples_
  skipped{reason}``), training goes on;
- negative condition/category ids map to the shared new-id row (counted as ``new``);
- negative history ids -> that history event is dropped (``reason=bad_history``);
- history longer than ``history_len`` keeps the most recent events;
- a user/item/condition without a LUM vector valid at the sample's time, or with a
  non-finite one -> missing flag.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchrec import KeyedJaggedTensor

from embeddings.ids import IdMapper
from embeddings.tables import FEATURE_ORDER
from monitoring.metrics import Metrics
from streams.contracts.samples import HIST_DTYPE, SAMPLE_DTYPE, SampleBlock
from trainer.ranker.config import RankerConfig
from trainer.vectors.layout import ConditionLayout
from trainer.vectors.lookup import VectorSource, missing

log = logging.getLogger(__name__)

N_DENSE = 2  # log1p(history length), log1p(seconds since the last history event)
_HEADER = struct.Struct("<qq")


@dataclass(frozen=True)
class Samples:
    """Rows of many sample blocks.

    Args:
        rows: (n,) SAMPLE_DTYPE.
        partition: (n,) int64 source partition of each row.
        hist_lengths: (n,) int64 history events per row.
        hist: (sum(hist_lengths),) HIST_DTYPE, most recent last within a row.
    """

    rows: np.ndarray
    partition: np.ndarray
    hist_lengths: np.ndarray
    hist: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @classmethod
    def empty(cls) -> Samples:
        return cls(
            np.zeros(0, SAMPLE_DTYPE),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, HIST_DTYPE),
        )

    @classmethod
    def from_block(cls, block: SampleBlock) -> Samples:
        n = len(block)
        return cls(
            np.ascontiguousarray(block.rows, SAMPLE_DTYPE),
            np.full(n, block.partition, np.int64),
            block.hist_lengths.astype(np.int64),
            np.ascontiguousarray(block.hist, HIST_DTYPE),
        )

    @classmethod
    def concat(cls, parts: Sequence[Samples]) -> Samples:
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.rows for p in parts]),
            np.concatenate([p.partition for p in parts]),
            np.concatenate([p.hist_lengths for p in parts]),
            np.concatenate([p.hist for p in parts]),
        )

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.hist_lengths))).astype(np.int64)

    def slice(self, start: int, stop: int) -> Samples:
        off = self.offsets
        return Samples(
            self.rows[start:stop],
            self.partition[start:stop],
            self.hist_lengths[start:stop],
            self.hist[off[start] : off[stop]],
        )

    def select(self, keep: np.ndarray) -> Samples:
        """The rows where ``keep`` (bool (n,)) is true, with their history."""
        if keep.all():
            return self
        hist_keep = np.repeat(keep, self.hist_lengths)
        return Samples(
            self.rows[keep], self.partition[keep], self.hist_lengths[keep], self.hist[hist_keep]
        )

    def encode(self) -> bytes:
        """Bytes for broadcasting a batch to the other ranks (:meth:`decode` inverts)."""
        return b"".join(
            (
                _HEADER.pack(len(self), len(self.hist)),
                self.rows.tobytes(),
                self.partition.astype("<i8").tobytes(),
                self.hist_lengths.astype("<i8").tobytes(),
                self.hist.tobytes(),
            )
        )

    @classmethod
    def decode(cls, raw: bytes) -> Samples:
        n, nh = _HEADER.unpack_from(raw)
        pos = _HEADER.size
        rows = np.frombuffer(raw, SAMPLE_DTYPE, n, pos)
        pos += n * SAMPLE_DTYPE.itemsize
        part = np.frombuffer(raw, "<i8", n, pos)
        pos += 8 * n
        lens = np.frombuffer(raw, "<i8", n, pos)
        pos += 8 * n
        return cls(
            rows,
            part.astype(np.int64),
            lens.astype(np.int64),
            np.frombuffer(raw, HIST_DTYPE, nh, pos),
        )


@dataclass
class RankerBatch:
    """One rank's share of a global batch, as tensors.

    Args:
        kjt: sparse rows, keys :data:`~embeddings.tables.FEATURE_ORDER`.
        dense: (B, N_DENSE) context features.
        lum_user: (B, N, Dl) o_q of every query condition (zeros when missing).
        lum_user_found: (B,) bool.
        lum_item: (B, Dl) e_i (zeros when missing).
        lum_item_found: (B,) bool.
        cond_index: (B,) column of the sample's condition among the query conditions, -1.
        labels: (B,) float.
        weights: (B,) float, 0 for the placeholder row of an empty share.
        users: (B,) raw user ids (GAUC groups).
        position: (B,) int64 position bucket the sample was shown at (0 = unknown;
            :meth:`RankerConfig.position_bucket`): a training-only input.
    """

    kjt: KeyedJaggedTensor
    dense: torch.Tensor
    lum_user: torch.Tensor
    lum_user_found: torch.Tensor
    lum_item: torch.Tensor
    lum_item_found: torch.Tensor
    cond_index: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    users: np.ndarray
    position: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Mapped:
    """A cleaned global batch with its table rows (same on every rank)."""

    samples: Samples
    rows: dict[str, np.ndarray]  # feature -> rows (targets (n,), history (n_hist,))
    fresh: dict[str, np.ndarray]  # table -> rows newly handed out (re-initialise them)


class BatchBuilder:
    """Cleans, maps and slices global batches.

    Args:
        cfg: ranker settings (history length, LUM features).
        mappers: table -> :class:`~embeddings.ids.IdMapper` (``user``, ``item``, ``cond``,
            ``cat``).
        lum_dim / lum_conditions: shape of the LUM inputs: the vectors' width and the
            condition layout's capacity (o_q rows; rows the layout does not use yet are
            zeros, and learned from once conditions are appended to it).
        metrics: skip and id counters (the vector source counts its lookups).

    The vector store's condition layout is append-only (trainer/vectors/layout.py), so a
    row always means the same condition. A store whose layout was made for another width
    or capacity is refused (logged once, counted in ``lumstream_vectors_layout_refused``)
    and its samples get the missing-vector defaults.
    """

    def __init__(
        self,
        cfg: RankerConfig,
        mappers: Mapping[str, IdMapper],
        lum_dim: int,
        lum_conditions: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg, self.mappers, self.metrics = cfg, mappers, metrics
        self.lum_dim, self.lum_conditions = lum_dim, lum_conditions
        self.last_version: str | None = None  # newest backbone version of the last batch
        self._refused: set[tuple[int, int]] = set()

    def _skip(self, reason: str, n: int) -> None:
        if n and self.metrics is not None:
            self.metrics.ranker_samples_skipped.labels(reason=reason).inc(n)

    def clean(self, s: Samples) -> Samples:
        """Drop bad samples and bad history events; keep the last ``history_len`` events."""
        r = s.rows
        bad_label = r["label"] > 1
        bad_id = (r["user"] < 0) | (r["item"] < 0)
        self._skip("bad_label", int(bad_label.sum()))
        self._skip("bad_id", int((bad_id & ~bad_label).sum()))
        s = s.select(~(bad_label | bad_id))
        owner = np.repeat(np.arange(len(s)), s.hist_lengths)
        good = (s.hist["item"] >= 0) & (s.hist["cat"] >= 0)
        self._skip("bad_history", int((~good).sum()))
        g_len = np.bincount(owner[good], minlength=len(s))
        from_end = np.repeat(np.cumsum(g_len), g_len) - np.arange(int(good.sum())) - 1
        keep = np.zeros(len(s.hist), bool)
        keep[np.flatnonzero(good)] = from_end < self.cfg.history_len
        if not keep.all():
            lens = np.bincount(owner[keep], minlength=len(s)).astype(np.int64)
            s = Samples(s.rows, s.partition, lens, s.hist[keep])
        return s

    def map(self, s: Samples, learn: bool) -> Mapped:
        """Rows of every feature; with ``learn`` the mappers count, admit and expire."""
        r, h = s.rows, s.hist
        rows: dict[str, np.ndarray] = {}
        fresh: dict[str, np.ndarray] = {}
        for table, column in (("user", "user"), ("item", "item"), ("cond", "cond"), ("cat", "cat")):
            res = self.mappers[table].map(r[column], r["ts"], learn=learn)
            rows[table] = res.rows
            fresh[table] = res.fresh
            if self.metrics is not None:
                for outcome, n in res.counts.items():
                    if n:
                        self.metrics.ranker_ids.labels(table=table, outcome=outcome).inc(n)
        hist_ts = np.zeros(len(h), np.int64)
        rows["hist_item"] = self.mappers["item"].map(h["item"], hist_ts, learn=False).rows
        rows["hist_cat"] = self.mappers["cat"].map(h["cat"], hist_ts, learn=False).rows
        return Mapped(s, rows, fresh)

    def local(self, m: Mapped, rank: int, world: int, vectors: VectorSource | None) -> RankerBatch:
        """This rank's contiguous share of the global batch as a :class:`RankerBatch`
        (shares differ by at most one sample; an empty share is one weight-0 placeholder)."""
        n = len(m.samples)
        bounds = [(n * k) // world for k in range(world + 1)]
        a, b = bounds[rank], bounds[rank + 1]
        s = m.samples.slice(a, b)
        off = m.samples.offsets
        ha, hb = int(off[a]), int(off[b])
        sparse = {f: m.rows[f][a:b] for f in ("user", "item", "cond", "cat")}
        sparse["hist_item"] = m.rows["hist_item"][ha:hb]
        sparse["hist_cat"] = m.rows["hist_cat"][ha:hb]
        weights = np.ones(len(s), np.float32)
        hist_len = s.hist_lengths
        if len(s) == 0:  # every rank must join the collectives: a placeholder that learns nothing
            s = Samples(
                np.zeros(1, SAMPLE_DTYPE),
                np.zeros(1, np.int64),
                np.zeros(1, np.int64),
                np.zeros(0, HIST_DTYPE),
            )
            sparse = {
                f: np.zeros(1 if not f.startswith("hist") else 0, np.int64) for f in FEATURE_ORDER
            }
            weights = np.zeros(1, np.float32)
            hist_len = s.hist_lengths
        return self._tensors(s, sparse, hist_len, weights, vectors)

    def _tensors(
        self,
        s: Samples,
        sparse: dict[str, np.ndarray],
        hist_len: np.ndarray,
        weights: np.ndarray,
        vectors: VectorSource | None,
    ) -> RankerBatch:
        bsz = len(s)
        ones = np.ones(bsz, np.int64)
        lengths = np.concatenate(
            [ones if not f.startswith("hist") else hist_len for f in FEATURE_ORDER]
        )
        values = np.concatenate([sparse[f] for f in FEATURE_ORDER])
        kjt = KeyedJaggedTensor(
            keys=list(FEATURE_ORDER),
            values=torch.from_numpy(values),
            lengths=torch.from_numpy(lengths),
        )
        last_ts = np.zeros(bsz, np.int64)
        has = hist_len > 0
        if has.any():
            ends = np.cumsum(hist_len)[has] - 1
            last_ts[has] = s.hist["ts"][ends]
        gap_s = np.where(has, np.maximum(s.rows["ts"] - last_ts, 0) / 1000.0, 0.0)
        dense = np.stack([np.log1p(hist_len), np.log1p(gap_s)], axis=1).astype(np.float32)
        dense[~np.isfinite(dense)] = 0.0
        o, o_found, e, e_found, ci = self._lum(s, vectors)
        slot = s.rows["slot"].astype(np.int64)
        position = np.where(slot < 0, 0, np.minimum(slot, self.cfg.position_buckets - 1) + 1)
        return RankerBatch(
            kjt=kjt,
            dense=torch.from_numpy(dense),
            lum_user=torch.from_numpy(o),
            lum_user_found=torch.from_numpy(o_found),
            lum_item=torch.from_numpy(e),
            lum_item_found=torch.from_numpy(e_found),
            cond_index=torch.from_numpy(ci),
            labels=torch.from_numpy(s.rows["label"].astype(np.float32)),
            weights=torch.from_numpy(weights),
            users=s.rows["user"].copy(),
            position=torch.from_numpy(position),
        )

    def _lum(
        self, s: Samples, v: VectorSource | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        bsz = len(s)
        layout = v.layout if v is not None and self.cfg.lum_direct else None
        if v is None or layout is None or not self._usable(layout):
            got = missing(bsz, self.lum_conditions, self.lum_dim)
        else:
            conds = np.stack([s.rows[f] for f in layout.fields], axis=1)
            got = v.lookup(s.rows["user"], s.rows["item"], conds, s.rows["ts"])
        newest = int(got.version.max()) if bsz else -1
        self.last_version = f"v{newest}" if newest >= 0 else None
        return got.user, got.user_found, got.item, got.item_found, got.cond_index

    def _usable(self, layout: ConditionLayout) -> bool:
        shape = (layout.capacity, layout.dim)
        if shape == (self.lum_conditions, self.lum_dim):
            return True
        if shape not in self._refused:
            self._refused.add(shape)
            log.warning(
                "ranker: not using the vector store: its layout holds %d conditions x %d, "
                "the ranker was built for %d x %d",
                *shape,
                self.lum_conditions,
                self.lum_dim,
            )
            if self.metrics is not None:
                self.metrics.vector_layout_refused.labels(consumer="ranker").inc()
        return False
