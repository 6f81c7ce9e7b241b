"""Nothing served is lost: a process logging served lists is SIGKILLed while it ships;
after a restart every list it reported served reaches lum.events, exactly once in effect
(each event id present; the worker's duplicate window drops any re-sent copy)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from support.paths import REPO

from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.kafka.consumer import read_topic
from streams.worker.processor import open_processor

pytestmark = pytest.mark.integration

DRIVER = REPO / "tests" / "support" / "served_driver.py"
ITEMS = 3  # impressions per list (served_driver.ITEMS)


def driver(spool: Path, kafka: KafkaConfig, start: int, count: int) -> subprocess.Popen[str]:
    args = [spool, kafka.bootstrap_servers, kafka.topic_events, start, count, 0.002]
    return subprocess.Popen(
        [sys.executable, str(DRIVER), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )


def reported(lines: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.startswith("served ")]


def test_sigkill_while_logging_loses_nothing_and_doubles_nothing(
    tmp_path: Path, kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    spool = tmp_path / "spool"
    first = driver(spool, kafka_cfg, 0, 100_000)
    assert first.stdout is not None
    lines = []
    while len(lines) < 400:  # a few hundred lists in, shipping all along
        line = first.stdout.readline()
        assert line, "the driver ended early"
        lines.append(line)
    first.send_signal(signal.SIGKILL)
    lines.extend(first.stdout.read().splitlines())
    first.wait(10)
    first.stdout.close()
    assert first.returncode == -signal.SIGKILL
    before = reported(lines)
    last = before[-1]
    assert before == list(range(last + 1))

    # restart on the same spool: it resends what was not acknowledged, and serves on
    second = driver(spool, kafka_cfg, last + 2, 50)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out
    assert out.splitlines()[-1] == "drained"
    after = reported(out.splitlines())
    assert after == list(range(last + 2, last + 52))

    records = read_topic(kafka_cfg, kafka_cfg.bootstrap_servers, kafka_cfg.topic_events)
    ids = [orjson.loads(r.value)["event_id"] for r in records]
    distinct = set(ids)
    want = {f"req-{i}:{p}" for i in before + after for p in range(ITEMS)}
    assert want <= distinct, f"lost: {sorted(want - distinct)[:10]}"
    # the one list that may have been spooled but not reported when the kill came
    extra = distinct - want
    assert extra <= {f"req-{last + 1}:{p}" for p in range(ITEMS)}, sorted(extra)[:10]

    # through the worker: every distinct impression applied once, re-sends dropped
    by_partition: dict[int, list[tuple[int, bytes, bytes]]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append((r.offset, r.key, r.value))
    applied = duplicates = 0
    for partition, recs in by_partition.items():
        proc = open_processor(
            tmp_path / "store",
            partition,
            StoreConfig(sync_writes=False),
            WorkerConfig(),
            EventConfig(),
            metrics,
        )
        try:
            offsets, keys, values = zip(*recs, strict=True)
            result = proc.process(list(offsets), list(keys), list(values))
            proc.commit()
            applied += result.applied
            duplicates += sum(d.reason == "duplicate" for d in result.dead_letters)
            assert all(d.reason == "duplicate" for d in result.dead_letters)
        finally:
            proc.close()
    assert applied == len(distinct)
    assert duplicates == len(ids) - len(distinct)
    print(f"kill test: {len(ids)} records, {len(distinct)} distinct, last reported {last}")
