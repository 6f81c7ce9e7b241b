"""The ranker (LUM step 3): sparse embeddings + DIN target attention + LUM features +
DCN-v2 cross network + MLP -> click logit.

Fields (each (B, D)): user, item, condition, category, the DIN summary of the history (the
candidate item+category attends over the history items+categories) and a projection of the
dense inputs (log history length, log seconds since the last history event, the LUM
missing flags); with LUM direct features also projections of o_q (the vector of the
sample's condition) and e_i; with interest matching one more field, a projection of
sim(o_q, e_i) for all N query conditions, the sample condition's own similarity and their
two missing flags. A missing vector (unknown user or item, a condition that is not a query
condition) is replaced by a learned default and its flag is set; a missing similarity is 0
with its flag set. The fields are concatenated, crossed (x_{l+1} = x_0 * (W x_l + b) + x_l)
and fed to the MLP.

Position bias (``ranker.position_bias``, on by default): a learned scalar per shown
position (a "shallow tower", as in YouTube's multitask ranker and PAL) added to the logit
in training only, so the main network does not learn "shown first" as relevance. Outside
training every candidate is scored at one fixed position (``ranker.serving_position``):
the same shift for all candidates, so the order is the main network's alone and the
scores are calibrated as "if shown at that position". Samples without a logged position
(bucket 0) get no bias. The biases start at zero (no draw from the seeded generator).

Interest matching has its own field rather than sharing the dense projection: sharing it
(with one flag per similarity) cost 0.015-0.02 progressive AUC on MovieLens
(``bench/ranker.py lum-gain``; docs/ranker.md).

The sparse part is injected (TorchRec's sharded fused collection or the plain reference,
:mod:`embeddings.tables`), so the dense part is the same code in both.

Example:
    >>> from embeddings.tables import PlainEmbeddingCollection
    >>> emb = EmbeddingsConfig(user_rows=8, item_rows=8, cond_rows=4, cat_rows=4, dim=4)
    >>> m = RankerModel(RankerConfig(), emb, PlainEmbeddingCollection(emb), lum_dim=6,
    ...                 lum_conditions=3)
    >>> sum(p.numel() for p in m.dense_parameters()) > 0
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec import KeyedJaggedTensor
from torchrec.sparse.jagged_tensor import JaggedTensor

from embeddings.config import EmbeddingsConfig
from trainer.ranker.batch import N_DENSE, RankerBatch
from trainer.ranker.config import RankerConfig


def padded(jt: JaggedTensor) -> tuple[Tensor, Tensor]:
    """A jagged (n, D) embedding -> ((B, L, D) zero-padded, (B, L) bool mask), L = longest."""
    lengths = jt.lengths()
    longest = max(int(lengths.max()) if lengths.numel() else 0, 1)
    dense = torch.ops.fbgemm.jagged_to_padded_dense(
        jt.values(), [jt.offsets()], [longest], 0.0
    )  # (B, L, D)
    mask = torch.arange(longest)[None, :] < lengths[:, None]  # (B, L)
    return dense, mask


class TargetAttention(nn.Module):
    """DIN: weights from an MLP on [h, q, h - q, h * q], masked softmax, weighted sum."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4 * dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, query: Tensor, hist: Tensor, mask: Tensor) -> Tensor:
        q = query[:, None, :].expand_as(hist)  # (B, L, D)
        scores = self.net(torch.cat([hist, q, hist - q, hist * q], dim=-1)).squeeze(-1)  # (B, L)
        w = torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1) * mask  # (B, L); 0 if empty
        return (w[..., None] * hist).sum(dim=1)  # (B, D)


class CrossNetwork(nn.Module):
    """DCN-v2 full-rank cross layers."""

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0  # (B, W)
        for layer in self.layers:
            x = x0 * layer(x) + x  # (B, W)
        return x


