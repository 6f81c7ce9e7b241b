"""Event-time order on import: external merge sort, disorder, the recorded label window."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics
from streams.config import EventConfig, StoreConfig, WorkerConfig
from streams.contracts.eventlog import (
    iter_event_log,
    meta_path,
    read_meta,
    recommended_window_s,
    window_for_log,
)
from streams.contracts.events import Event, decode
from streams.importers.generic import ColumnMap, GenericOptions
from streams.importers.order import Disorder, EventSorter
from streams.importers.rows import WriteOptions
from streams.importers.run import GenericInput, run_import
from streams.worker.processor import open_processor

CFG = EventConfig()
T0 = 1_700_000_000_000
OPTS = GenericOptions(
    columns=ColumnMap.parse("user_id=user,item_id=item,ts=time,action=kind"),
    action_map={"view": "impression", "buy": "click"},
)


def log_rows(seed: int = 0, users: int = 12) -> list[tuple[str, str, str, int]]:
    """(user, item, kind, ts ms): views, some bought 5-90 minutes later, ties in time."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        for _ in range(15):
            t = T0 + int(rng.integers(0, 48)) * 3_600_000  # many equal times across users
            item = f"i{rng.integers(0, 30)}"
            rows.append((f"u{u}", item, "view", t))
            if rng.random() < 0.4:
                rows.append((f"u{u}", item, "buy", t + int(rng.integers(5, 90)) * 60_000))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str, str, int]]) -> Path:
    path.write_text("user,item,kind,time\n" + "".join(f"{u},{i},{k},{t}\n" for u, i, k, t in rows))
    return path


def samples_of(log: Path, window_s: float) -> np.ndarray:
    """The worker's label join over an event log (one partition): its sample rows."""
    values = [raw for _, raw in iter_event_log(log)]
    with tempfile.TemporaryDirectory() as d:
        proc = open_processor(
            Path(d),
            0,
            StoreConfig(sync_writes=False),
            WorkerConfig(label_window_s=window_s),
            CFG,
            Metrics(CollectorRegistry()),
        )
        res = proc.process(list(range(len(values))), [None] * len(values), values)
        proc.commit()
        proc.close()
    assert res.samples is not None
    return res.samples.rows


def import_csv(path: Path, out: Path, **write: object) -> dict[str, object]:
    stats = run_import(
        GenericInput(path, OPTS),
        CFG,
        out=out,
        write=WriteOptions(**write),  # type: ignore[arg-type]
    )
    return stats.to_dict()


def test_user_sorted_file_gives_the_samples_of_its_time_sorted_twin(tmp_path: Path) -> None:
    rows = log_rows()
    by_user = sorted(rows, key=lambda r: (r[0], r[3]))
    by_time = sorted(rows, key=lambda r: r[3])  # stable: ties keep the by-row order
    a = import_csv(write_csv(tmp_path / "user.csv", by_user), tmp_path / "a.jsonl", run_events=7)
    b = import_csv(write_csv(tmp_path / "time.csv", by_time), tmp_path / "b.jsonl")
    assert a["sorted_runs"] >= 10  # the merge of spilled runs ran
    assert a["disorder"]["behind"] > 0
    assert b["disorder"]["behind"] == 0
    ev_a = [decode(r, CFG) for _, r in iter_event_log(tmp_path / "a.jsonl")]
    ev_b = [decode(r, CFG) for _, r in iter_event_log(tmp_path / "b.jsonl")]
    assert [e.ts for e in ev_a] == sorted(e.ts for e in ev_a)
    assert sorted(ev_a, key=lambda e: e.event_id) == sorted(ev_b, key=lambda e: e.event_id)
    window = recommended_window_s(tmp_path / "a.jsonl")
    assert window is not None
    assert 5 * 60 <= window <= 90 * 60
    sa, sb = samples_of(tmp_path / "a.jsonl", window), samples_of(tmp_path / "b.jsonl", window)
    key = ["user", "item", "ts", "label"]
    assert 0.9 * sum(r[2] == "view" for r in rows) < len(sa)  # the last windows stay open
    assert np.array_equal(np.sort(sa[key], order=key), np.sort(sb[key], order=key))
    assert 0 < sa["label"].sum() < len(sa)
    # without sorting, the user-sorted file loses positives to the watermark
    import_csv(tmp_path / "user.csv", tmp_path / "c.jsonl", presorted=True)
    assert samples_of(tmp_path / "c.jsonl", window)["label"].sum() < sa["label"].sum()


def test_sort_is_stable_for_equal_times_across_runs() -> None:
    times = [5, 1, 5, 1, 3, 5, 1, 3, 3, 5]
    s = EventSorter(CFG, run_events=3)
    for i, t in enumerate(times):
        s.add(Event(f"e{i}", "u", "i", "click", "c", T0 + t))
    out = [int(e.event_id[1:]) for e in s.sorted()]
    assert out == sorted(range(len(times)), key=lambda i: times[i])
    assert s.runs_spilled == 3
    assert s.disorder.behind == 6
    assert s.disorder.max_back_ms == 4


def test_presorted_keeps_input_order_and_still_measures(tmp_path: Path) -> None:
    rows = sorted(log_rows(1, users=3), key=lambda r: (r[0], r[3]))
    stats = import_csv(write_csv(tmp_path / "u.csv", rows), tmp_path / "o.jsonl", presorted=True)
    got = [decode(r, CFG) for _, r in iter_event_log(tmp_path / "o.jsonl")]
    assert [(e.user_id, e.ts) for e in got] == [(u, t) for u, _, _, t in rows]
    assert stats["disorder"]["sorted"] is False
    assert stats["disorder"]["behind"] > 0
    meta = read_meta(tmp_path / "o.jsonl")
    assert meta is not None
    assert meta["disorder"] == stats["disorder"]


def test_disorder_measure() -> None:
    d = Disorder()
    for t in (1, 2, 2, 10, 4, 11, 0):
        d.see(t)
    assert d.to_dict() == {"events": 7, "behind": 2, "share": round(2 / 7, 6), "max_back_s": 0.011}


def test_window_for_log_defaults_to_the_recorded_window(tmp_path: Path) -> None:
    log = tmp_path / "x.jsonl"
    log.write_bytes(b"")
    assert window_for_log(WorkerConfig(), log) == (WorkerConfig(), "settings")
    meta_path(log).write_bytes(orjson.dumps({"format": 1, "recommended_label_window_s": 7200}))
    worker, source = window_for_log(WorkerConfig(), log)
    assert worker.label_window_s == 7200
    assert source == str(meta_path(log))
    explicit = WorkerConfig(label_window_s=30.0)
    assert window_for_log(explicit, log) == (explicit, "settings")
    meta_path(log).write_bytes(b"[1]")
    with pytest.raises(ValueError, match="not an event-log metadata file"):
        read_meta(log)
