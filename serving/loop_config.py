"""Configs of the loop's serving-side pieces (light: no heavy imports, read by the CLI).

- :class:`ServedLogConfig`: the served-impressions log (serving/served_log.py);
- :class:`EventsApiConfig`: ``POST /v1/events`` (serving/events_http.py);
- :class:`ExploreConfig`: randomised orders for a share of requests (serving/explore.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.settings import setting


@dataclass(frozen=True)
class ServedLogConfig:
    """The served-impressions log: a local spool shipped to lum.events in the background."""

    section: ClassVar[str] = "served_log"
    enabled: bool = setting(True, "log every served list as impression events on lum.events")
    spool_dir: str = setting(
        "", "spool directory, one per serving process; empty = <paths.data_dir>/served-spool"
    )
    spool_max_bytes: int = setting(
        256 * 1024 * 1024,
        "most spooled bytes not yet acknowledged by Kafka; lists beyond it are dropped and counted",
        minimum=1024,
    )
    segment_bytes: int = setting(
        8 * 1024 * 1024, "spool segment size; a fully shipped segment is deleted", minimum=1024
    )
    ship_batch_bytes: int = setting(
        1024 * 1024,
        "spooled bytes read, produced and acknowledged per shipping round",
        minimum=1024,
    )
    ship_interval_s: float = setting(
        0.05, "longest wait of an idle shipper before it looks at the spool again", minimum=0.001
    )
    ack_timeout_s: float = setting(
        10.0, "how long a shipping round waits for Kafka's acknowledgement", minimum=0.1
    )
    retry_s: float = setting(
        1.0, "pause after a failed shipping round (Kafka unreachable)", minimum=0.01
    )
    drain_s: float = setting(
        5.0,
        "on close, how long to keep shipping what is spooled (the rest ships on restart)",
        minimum=0.0,
    )


@dataclass(frozen=True)
class EventsApiConfig:
    """``POST /v1/events``: live events over HTTP, acknowledged once Kafka has them."""

    section: ClassVar[str] = "events_api"
    max_body_bytes: int = setting(
        1024 * 1024, "largest request body; larger ones get 413", minimum=256
    )
    max_batch: int = setting(1000, "most events in one JSON array", minimum=1)
    ack_timeout_s: float = setting(
        10.0, "how long a request waits for Kafka's acknowledgement before a 503", minimum=0.1
    )
    retry_after_s: int = setting(1, "Retry-After of a 503 (Kafka unavailable)", minimum=0)


@dataclass(frozen=True)
class ExploreConfig:
    """Exploration: a share of requests gets a randomised order, logged as such."""

    section: ClassVar[str] = "explore"
    share: float = setting(
        0.05, "share of requests served in a random order (0 = never)", minimum=0.0, maximum=1.0
    )
    seed: int = setting(0, "seed of the request -> explore decision and order", minimum=0)
    top_k: int = setting(
        0, "shuffle only the first k of the ranked list (0 = the whole list)", minimum=0
    )
