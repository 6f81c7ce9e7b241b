"""Tokenisation {c1, i1, c2, i2, ...} and the token encoder (LUM §4.1.1-4.1.2).

Every event of a user's sequence (``streams.contracts.records.SEQ_DTYPE``) becomes a condition token
and an item token (``objective = "lum"``) or an item token only (``"next_item"``). Each token
carries side features:

- condition token: one id per configured condition field (``cond``, ``cat``), time-gap bucket;
- item token: item id, category, action, time-gap bucket.

The :class:`TokenEncoder` embeds each feature, concatenates them and projects per token type
(``e^t = proj^t(concat(f1; f2; ...))``). The item embedding ``e_i`` (InfoNCE target, exported
with a version) is the item projection of the item's content (id, category) with the
context features (action, gap) absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from embeddings.vocab import OOV, Vocab
from streams.contracts.records import SEQ_DTYPE
from trainer.backbone.config import BackboneConfig

PAD, COND, ITEM = 0, 1, 2
N_ACTIONS = 256  # SEQ_DTYPE.action is uint8


def gap_bucket(ts_ms: np.ndarray, buckets: int, first_gap_ms: int | None = None) -> np.ndarray:
    """Log2 buckets of the time since the previous event: 0 = no previous event,
    ``1 + floor(log2(1 + gap_s))`` capped at ``buckets - 1`` otherwise.

    Args:
        ts_ms: event times, oldest first.
        buckets: number of buckets (``BackboneConfig.gap_buckets``).
        first_gap_ms: gap of the first event, when known (a query after a prefix).
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    gaps = np.empty(len(ts), np.float64)
    gaps[1:] = np.diff(ts)
    gaps[:1] = -1.0 if first_gap_ms is None else first_gap_ms
    out = np.zeros(len(ts), np.int64)
    known = gaps >= 0
    out[known] = 1 + np.floor(np.log2(1.0 + gaps[known] / 1000.0)).astype(np.int64)
    return out.clip(max=buckets - 1)


@dataclass(frozen=True, eq=False)
class Vocabs:
    """The id -> row mappings a backbone version carries.

    Args:
        items / cats: item and category vocabs.
        conds: one vocab per condition field (``cfg.condition_fields`` order).
        item_cat: (len(items),) category row of each item row (latest seen; OOV row: 0).
        combos: (K, F) most frequent condition id tuples, most frequent first.
    """

    items: Vocab
    cats: Vocab
    conds: tuple[Vocab, ...]
    item_cat: np.ndarray
    combos: np.ndarray

    @classmethod
    def build(
        cls, seqs: list[np.ndarray], cfg: BackboneConfig, base: Vocabs | None = None
    ) -> Vocabs:
        """Vocabs of ``seqs``; with ``base``, known ids keep their rows (warm start)."""
        allev = np.concatenate(seqs) if seqs else np.zeros(0, SEQ_DTYPE)
        if base is None:
            items = Vocab.build(allev["item"], cfg.min_item_count)
            cats = Vocab.build(allev["cat"])
            conds = tuple(
                Vocab.build(allev[f], cfg.min_condition_count) for f in cfg.condition_fields
            )
            item_cat = np.zeros(len(items), np.int64)
        else:
            items = base.items.extend(allev["item"], cfg.min_item_count)
            cats = base.cats.extend(allev["cat"])
            conds = tuple(
                v.extend(allev[f], cfg.min_condition_count)
                for v, f in zip(base.conds, cfg.condition_fields, strict=True)
            )
            item_cat = np.zeros(len(items), np.int64)
            item_cat[: len(base.item_cat)] = base.item_cat
        order = np.argsort(allev["ts"], kind="stable")  # later events overwrite earlier ones
        rows = items.lookup(allev["item"][order])
        item_cat[rows] = cats.lookup(allev["cat"][order])
        item_cat[OOV] = OOV
        combo = np.stack([allev[f] for f in cfg.condition_fields], axis=-1)
        uniq, counts = np.unique(combo, axis=0, return_counts=True)
        top = np.lexsort((*uniq.T[::-1], -counts))[: cfg.query_top]
        return cls(items, cats, conds, item_cat, uniq[top].reshape(-1, combo.shape[1]))

    def state(self) -> dict[str, np.ndarray]:
        out = {
            **self.items.state("vocab.items"),
            **self.cats.state("vocab.cats"),
            "vocab.item_cat": self.item_cat,
            "vocab.combos": self.combos,
        }
        for k, v in enumerate(self.conds):
            out.update(v.state(f"vocab.cond{k}"))
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], n_fields: int) -> Vocabs:
        for key in ("vocab.item_cat", "vocab.combos"):
            if key not in state:
                raise KeyError(f"vocab array {key!r} missing")
        return cls(
            Vocab.from_state(state, "vocab.items"),
            Vocab.from_state(state, "vocab.cats"),
            tuple(Vocab.from_state(state, f"vocab.cond{k}") for k in range(n_fields)),
            np.asarray(state["vocab.item_cat"]),
            np.asarray(state["vocab.combos"]),
        )


