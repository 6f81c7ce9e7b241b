"""A backfill of an imported event log uses the label window its import recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from bench.shoplog import write_log
from monitoring.metrics import Metrics
from streams.config import EventConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.contracts.eventlog import recommended_window_s
from streams.contracts.samplefile import iter_sample_file
from streams.importers.generic import ColumnMap, GenericOptions, parse_action_map
from streams.importers.run import GenericInput, run_import
from streams.replay.run import run_backfill

OPTS = GenericOptions(
    columns=ColumnMap.parse("user_id=user,item_id=item,ts=ts,action=behavior"),
    action_map=parse_action_map("pv=impression,cart=click,buy=click"),
    ts_unit="s",
)


def positives(tmp: Path, log: Path, worker: WorkerConfig, name: str) -> tuple[int, int]:
    def connect() -> object:
        raise AssertionError("a backfill to files reaches no cluster")

    out = tmp / name
    stats = run_backfill(
        str(log),
        out / "store",
        2,
        store=StoreConfig(sync_writes=False),
        worker=worker,
        events=EventConfig(),
        kafka=KafkaConfig(),
        connect=connect,  # type: ignore[arg-type]
        samples_out=out / "samples.lsb",
        deadletters_out=out / "dead.jsonl",
        metrics=Metrics(CollectorRegistry()),
    )
    assert stats.complete
    labels = np.concatenate([b.rows["label"] for b in iter_sample_file(out / "samples.lsb")])
    return int(labels.sum()), len(labels)


def test_backfill_defaults_to_the_recorded_window(tmp_path: Path) -> None:
    write_log(tmp_path / "shop.csv", users=30)
    log = tmp_path / "shop.jsonl"
    run_import(GenericInput(tmp_path / "shop.csv", OPTS), EventConfig(), out=log)
    window = recommended_window_s(log)
    assert window is not None
    assert window > 3600
    recorded, n = positives(tmp_path, log, WorkerConfig(), "default")
    explicit, m = positives(tmp_path, log, WorkerConfig(label_window_s=window), "explicit")
    short, _ = positives(tmp_path, log, WorkerConfig(label_window_s=59.0), "short")
    assert (recorded, n) == (explicit, m)
    assert short < recorded / 2
