"""Config of the streaming ranker (LUM step 3) (light: no heavy imports, read by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.settings import setting


@dataclass(frozen=True)
class RankerConfig:
    """The discriminative ranker: features, model, streaming loop, checkpoints, epochs.

    Args: every field is a setting (``LUMSTREAM_RANKER_<NAME>``); see each line's doc.

    Example:
        >>> RankerConfig(lum_features="off").lum_direct
        False
    """

    section: ClassVar[str] = "ranker"
    # -- features --------------------------------------------------------------------------
    lum_features: str = setting(
        "full",
        "LUM features: off, direct (o_q of the sample's condition and e_i), "
        "full (direct + interest matching sim(o_q, e_i) for all N query conditions)",
        choices=("off", "direct", "full"),
    )
    history_len: int = setting(
        50, "most recent history events fed to target attention", minimum=0, maximum=4096
    )
    position_bias: bool = setting(
        True,
        "learn a per-position click bias (training only; a fixed position at serving) so the "
        "rank an item was shown at is not learned as its relevance",
    )
    position_buckets: int = setting(
        16, "positions with a bias of their own (later ones share the last)", minimum=1
    )
    serving_position: int = setting(
        0, "the position every candidate is scored at outside training (0 = top)", minimum=0
    )
    # -- model -----------------------------------------------------------------------------
    attention_hidden: int = setting(32, "hidden width of DIN's attention MLP", minimum=1)
    cross_layers: int = setting(2, "DCN-v2 cross layers over the feature fields", minimum=0)
    mlp: tuple[int, ...] = setting((64, 32), "hidden widths of the top MLP")
    # -- training --------------------------------------------------------------------------
    batch_size: int = setting(512, "samples per global training step", minimum=1)
    dense_lr: float = setting(1e-3, "Adam learning rate of the dense parameters", minimum=0.0)
    seed: int = setting(5, "seed of the dense initialisation")
    # -- streaming loop --------------------------------------------------------------------
    window: int = setting(
        20_000, "samples in the progressive-validation window (AUC, GAUC, ...)", minimum=10
    )
    log_every: int = setting(20, "batches between metric exports and log lines", minimum=1)
    idle_flush_s: float = setting(
        1.0, "train a partial batch after this long without new samples", minimum=0.0
    )
    max_batch_wait_s: float = setting(
        2.0,
        "train a partial batch once its oldest sample has waited this long (a trickle of "
        "samples never idles: this bounds their delay to a published version)",
        minimum=0.0,
    )
    start: str = setting(
        "earliest",
        "where a trainer without a checkpoint starts on lum.samples",
        choices=("earliest", "latest"),
    )
    # -- checkpoints and versions ----------------------------------------------------------
    checkpoint_dir: str = setting("", "checkpoint directory; empty = <paths.data_dir>/ranker/ckpt")
    versions_dir: str = setting(
        "", "published ranker versions; empty = <paths.data_dir>/ranker/versions"
    )
    checkpoint_every_s: float = setting(
        60.0, "seconds between checkpoints (0 = only by batches)", minimum=0.0
    )
    checkpoint_every_batches: int = setting(
        0, "batches between checkpoints (0 = only by time)", minimum=0
    )
    keep_checkpoints: int = setting(3, "checkpoints kept (older ones removed)", minimum=1)
    keep_versions: int = setting(3, "published ranker versions kept", minimum=1)
    publish: bool = setting(True, "export each checkpoint as a ranker version and announce it")
    # -- LUM vectors -----------------------------------------------------------------------
    vectors_poll_s: float = setting(
        5.0,
        "how often the trainer catches up with the vector store (new versions and the "
        "incremental refresher's records)",
        minimum=0.0,
    )

    def position_bucket(self, slot: int) -> int:
        """Bucket of a shown position (0-based); 0 is "unknown" (no position logged)."""
        return 0 if slot < 0 else min(slot, self.position_buckets - 1) + 1

    @property
    def lum_direct(self) -> bool:
        return self.lum_features in ("direct", "full")

    @property
    def lum_matching(self) -> bool:
        return self.lum_features == "full"