@dataclass
class UserTokens:
    """One user's tokens (numpy, length T): the unit that packing and padding arrange.

    Args:
        kind: PAD / COND / ITEM per token.
        item, cat, action, gap: item-token features (0 on condition tokens but ``gap``).
        cond: (T, F) condition rows (0 on item tokens).
        pos: position within the user (queries share the position after the prefix).
        target: item row the token's output predicts; 0 = no loss at this token.
        query: True on appended query tokens (they see the prefix and themselves only).
    """

    kind: np.ndarray
    item: np.ndarray
    cat: np.ndarray
    action: np.ndarray
    gap: np.ndarray
    cond: np.ndarray
    pos: np.ndarray
    target: np.ndarray
    query: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)


class Tokenizer:
    """SEQ_DTYPE arrays -> :class:`UserTokens`.

    Args:
        cfg: the backbone config (objective, condition fields, max_len, gap buckets).
        vocabs: the id -> row mappings.

    Example:
        >>> from streams.contracts.records import SEQ_DTYPE
        >>> seq = np.zeros(3, SEQ_DTYPE); seq["item"] = [4, 5, 6]; seq["ts"] = [0, 1000, 9000]
        >>> cfg = BackboneConfig()
        >>> tok = Tokenizer(cfg, Vocabs.build([seq], cfg)).encode(seq)
        >>> tok.kind.tolist(), tok.target.tolist()
        ([1, 2, 1, 2, 1, 2], [1, 0, 2, 0, 3, 0])
    """

    def __init__(self, cfg: BackboneConfig, vocabs: Vocabs) -> None:
        self.cfg = cfg
        self.vocabs = vocabs

    def windows(self, seq: np.ndarray) -> list[UserTokens]:
        """Training tokens of every event: the most recent ``max_len`` events, then the
        ``max_len`` before them, and so on (``next_item`` windows overlap by one event so
        that every transition is a target; oldest window first)."""
        n, size = len(seq), self.cfg.max_len
        step = size - 1 if self.cfg.objective == "next_item" else size
        out, end = [], n
        while True:
            start = max(0, end - size)
            out.append(self.encode(seq[start:end]))
            if start == 0 or end - start < 2:
                break
            end = start + (size - step)
        return out[::-1]

    def encode(self, seq: np.ndarray) -> UserTokens:
        """Tokens of the most recent ``max_len`` events, with next-(condition-)item targets
        (lum with ``item_target_weight``: item tokens also target the next event's item)."""
        seq = seq[-self.cfg.max_len :]
        n = len(seq)
        v = self.vocabs
        item = v.items.lookup(seq["item"])
        cat = v.cats.lookup(seq["cat"])
        action = seq["action"].astype(np.int64)
        gap = gap_bucket(seq["ts"], self.cfg.gap_buckets)
        cond = np.stack(
            [vc.lookup(seq[f]) for vc, f in zip(v.conds, self.cfg.condition_fields, strict=True)],
            axis=-1,
        )
        if self.cfg.objective == "next_item":
            target = np.zeros(n, np.int64)
            target[:-1] = item[1:]
            return UserTokens(
                np.full(n, ITEM),
                item,
                cat,
                action,
                gap,
                np.zeros((n, cond.shape[1]), np.int64),
                np.arange(n),
                target,
                np.zeros(n, bool),
            )
        t = 2 * n
        out = UserTokens(
            np.empty(t, np.int64),
            np.zeros(t, np.int64),
            np.zeros(t, np.int64),
            np.zeros(t, np.int64),
            np.repeat(gap, 2),
            np.zeros((t, cond.shape[1]), np.int64),
            np.arange(t),
            np.zeros(t, np.int64),
            np.zeros(t, bool),
        )
        out.kind[0::2], out.kind[1::2] = COND, ITEM
        out.cond[0::2] = cond
        out.item[1::2], out.cat[1::2], out.action[1::2] = item, cat, action
        out.target[0::2] = item  # c_l predicts i_l
        if self.cfg.item_target_weight > 0:
            out.target[1:-1:2] = item[1:]  # i_l predicts i_{l+1}
        return out

    def encode_query(
        self, seq: np.ndarray, cond_rows: np.ndarray, now_ms: int | None = None
    ) -> UserTokens:
        """Prefix tokens (no targets) plus one query condition token per row of
        ``cond_rows`` (N, F), all at the position after the prefix (``lum`` only).

        Args:
            seq: the user's events (at least one for ``next_item``).
            cond_rows: (N, F) condition rows (already looked up).
            now_ms: the query time; its gap to the last event sets the query gap bucket.
        """
        prefix = self.encode(seq)
        prefix.target[:] = 0
        if self.cfg.objective == "next_item":
            return prefix
        nq, t = len(cond_rows), len(prefix)
        seq = seq[-self.cfg.max_len :]
        first_gap = None if now_ms is None or len(seq) == 0 else max(now_ms - seq["ts"][-1], 0)
        qgap = gap_bucket(np.zeros(1, np.int64), self.cfg.gap_buckets, first_gap)[0]
        return UserTokens(
            np.concatenate([prefix.kind, np.full(nq, COND)]),
            np.concatenate([prefix.item, np.zeros(nq, np.int64)]),
            np.concatenate([prefix.cat, np.zeros(nq, np.int64)]),
            np.concatenate([prefix.action, np.zeros(nq, np.int64)]),
            np.concatenate([prefix.gap, np.full(nq, qgap)]),
            np.concatenate([prefix.cond, np.asarray(cond_rows, np.int64)]),
            np.concatenate([prefix.pos, np.full(nq, t)]),
            np.zeros(t + nq, np.int64),
            np.concatenate([prefix.query, np.ones(nq, bool)]),
        )


