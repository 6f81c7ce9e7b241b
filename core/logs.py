"""Logging, configured once per process by the entry point (``lumstream.cli.main``).

This project's loggers speak at INFO, everyone else's at WARNING, on stderr; under
torchrun each line carries the rank. Importing fbgemm_gpu logs through the root logger,
which configures it (without a format) when nothing did before, so this runs first.
"""

from __future__ import annotations

import logging
import os

PROJECT_LOGGERS = (
    "core",
    "lumstream",
    "monitoring",
    "embeddings",
    "streams",
    "trainer",
    "serving",
)


def configure_logging(level: int = logging.INFO) -> None:
    """Set the format and levels once (a second call changes nothing)."""
    root = logging.getLogger()
    if getattr(root, "_lumstream_configured", False):
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tag = f"rank {os.environ.get('RANK', '?')} " if world > 1 else ""
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s {tag}%(levelname)s %(name)s %(message)s"
    )
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    root._lumstream_configured = True  # type: ignore[attr-defined]
