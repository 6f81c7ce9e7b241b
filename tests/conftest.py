"""Shared fixtures: a real embedded broker per test session, per-test topics, fresh metrics.

``broker`` starts tansu once per session, only when a test asks for it; when tansu cannot
be found the test errors with the BrokerError message saying how to install it (nothing is
skipped). ``kafka_cfg`` gives each test its own topic names, already created, so tests
never see each other's records.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics
from streams.config import BrokerConfig, KafkaConfig
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import ensure_topics, with_topics


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A real tansu broker (in memory) on a free 127.0.0.1 port, for the whole session."""
    with EmbeddedBroker(BrokerConfig(), metrics=Metrics(CollectorRegistry())) as running:
        yield running


@pytest.fixture
def metrics() -> Metrics:
    """Metrics on a fresh registry: counts start at zero in every test."""
    return Metrics(CollectorRegistry())


@pytest.fixture
def kafka_cfg(broker: EmbeddedBroker, request: pytest.FixtureRequest) -> KafkaConfig:
    """A KafkaConfig pointing at ``broker`` with unique, already created topic names.

    Names are ``lum.events.<test name>.<random>`` and so on, 4 partitions each.
    """
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:80]
    cfg = with_topics(
        KafkaConfig(bootstrap_servers=broker.bootstrap, partitions=4),
        f".{name}.{uuid.uuid4().hex[:8]}",
    )
    ensure_topics(cfg, broker.bootstrap)
    return cfg
