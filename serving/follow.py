"""Following lum.model-updates: an announced ranker version wakes the version watcher at
once instead of at its next poll of the versions directory (which stays the source of
truth: an announcement only says "look now")."""

from __future__ import annotations

import logging
import threading

from serving.models import VersionWatcher
from streams.config import KafkaConfig
from streams.kafka.consumer import ConsumerError, PositionedConsumer

log = logging.getLogger(__name__)


def follow_updates(
    kafka: KafkaConfig, bootstrap: str, watcher: VersionWatcher, stop: threading.Event
) -> None:
    """Wake ``watcher`` for each ranker announcement until ``stop`` is set (starts at the
    topic's end: versions published before are found in the directory)."""
    try:
        consumer = PositionedConsumer(
            kafka, bootstrap, kafka.topic_model_updates, start="latest", role="serving"
        )
    except ConsumerError as exc:
        log.warning("serving: not following %s: %s", kafka.topic_model_updates, exc)
        return
    try:
        while not stop.is_set():
            msgs = consumer.poll(100, 0.5)
            if msgs:  # any announcement (only ranker versions are announced there today)
                watcher.wake()
    finally:
        consumer.close()
