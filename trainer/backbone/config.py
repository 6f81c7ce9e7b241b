"""Config of the LUM generative backbone (light: no heavy imports, read by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.settings import ConfigError, setting

CONDITION_FIELDS = ("cond", "cat")


@dataclass(frozen=True)
class BackboneConfig:
    """The Large User Model (LUM step 1 and 2): tokens, transformer, loss, training, versions.

    Args: every field is a setting (``LUMSTREAM_BACKBONE_<NAME>``); see each line's doc.

    Example:
        >>> BackboneConfig(objective="next_item").tokens_per_event
        1
    """

    section: ClassVar[str] = "backbone"
    # -- tokens ----------------------------------------------------------------------------
    objective: str = setting(
        "lum",
        "lum = {c1,i1,c2,i2,...} next-condition-item; next_item = items only (baseline)",
        choices=("lum", "next_item"),
    )
    condition_fields: tuple[str, ...] = setting(
        ("cond",),
        "sequence fields forming the condition token: cond (scenario/search term), "
        "cat (category), or several",
    )
    sequence_actions: tuple[str, ...] = setting(
        (), "actions that form the sequence (names from events.actions); empty = all"
    )
    max_len: int = setting(
        200, "most recent events per user fed to the model", minimum=2, maximum=100_000
    )
    min_item_count: int = setting(
        1, "occurrences before an item gets its own row (else OOV)", minimum=1
    )
    min_condition_count: int = setting(
        1, "occurrences before a condition gets its own row", minimum=1
    )
    gap_buckets: int = setting(
        16, "log2 time-gap buckets (bucket 0 = first event)", minimum=2, maximum=64
    )
    feature_dim: int = setting(
        16, "width of each side-feature embedding before projection", minimum=1
    )
    # -- user encoder ----------------------------------------------------------------------
    dim: int = setting(64, "model width (token embedding and transformer)", minimum=4)
    layers: int = setting(2, "transformer blocks", minimum=1, maximum=256)
    heads: int = setting(2, "attention heads (dim must divide by it)", minimum=1)
    attention: str = setting(
        "softmax",
        "softmax = causal softmax attention; hstu = pointwise SiLU attention (HSTU)",
        choices=("softmax", "hstu"),
    )
    ffn_mult: int = setting(4, "feed-forward width / dim (softmax blocks)", minimum=1)
    dropout: float = setting(
        0.2, "dropout on token embeddings and residual branches", minimum=0.0, maximum=0.9
    )
    side_features: bool = setting(
        True,
        "item tokens carry category, action and time gap (false = item id and position "
        "only, as SASRec; the item embedding is then the id embedding itself)",
    )
    # -- loss ------------------------------------------------------------------------------
    loss: str = setting(
        "full",
        "full = softmax over the whole item vocabulary; sampled = the targets against "
        "sampled_negatives shared negatives (log-Q corrected when logq_correction); "
        "in_batch = InfoNCE over the batch's distinct targets (+ sampled_negatives)",
        choices=("full", "sampled", "in_batch"),
    )
    similarity: str = setting(
        "cosine",
        "cosine = L2-normalised outputs and items divided by temperature; dot = raw dot "
        "product (SASRec)",
        choices=("cosine", "dot"),
    )
    temperature: float = setting(
        0.05, "softmax temperature on cosine similarities", minimum=1e-4, maximum=10.0
    )
    sampled_negatives: int = setting(
        0,
        "negatives per step shared by all positions: loss=sampled needs >= 1; "
        "loss=in_batch adds them to the in-batch negatives",
        minimum=0,
    )
    negative_alpha: float = setting(
        0.75, "sampling distribution of extra negatives: count^alpha", minimum=0.0, maximum=1.0
    )
    logq_correction: bool = setting(False, "subtract log(sampling probability) from the logits")
    any_condition_rate: float = setting(
        0.1,
        "lum: share of condition tokens replaced by the learned 'any' condition (the OOV "
        "row) in training, so that an unconditioned query works",
        minimum=0.0,
        maximum=1.0,
    )
    item_target_weight: float = setting(
        0.0,
        "lum: loss weight of item tokens predicting the next event's item (0 = only "
        "condition tokens carry targets, as in LUM)",
        minimum=0.0,
    )
    # -- training --------------------------------------------------------------------------
    all_positions: bool = setting(
        True,
        "train on every event of every sequence (sequences longer than max_len are cut "
        "into windows); false = only the most recent max_len events per user",
    )
    validation: bool = setting(
        True,
        "hold out every user's last event for validation (HR@10 after each epoch), stop "
        "early and keep the best epoch's weights",
    )
    patience: int = setting(
        3, "epochs without a better validation NDCG@10 before stopping", minimum=1
    )
    validation_users: int = setting(
        2_000, "most users whose held-out event is ranked after each epoch", minimum=1
    )
    packing: bool = setting(
        True, "pack many users per row (per-user causal masks); false = one padded row per user"
    )
    batch_users: int = setting(
        64, "sequences (users, or windows of long users) per global training step", minimum=1
    )
    epochs: int = setting(
        30, "most passes over the training data (validation may stop earlier)", minimum=1
    )
    max_steps: int = setting(0, "stop after this many steps; 0 = epochs decide", minimum=0)
    lr: float = setting(1e-3, "AdamW learning rate", minimum=0.0)
    weight_decay: float = setting(0.0, "AdamW weight decay", minimum=0.0)
    seed: int = setting(17, "seed of initialisation, shuffling and sampling")
    # -- query and versions ----------------------------------------------------------------
    query_conditions: tuple[str, ...] = setting(
        (),
        "raw condition values queried in step 2 (one field: 'Comedy'; several fields: "
        "'Comedy|search'); empty = the most frequent ones",
    )
    query_top: int = setting(
        16, "how many most frequent conditions to query when query_conditions is empty", minimum=1
    )
    keep_versions: int = setting(3, "published versions kept; older ones are removed", minimum=1)

    def __post_init__(self) -> None:
        bad = [f for f in self.condition_fields if f not in CONDITION_FIELDS]
        if (
            not self.condition_fields
            or bad
            or len(set(self.condition_fields)) != len(self.condition_fields)
        ):
            raise ConfigError(
                f"backbone.condition_fields: {self.condition_fields!r}; expected "
                f"distinct names from {', '.join(CONDITION_FIELDS)}"
            )
        if self.loss == "sampled" and self.sampled_negatives < 1:
            raise ConfigError(
                "backbone.sampled_negatives: loss=sampled needs at least 1 negative per step"
            )
        if self.dim % self.heads:
            raise ConfigError(
                f"backbone.heads: dim {self.dim} is not divisible by {self.heads} heads"
            )

    @property
    def tokens_per_event(self) -> int:
        """2 for lum (condition + item token), 1 for next_item."""
        return 2 if self.objective == "lum" else 1

    @property
    def max_tokens(self) -> int:
        """Longest token sequence of one user: all events plus one query position."""
        return self.tokens_per_event * self.max_len + 1


@dataclass(frozen=True)
class RefreshConfig:
    """The refresh job (``lumstream backbone refresh``): cadence, data, outputs."""

    section: ClassVar[str] = "refresh"
    cadence_s: float = setting(600.0, "seconds between refreshes", minimum=1.0)
    old_share: float = setting(
        0.2,
        "share of unchanged users kept in a warm-start refresh (against forgetting)",
        minimum=0.0,
        maximum=1.0,
    )
    eval_users: int = setting(2_000, "held-out users evaluated per version", minimum=1)
    vector_batch_users: int = setting(256, "users per group-query pass", minimum=1)
    versions_dir: str = setting("", "backbone versions vN; empty = <paths.data_dir>/backbone")
    vector_store_dir: str = setting(
        "", "per-user condition-query vector store (RocksDB); empty = <paths.data_dir>/vectors"
    )
    condition_capacity: int = setting(
        32,
        "most query conditions the vector layout holds (fixed when the store is created; "
        "the ranker is built for it)",
        minimum=1,
        maximum=4096,
    )
    incremental_every_s: float = setting(
        5.0,
        "seconds between incremental passes (users whose sequences grew get fresh vectors "
        "from the newest version); 0 = full refreshes only",
        minimum=0.0,
    )
    incremental_max_users: int = setting(
        50_000, "most users recomputed in one incremental pass (the most behind first)", minimum=1
    )
    vector_records_kept: int = setting(
        16, "vector records kept per user, spread over vector_history_s", minimum=2
    )
    vector_history_s: float = setting(
        900.0,
        "time span the kept records of a user cover: 'user u as of t' answers for t up to "
        "this far behind the newest record (keep it above worker.label_window_s plus the "
        "trainer's lag)",
        minimum=0.0,
    )
    vector_versions_kept: int = setting(
        8, "versions whose item vectors the vector store keeps", minimum=1
    )
