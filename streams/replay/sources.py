"""Event sources for replay and backfill, chosen by name: event-log files or a Kafka range.

    open_source("events.jsonl")               # one log (.jsonl/.ndjson[.gz], .parquet)
    open_source("logs/")                      # every event log in a directory, by name
    open_source("logs/2026-01-*.jsonl.gz")    # a glob, by name
    open_source("file:events.parquet")        # the same, scheme spelt out
    open_source("kafka:lum.events", kafka=cfg, bootstrap=b, from_ts=t0, to_ts=t1)

The protocols and what sources share are in :mod:`streams.replay.base`.

Example:
    >>> src = open_source("events.jsonl")  # doctest: +SKIP
    >>> with src.open(None) as reader:  # doctest: +SKIP
    ...     for key, value, origin in reader: ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.replay.base import EventSource, ReplayError
from streams.replay.files import EventLogSource, expand_paths

if TYPE_CHECKING:
    from streams.config import KafkaConfig


def is_kafka(spec: str) -> bool:
    """Whether ``spec`` names a Kafka source (``kafka:TOPIC``), which needs a cluster."""
    return spec.startswith("kafka:")


def open_source(
    spec: str,
    *,
    kafka: KafkaConfig | None = None,
    bootstrap: str | None = None,
    from_ts: int | None = None,
    to_ts: int | None = None,
) -> EventSource:
    """The source named by ``spec``: ``kafka:TOPIC``, ``file:PATH`` or a plain path/glob.

    Args:
        spec: see the module doc.
        kafka / bootstrap: the cluster, for ``kafka:`` sources.
        from_ts / to_ts: the time range (ms) of a ``kafka:`` source; files refuse them
            (filter a log by time with the importers instead).
    """
    scheme, sep, rest = spec.partition(":")
    if is_kafka(spec):
        if not rest:
            raise ReplayError("kafka: source needs a topic, e.g. kafka:lum.events")
        if kafka is None or bootstrap is None:
            raise ReplayError(f"{spec}: a Kafka source needs a cluster")
        from streams.replay.kafka_range import KafkaRangeSource

        return KafkaRangeSource(kafka, bootstrap, rest, from_ts, to_ts)
    if from_ts is not None or to_ts is not None:
        raise ReplayError("--from/--to select a time range of a kafka:TOPIC source only")
    path = rest if sep and scheme == "file" else spec
    return EventLogSource(expand_paths(path))
