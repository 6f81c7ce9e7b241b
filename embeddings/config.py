"""Config of the ranker's embedding tables and id mapping (light: no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.settings import ConfigError, setting


@dataclass(frozen=True)
class EmbeddingsConfig:
    """Sparse tables of the ranker: sizes, id mapping, sharding and the fused optimizer.

    Row 0 of every table is the shared "new id" row: ids not admitted yet, ids that found
    no free row (collisions) and invalid ids use it.

    Example:
        >>> EmbeddingsConfig(item_rows=1000).item_rows
        1000
    """

    section: ClassVar[str] = "embeddings"
    dim: int = setting(16, "embedding width of every sparse table", minimum=2, maximum=1024)
    user_rows: int = setting(
        65_536, "rows of the user table (row 0 = shared new-id row)", minimum=2
    )
    item_rows: int = setting(
        65_536, "rows of the item table, shared by target and history items", minimum=2
    )
    cond_rows: int = setting(1_024, "rows of the condition table", minimum=2)
    cat_rows: int = setting(4_096, "rows of the category table (target and history)", minimum=2)
    admit_count: int = setting(
        2, "occurrences before an id gets its own row (else the shared new-id row)", minimum=1
    )
    expire_after_s: float = setting(
        0.0,
        "event-time seconds an id may go unseen before its row is freed; 0 = never",
        minimum=0.0,
    )
    probes: int = setting(
        4, "candidate rows tried per id (multi-probe hashing)", minimum=1, maximum=16
    )
    sketch_width: int = setting(
        1 << 18, "counters per row of the count-min sketch counting unadmitted ids", minimum=64
    )
    init_std: float = setting(
        0.05, "standard deviation of the initial (and re-admitted) rows", minimum=0.0
    )
    sparse_lr: float = setting(
        0.05, "learning rate of the fused row-wise Adagrad on the tables", minimum=0.0
    )
    sparse_eps: float = setting(1e-8, "epsilon of the row-wise Adagrad", minimum=0.0)
    sharding_types: tuple[str, ...] = setting(
        ("table_wise", "column_wise"),
        "sharding types the TorchRec planner may choose (row-wise fails on CPU)",
    )
    seed: int = setting(11, "seed of the hash functions and of the row initialisation")

    def __post_init__(self) -> None:
        allowed = ("table_wise", "column_wise", "row_wise", "data_parallel")
        bad = [s for s in self.sharding_types if s not in allowed]
        if bad or not self.sharding_types:
            raise ConfigError(
                f"embeddings.sharding_types: {self.sharding_types!r}; expected names from "
                f"{', '.join(allowed)}"
            )
