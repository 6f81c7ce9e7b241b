"""Config of the ranking service (light: no heavy imports, read by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.settings import setting


@dataclass(frozen=True)
class ServingConfig:
    """The ranking service: where it listens, how many processes, limits, hot swap.

    Args: every field is a setting (``LUMSTREAM_SERVING_<NAME>``); see each line's doc.

    Example:
        >>> ServingConfig().host
        '127.0.0.1'
    """

    section: ClassVar[str] = "serving"
    # -- listening and processes -------------------------------------------------------------
    host: str = setting("127.0.0.1", "address the service binds (loopback by default)")
    port: int = setting(8470, "port of the ranking API (0 picks a free one)", minimum=0)
    workers: int = setting(
        0, "worker processes sharing the port (SO_REUSEPORT); 0 = one per core", minimum=0
    )
    torch_threads: int = setting(1, "torch intra-op threads in each worker process", minimum=1)
    shutdown_grace_s: float = setting(
        10.0, "on SIGTERM: how long in-flight requests get to finish", minimum=0.0
    )
    # -- limits ----------------------------------------------------------------------------
    max_body_bytes: int = setting(
        256 * 1024, "largest accepted request body (bytes); larger gets 413", minimum=64
    )
    max_candidates: int = setting(500, "most candidates in one request", minimum=1)
    max_id_chars: int = setting(128, "longest user, item, category or condition id", minimum=1)
    max_inflight: int = setting(
        16,
        "requests admitted at once per worker process; beyond it an immediate 503",
        minimum=1,
    )
    deadline_ms: float = setting(
        100.0, "per-request deadline: a request not answered by then gets 504", minimum=1.0
    )
    retry_after_s: int = setting(1, "Retry-After of a 503 (seconds)", minimum=0)
    reject_unknown_conditions: bool = setting(
        True,
        "a condition the served version has never seen gets 422 (false: scored with the "
        "learned default row and flagged)",
    )
    # -- versions and stores ---------------------------------------------------------------
    pin_version: str = setting(
        "", "serve only this ranker version (e.g. r12); empty = follow the newest"
    )
    watch_s: float = setting(
        1.0, "how often the versions directory is checked for a new version", minimum=0.05
    )
    follow_updates: bool = setting(
        True, "also follow kafka.topic_model_updates: check at once when a version is announced"
    )
    store_refresh_s: float = setting(
        0.0,
        "least seconds between catch-ups of the sequence store (0: before every request, so "
        "an applied click is visible to the next request)",
        minimum=0.0,
    )
    vectors_refresh_s: float = setting(
        5.0, "how often the vector store is caught up with its writer", minimum=0.0
    )
    psi_every: int = setting(
        500, "served scores between updates of the score PSI gauge", minimum=10
    )
