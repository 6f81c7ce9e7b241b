"""Reading Prometheus metrics in tests through prometheus_client's public API."""

from __future__ import annotations

from monitoring.metrics import Metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` (a counter's ends in ``_total``) with ``labels``
    in ``metrics``' registry; None when it was never set.

    Example:
        >>> from prometheus_client import CollectorRegistry
        >>> m = Metrics(CollectorRegistry())
        >>> m.ranker_samples.labels(outcome="learned").inc(3)
        >>> sample(m, "lumstream_ranker_samples_total", outcome="learned")
        3.0
    """
    return metrics.registry.get_sample_value(name, labels)
