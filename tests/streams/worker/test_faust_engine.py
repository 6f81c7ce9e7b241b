"""The faust engine has the same effect as the confluent-kafka engine (one processing
path), also when a batch's samples could not be delivered, and reports the consumer lag."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import orjson
import pytest
from support.paths import REPO

from monitoring.metrics import Metrics
from streams.config import EventConfig, GeneratorConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.generator import ClickStream
from streams.kafka.producer import Producer
from streams.worker.confluent_engine import StreamWorker
from streams.worker.store import StoreReader

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _snapshot(root: Path) -> tuple[dict[int, bytes], dict[int, dict[str, int]]]:
    with tempfile.TemporaryDirectory() as scratch:
        reader = StoreReader(root, StoreConfig(), Path(scratch))
        try:
            seqs = {u: reader.sequence(u).tobytes() for _, u, _ in reader.users()}
            counters = {p: s.counters for p, s in reader.states().items()}
        finally:
            reader.close()
    return seqs, counters


def test_faust_engine_matches_the_confluent_engine_through_a_produce_failure(
    kafka_cfg: KafkaConfig, metrics: Metrics, tmp_path: Path
) -> None:
    """One uninterrupted confluent-engine run; one faust run whose 5th producer flush is
    reported failed (after the records went out): the faust worker re-applies that batch
    from its stores' offsets and ends with the same stores, byte for byte."""
    gen = GeneratorConfig(events=6_000, users=300, malformed_fraction=0.01, seed=3)
    with Producer(kafka_cfg, kafka_cfg.bootstrap_servers, metrics=metrics) as producer:
        for pairs in ClickStream(gen).pair_batches():
            producer.send_many(kafka_cfg.topic_events, pairs)
        producer.flush()

    fast_root = tmp_path / "confluent"
    worker = StreamWorker(
        kafka_cfg,
        StoreConfig(),
        WorkerConfig(group_id=f"{tmp_path.name}-a"),
        EventConfig(),
        kafka_cfg.bootstrap_servers,
        fast_root,
        metrics,
    )
    stats = worker.run(threading.Event(), idle_exit_s=2.0)
    assert stats.applied + stats.dead_letters == 6_000

    faust_root = tmp_path / "faust"
    sets = [
        f"kafka.{k}={getattr(kafka_cfg, k)}"
        for k in (
            "topic_events",
            "topic_samples",
            "topic_deadletter",
            "topic_model_updates",
        )
    ]
    report = tmp_path / "faust-metrics.json"
    cmd = [
        sys.executable,
        str(REPO / "tests" / "support" / "flaky_worker.py"),
        "5",
        str(report),
        "--",
        "--set",
        "worker.engine=faust",
        "--set",
        "worker.batch_max=500",  # many batches: the 5th flush is the 3rd batch's samples
        "--set",
        f"worker.group_id={tmp_path.name}-f",
        "--set",
        "metrics.enabled=false",
        "--set",
        f"paths.data_dir={tmp_path}",
    ]
    for s in sets:
        cmd += ["--set", s]
    cmd += ["worker", "--store", str(faust_root), "--idle-exit", "2", "--quiet"]
    env = os.environ | {"LUMSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka_cfg.bootstrap_servers}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    seen = orjson.loads(report.read_bytes())
    assert seen["flushes"] > 5  # the failure was injected, and work went on after it
    assert seen["failures"] >= 1  # worker_batch_failures: one per partition of the batch
    assert set(seen["lag"]) == {"0", "1", "2", "3"}  # consumer_lag{partition} is set
    assert all(v >= 0 for v in seen["lag"].values())

    fast, faust = _snapshot(fast_root), _snapshot(faust_root)
    assert fast[0] == faust[0]  # every user's sequence, byte for byte
    assert fast[1] == faust[1]  # per-partition counters: applied, samples, rejected, ...
    assert sum(c.get("applied", 0) for c in fast[1].values()) == stats.applied