class RankerModel(nn.Module):
    """The CTR ranker.

    Args:
        cfg: features and model sizes.
        emb: table settings (the field width is ``emb.dim``).
        sparse: the embedding collection (fused TorchRec or plain), ``kjt -> {feature: jt}``.
        lum_dim: width Dl of the LUM vectors.
        lum_conditions: number N of query conditions.
    """

    def __init__(
        self,
        cfg: RankerConfig,
        emb: EmbeddingsConfig,
        sparse: nn.Module,
        lum_dim: int,
        lum_conditions: int,
    ) -> None:
        super().__init__()
        self.cfg, self.lum_dim, self.lum_conditions = cfg, lum_dim, lum_conditions
        self.sparse = sparse
        d = emb.dim
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)  # dense init independent of the sparse kind
            self.din = TargetAttention(d, cfg.attention_hidden)
            n_dense = N_DENSE
            fields = 6  # user, item, cond, cat, history summary, dense projection
            if cfg.lum_direct:
                self.o_default = nn.Parameter(torch.zeros(lum_dim))
                self.e_default = nn.Parameter(torch.zeros(lum_dim))
                self.o_proj = nn.Linear(lum_dim, d)
                self.e_proj = nn.Linear(lum_dim, d)
                fields += 2
                n_dense += 2  # missing flags of o_q and e_i
            if cfg.lum_matching:
                self.match_proj = nn.Linear(lum_conditions + 3, d)  # sims, own sim, 2 flags
                fields += 1
            self.dense_proj = nn.Linear(n_dense, d)
            width = fields * d
            self.cross = CrossNetwork(width, cfg.cross_layers)
            sizes = [width, *cfg.mlp]
            mlp: list[nn.Module] = []
            for a, b in itertools.pairwise(sizes):
                mlp += [nn.Linear(a, b), nn.SiLU()]
            mlp.append(nn.Linear(sizes[-1], 1))
            self.mlp = nn.Sequential(*mlp)
        if cfg.position_bias:  # zeros: the seeded init of the other layers is unchanged
            self.position_bias = nn.Parameter(torch.zeros(cfg.position_buckets))
        self.serving_bucket = cfg.position_bucket(cfg.serving_position)

    def dense_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the sparse tables."""
        return (p for n, p in self.named_parameters() if not n.startswith("sparse."))

    def forward(
        self,
        kjt: KeyedJaggedTensor,
        dense: Tensor,
        lum_user: Tensor,
        lum_user_found: Tensor,
        lum_item: Tensor,
        lum_item_found: Tensor,
        cond_index: Tensor,
        position: Tensor | None = None,
    ) -> Tensor:
        """Click logits (B,) of one batch (the fields of a :class:`RankerBatch`).

        Args:
            position: (B,) position buckets the samples were shown at, in training only;
                None (scoring, serving) scores every sample at ``serving_position``.
        """
        emb = self.sparse(kjt)
        user, item = emb["user"].values(), emb["item"].values()  # (B, D)
        cond, cat = emb["cond"].values(), emb["cat"].values()  # (B, D)
        hist_item, mask = padded(emb["hist_item"])  # (B, L, D), (B, L)
        hist_cat, _ = padded(emb["hist_cat"])  # (B, L, D)
        summary = self.din(item + cat, hist_item + hist_cat, mask)  # (B, D)
        fields = [user, item, cond, cat, summary]
        extra = [dense]  # (B, N_DENSE)
        if self.cfg.lum_direct:
            rows = torch.arange(len(cond_index))
            has_q = lum_user_found & (cond_index >= 0)  # (B,)
            o_q = lum_user[rows, cond_index.clamp(min=0)]  # (B, Dl)
            o_q = torch.where(has_q[:, None], o_q, self.o_default)  # (B, Dl)
            e_i = torch.where(lum_item_found[:, None], lum_item, self.e_default)  # (B, Dl)
            fields += [self.o_proj(o_q), self.e_proj(e_i)]  # (B, D) each
            extra += [(~has_q).float()[:, None], (~lum_item_found).float()[:, None]]
            if self.cfg.lum_matching:
                ok = (lum_user_found & lum_item_found)[:, None]  # (B, 1)
                sims = torch.einsum("bnd,bd->bn", lum_user, lum_item) * ok  # (B, N)
                own_ok = ok[:, 0] & (cond_index >= 0)  # (B,)
                own = sims[rows, cond_index.clamp(min=0)] * own_ok  # (B,)
                match = [sims, own[:, None], (~ok).float(), (~own_ok).float()[:, None]]
                fields.append(self.match_proj(torch.cat(match, dim=1)))  # (B, D)
        fields.append(self.dense_proj(torch.cat(extra, dim=1)))  # (B, D)
        x0 = torch.cat(fields, dim=1)  # (B, F * D)
        logits = self.mlp(self.cross(x0)).squeeze(-1)  # (B,)
        if self.cfg.position_bias:
            return logits + self._position_bias(position, len(logits))
        return logits

    def _position_bias(self, position: Tensor | None, bsz: int) -> Tensor:
        """(B,) the learned bias of each sample's position bucket (0 for bucket 0)."""
        if position is None:
            b = self.serving_bucket
            return self.position_bias[b - 1].expand(bsz) if b else torch.zeros(bsz)
        known = position > 0  # (B,)
        return torch.where(known, self.position_bias[(position - 1).clamp(min=0)], 0.0)


def model_inputs(batch: RankerBatch) -> tuple[object, ...]:
    """The positional inputs of :meth:`RankerModel.forward` from a batch."""
    return (
        batch.kjt,
        batch.dense,
        batch.lum_user,
        batch.lum_user_found,
        batch.lum_item,
        batch.lum_item_found,
        batch.cond_index,
    )


def weighted_bce(logits: Tensor, batch: RankerBatch, global_count: int) -> tuple[Tensor, Tensor]:
    """(sum of weighted per-sample log-losses / ``global_count``, per-sample finite mask).

    Samples whose logit is not finite get weight 0 (a bad sample never poisons a step).
    """
    finite = torch.isfinite(logits)
    safe = torch.where(finite, logits, torch.zeros_like(logits))
    per = F.binary_cross_entropy_with_logits(safe, batch.labels, reduction="none")  # (B,)
    w = batch.weights * finite
    return (per * w).sum() / max(global_count, 1), finite
