"""The cluster a process talks to: an external one, a running ``lumstream broker``, or an
embedded broker started for the process.

Example:
    >>> with bootstrap_servers(cfg.kafka, cfg.broker) as bootstrap:  # doctest: +SKIP
    ...     ensure_topics(cfg.kafka, bootstrap)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from monitoring.metrics import Metrics
from streams.config import BrokerConfig, KafkaConfig


@contextlib.contextmanager
def bootstrap_servers(
    kafka: KafkaConfig,
    broker: BrokerConfig,
    *,
    metrics: Metrics | None = None,
    log_dir: Path | None = None,
    run_file: Path | None = None,
) -> Iterator[str]:
    """The cluster to talk to, for the duration of the ``with`` block.

    ``kafka.bootstrap_servers`` when set (an external cluster); else the broker recorded in
    ``run_file`` by a running ``lumstream broker`` when it answers; else an
    :class:`~streams.kafka.broker.EmbeddedBroker` started here and stopped on exit.
    """
    if kafka.bootstrap_servers:
        yield kafka.bootstrap_servers
        return
    from streams.kafka.broker import EmbeddedBroker, running_broker

    found = running_broker(run_file) if run_file is not None else None
    if found is not None:
        yield found
        return
    with EmbeddedBroker(broker, metrics=metrics, log_dir=log_dir) as embedded:
        yield embedded.bootstrap
