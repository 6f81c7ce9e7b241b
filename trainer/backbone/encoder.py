"""The LUM backbone: token encoder + causal user encoder (softmax or HSTU blocks).

:class:`LumBackbone` maps a :class:`~trainer.backbone.tokens.TokenBatch` to one output per
token; the layout (padded, packed, group query) lives entirely in the batch's mask, so the
same weights and code serve training, evaluation and step-2 querying.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.backbone.attention import hstu_attention, softmax_attention
from trainer.backbone.config import BackboneConfig
from trainer.backbone.tokens import TokenBatch, TokenEncoder, Tokenizer, Vocabs


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)  # (B, H, T, Dh)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)  # (B, T, D)


class SoftmaxBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)); x + FFN(LN(x)).

    Args:
        cfg: dim, heads, ffn_mult, dropout.
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ffn = nn.Sequential(
            nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Linear(cfg.ffn_mult * d, d)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)  # 3 x (B, T, D)
        a = softmax_attention(
            _split_heads(q, self.heads),
            _split_heads(k, self.heads),
            _split_heads(v, self.heads),
            mask,
        )  # (B, H, T, Dh)
        x = x + self.drop(self.out(_merge_heads(a)))
        return x + self.drop(self.ffn(self.norm2(x)))  # (B, T, D)


class HstuBlock(nn.Module):
    """HSTU layer: U, V, Q, K = split(SiLU(f1(LN(x)))); x + f2(LN(A(Q, K) V) * U).

    Args:
        cfg: dim, heads, dropout, max_tokens (the pointwise attention's normaliser).
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.heads, self.n = cfg.heads, cfg.max_tokens
        self.norm_in, self.norm_attn = nn.LayerNorm(d), nn.LayerNorm(d)
        self.f1 = nn.Linear(d, 4 * d)
        self.f2 = nn.Linear(d, d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        u, v, q, k = F.silu(self.f1(self.norm_in(x))).chunk(4, dim=-1)  # 4 x (B, T, D)
        a = hstu_attention(
            _split_heads(q, self.heads),
            _split_heads(k, self.heads),
            _split_heads(v, self.heads),
            mask,
            self.n,
        )  # (B, H, T, Dh)
        return x + self.drop(self.f2(self.norm_attn(_merge_heads(a)) * u))  # (B, T, D)


class LumBackbone(nn.Module):
    """Token encoder + causal user encoder; carries its config and vocabs.

    Args:
        cfg: the backbone config (objective, sizes, attention kind).
        vocabs: the id -> row mappings (table sizes, item categories).

    Example:
        >>> import numpy as np
        >>> from streams.contracts.records import SEQ_DTYPE
        >>> from trainer.backbone.packing import collate_packed
        >>> seq = np.zeros(4, SEQ_DTYPE); seq["item"] = [1, 2, 3, 4]
        >>> cfg = BackboneConfig(dim=8, heads=2, layers=1)
        >>> model = LumBackbone(cfg, Vocabs.build([seq], cfg))
        >>> model(collate_packed([model.tokenizer.encode(seq)])).shape
        torch.Size([1, 8, 8])
    """

    def __init__(self, cfg: BackboneConfig, vocabs: Vocabs) -> None:
        super().__init__()
        self.cfg, self.vocabs = cfg, vocabs
        self.tokenizer = Tokenizer(cfg, vocabs)
        self.tokens = TokenEncoder(cfg, vocabs)
        block = HstuBlock if cfg.attention == "hstu" else SoftmaxBlock
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def encode(self, batch: TokenBatch) -> Tensor:
        """One output per token: (B, T, D), not normalised."""
        x = self.tokens(batch)  # (B, T, D)
        for blk in self.blocks:
            x = blk(x, batch.mask)
        return self.norm(x)

    def item_embeddings(self, rows: Tensor) -> Tensor:
        """e_i for item ``rows`` (N,) -> (N, D), not normalised."""
        return self.tokens.items(rows)

    def forward(
        self, batch: TokenBatch, candidates: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Outputs (B, T, D) and, when ``candidates`` (C,) rows are given, their e_i (C, D).

        Training computes both in one call so that a DDP-wrapped model sees every
        parameter used inside ``forward``.
        """
        out = self.encode(batch)
        emb = None if candidates is None else self.item_embeddings(candidates)
        return out, emb

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def copy_rows_from(self, old: LumBackbone) -> None:
        """Warm start: copy ``old``'s parameters; id tables copy the rows both share (a vocab
        extended from ``old``'s keeps old rows first), new rows keep their initialisation.
        Buffers (item categories) come from this model's own, newer vocabs."""
        theirs = dict(old.named_parameters())
        for name, mine in self.named_parameters():
            src = theirs.get(name)
            if src is None:
                continue
            if src.shape == mine.shape:
                mine.copy_(src)
            elif src.dim() >= 1 and src.shape[1:] == mine.shape[1:] and len(src) <= len(mine):
                mine[: len(src)].copy_(src)
            else:
                raise ValueError(
                    f"warm start: {name} has shape {tuple(src.shape)} in the old "
                    f"version, {tuple(mine.shape)} now; the architecture changed "
                    f"(retrain instead)"
                )
