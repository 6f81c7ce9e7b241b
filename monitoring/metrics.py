"""Every Prometheus metric of lumstream, defined in one place.

Components receive a :class:`Metrics` (default: the process-wide one on the global
registry); tests build their own on a fresh ``CollectorRegistry``.

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> m = Metrics(CollectorRegistry())
    >>> m.events_produced.labels(topic="lum.events", source="generator").inc()
"""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)


class Metrics:
    """The metric objects, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        # -- events in (generator, importers, replay producers) ---------------------------
        self.events_produced = Counter(
            "lumstream_events_produced", "Events produced to Kafka or written to a log",
            ["topic", "source"], registry=registry)
        self.events_rejected = Counter(
            "lumstream_events_rejected", "Events rejected by validation, by stage and reason",
            ["stage", "reason"], registry=registry)
        self.produce_errors = Counter(
            "lumstream_produce_errors", "Kafka produce failures", ["topic"], registry=registry)
        self.import_rows = Counter(
            "lumstream_import_rows", "Rows read by importers, by outcome (ok, bad)",
            ["importer", "outcome"], registry=registry)
        self.produce_latency = Histogram(
            "lumstream_produce_flush_seconds", "Time to flush a produced batch",
            buckets=LATENCY_BUCKETS, registry=registry)
        # -- embedded broker -------------------------------------------------------------
        self.broker_up = Gauge(
            "lumstream_embedded_broker_up", "1 while the embedded broker runs",
            registry=registry)


@functools.cache
def default_metrics() -> Metrics:
    """The process-wide metrics on the global registry (created once)."""
    return Metrics(REGISTRY)
