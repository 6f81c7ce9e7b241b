"""The worker's consumer-lag series exists as soon as it owns partitions, before any record
arrives (an alert must see a worker that owns partitions but never consumes; issue 17,
item 8)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.worker.confluent_engine import StreamWorker


@pytest.mark.integration
def test_lag_is_exported_on_assignment_of_an_empty_topic(
    kafka_cfg: KafkaConfig, metrics: Metrics, tmp_path: Path
) -> None:
    worker = StreamWorker(
        kafka_cfg,
        StoreConfig(),
        WorkerConfig(group_id="lag-" + uuid.uuid4().hex[:6]),
        EventConfig(),
        kafka_cfg.bootstrap_servers,
        tmp_path / "store",
        metrics,
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()

    def lag(p: int, unit: str = "") -> float | None:
        labels = {"topic": kafka_cfg.topic_events, "partition": str(p)}
        return metrics.registry.get_sample_value(f"lumstream_worker_consumer_lag{unit}", labels)

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(lag(p) is None for p in range(4)):
            time.sleep(0.05)
        assert [lag(p) for p in range(4)] == [0.0] * 4
        assert [lag(p, "_seconds") for p in range(4)] == [0.0] * 4  # nothing to be behind on
        assert metrics.registry.get_sample_value("lumstream_worker_partitions_owned") == 4
        assert worker.stats.batches == 0  # no record ever arrived
    finally:
        stop.set()
        thread.join(timeout=60)
