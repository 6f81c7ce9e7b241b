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


class RetiredTaskNoise(logging.Filter):
    """kafka-python 3.0.12's selector can call a timer task another ready task has just
    retired and logs ``RuntimeError: Task is already done!`` with a traceback (harmless:
    the task was finished; dpkp/kafka-python#3093). Only that record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, RuntimeError) and str(exc) == "Task is already done!")


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
    logging.getLogger("kafka.net.selector").addFilter(RetiredTaskNoise())
    root._lumstream_configured = True  # type: ignore[attr-defined]