@dataclass
class TokenBatch:
    """Rows of tokens (torch, (B, T) unless noted) and the attention mask between them.

    Args:
        kind, item, cat, action, gap, pos, target, query: as in :class:`UserTokens`.
        cond: (B, T, F) condition rows.
        mask: (B, T, T) bool, True where token i may attend to token j.
        owner: index of the user (in the collated list) each token belongs to; -1 = pad.
    """

    kind: Tensor
    item: Tensor
    cat: Tensor
    action: Tensor
    gap: Tensor
    cond: Tensor
    pos: Tensor
    target: Tensor
    query: Tensor
    mask: Tensor
    owner: Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(**{k: getattr(self, k).to(device) for k in self.__dataclass_fields__})

    @property
    def real_tokens(self) -> int:
        return int((self.kind != PAD).sum())


class TokenEncoder(nn.Module):
    """Embeds, concatenates and projects token features per token type, adds positions.

    Args:
        cfg: the backbone config.
        vocabs: sizes of the id tables and each item's category row.
    """

    def __init__(self, cfg: BackboneConfig, vocabs: Vocabs) -> None:
        super().__init__()
        d, f = cfg.dim, cfg.feature_dim
        self.side = cfg.side_features
        self.item = nn.Embedding(len(vocabs.items), d)
        self.cat = nn.Embedding(len(vocabs.cats), f)
        self.action = nn.Embedding(N_ACTIONS, f)
        self.gap = nn.Embedding(cfg.gap_buckets, f)
        if self.side:
            self.item_proj = nn.Linear(d + 3 * f, d)  # concat(item, cat, action, gap)
        else:  # ids and positions only: e_i is the id embedding itself (SASRec)
            del self.cat, self.action
            if cfg.objective != "lum":
                del self.gap
        self.conds = nn.ModuleList()
        if cfg.objective == "lum":
            self.conds.extend(nn.Embedding(len(v), f) for v in vocabs.conds)
            self.cond_proj = nn.Linear(f * (len(vocabs.conds) + 1), d)  # concat(conds, gap)
        self.pos = nn.Embedding(cfg.max_tokens, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("item_cat", torch.tensor(vocabs.item_cat, dtype=torch.long))
        for emb in self.modules():
            if isinstance(emb, nn.Embedding):
                nn.init.normal_(emb.weight, std=0.02)

    def items(self, rows: Tensor) -> Tensor:
        """Item embeddings e_i of item ``rows`` (N,) -> (N, D): content only, no context."""
        if not self.side:
            return self.item(rows)
        item_cat = self.get_buffer("item_cat")
        feats = torch.cat([self.item(rows), self.cat(item_cat[rows])], dim=-1)  # (N, D + f)
        ctx = 2 * self.cat.embedding_dim
        w = self.item_proj.weight[:, :-ctx]  # context part multiplies zeros
        return nn.functional.linear(feats, w, self.item_proj.bias)

    def forward(self, b: TokenBatch) -> Tensor:
        x = self.pos(b.pos)  # (B, T, D)
        is_item = b.kind == ITEM
        tok = torch.zeros_like(x)
        if not self.side:
            tok[is_item] = self.item(b.item[is_item])
        else:
            feats = torch.cat(
                [
                    self.item(b.item[is_item]),
                    self.cat(b.cat[is_item]),
                    self.action(b.action[is_item]),
                    self.gap(b.gap[is_item]),
                ],
                dim=-1,
            )
            tok[is_item] = self.item_proj(feats)  # (n_item, D)
        if len(self.conds):
            is_cond = b.kind == COND
            cond = b.cond[is_cond]  # (n_cond, F)
            parts = [emb(cond[:, k]) for k, emb in enumerate(self.conds)]
            tok[is_cond] = self.cond_proj(torch.cat([*parts, self.gap(b.gap[is_cond])], -1))
        x = (x + tok) * (b.kind != PAD).unsqueeze(-1)
        return self.drop(x)
