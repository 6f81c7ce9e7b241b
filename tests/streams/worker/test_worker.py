"""The stream worker against the real broker and real RocksDB: SIGKILLed and restarted,
killed during a rebalance, and fed a corpus of bad input.

The crash and rebalance tests run ``lumstream worker`` as subprocesses and compare the
final store and topics with one uninterrupted run over the same events: sequences and
meta byte for byte, partition counters exactly, samples per (partition, seq) (re-sent
ones must be identical) and dead letters per source offset.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry
from rocksdict import AccessType, Options, Rdict
from support.paths import REPO

from monitoring.metrics import Metrics
from streams.config import EventConfig, GeneratorConfig, KafkaConfig, StoreConfig, WorkerConfig
from streams.contracts.ids import stable_id
from streams.contracts.samples import HIST_DTYPE, SAMPLE_DTYPE, decode_block
from streams.generator import ClickStream
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.consumer import end_offsets, read_topic
from streams.kafka.producer import Producer
from streams.kafka.topics import ensure_topics
from streams.sinks.deadletters import read_deadletters
from streams.worker.confluent_engine import StreamWorker
from streams.worker.join import LabelJoin
from streams.worker.snapshots import Snapshots
from streams.worker.store import PartitionStore, StoreReader

WINDOW_S = 5.0
# small batches: many commits, so a kill lands between (and inside) batches
WORKER_SETTINGS = (
    "worker.batch_max=300",
    f"worker.label_window_s={WINDOW_S}",
    "store.chunk_events=8",
)
_APPLIED = re.compile(rb"applied\s+([\d,]+)")

Records = list[tuple[bytes, bytes]]


# -- events -------------------------------------------------------------------------------


def generated(n: int, seed: int, users: int = 300) -> Records:
    """``n`` generator records (1% malformed) starting a day ago, plus re-sent copies."""
    now_ms = int(time.time() * 1000)
    gen = GeneratorConfig(
        users=users,
        items=1000,
        categories=8,
        events=n,
        seed=seed,
        malformed_fraction=0.01,
        click_delay_mean_s=2.0,
        start_ts_ms=now_ms - 86_400_000,
    )
    pairs = [p for batch in ClickStream(gen).pair_batches() for p in batch]
    out: Records = []
    for i, pair in enumerate(pairs):
        out.append(pair)
        if i % 150 == 20:
            out.append(pairs[i - 7])  # a producer retry: same key, same bytes
    return out


def produce(cfg: KafkaConfig, bootstrap: str, records: Records) -> None:
    """Produce in order: one hand-off in flight at a time (Producer.send_many reorders a
    key's records across concurrent hand-offs: test_producer_keeps_the_order_of_a_key)."""
    with Producer(cfg, bootstrap, metrics=Metrics(CollectorRegistry())) as producer:
        for i in range(0, len(records), 2000):
            producer.send_many(cfg.topic_events, records[i : i + 2000])
            producer.flush()


def side_topics(cfg: KafkaConfig, name: str, bootstrap: str) -> KafkaConfig:
    """``cfg`` with its own samples and dead-letter topics (same events topic)."""
    out = dataclasses.replace(
        cfg,
        topic_samples=f"{cfg.topic_samples}.{name}",
        topic_deadletter=f"{cfg.topic_deadletter}.{name}",
    )
    ensure_topics(out, bootstrap)
    return out


# -- worker subprocesses ------------------------------------------------------------------


class WorkerProcess:
    """``lumstream worker`` in a subprocess; follows its progress line on stderr."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        cfg: KafkaConfig,
        store: Path,
        group: str,
        data_dir: Path,
        idle_exit: float | None = None,
        settings: tuple[str, ...] = (),
        launcher: tuple[str, ...] = ("-m", "lumstream.cli"),
    ) -> None:
        argv = [sys.executable, *launcher]
        for name in (
            "topic_events",
            "topic_samples",
            "topic_deadletter",
            "topic_model_updates",
        ):
            argv += ["--set", f"kafka.{name}={getattr(cfg, name)}"]
        for item in (*WORKER_SETTINGS, *settings):
            argv += ["--set", item]
        argv += ["worker", "--store", str(store), "--group", group]
        if idle_exit is not None:
            argv += ["--idle-exit", str(idle_exit)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUMSTREAM_")}
        env |= {
            "LUMSTREAM_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "LUMSTREAM_PATHS_DATA_DIR": str(data_dir),
            "LUMSTREAM_METRICS_ENABLED": "false",
        }
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.output = b""
        self.applied = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        while chunk := os.read(fd, 4096):
            self.output += chunk
            found = _APPLIED.findall(self.output[-400:])
            if found:
                self.applied = int(found[-1].replace(b",", b""))

    def wait_applied(self, at_least: int, timeout_s: float = 60.0) -> bool:
        """True once this process has applied ``at_least`` events; False if it exited."""
        deadline = time.monotonic() + timeout_s
        while self.applied < at_least:
            if self.proc.poll() is not None:
                return False
            assert time.monotonic() < deadline, self.tail()
            time.sleep(0.005)
        return True

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.close()

    def wait(self, timeout_s: float = 120.0) -> int:
        try:
            rc = self.proc.wait(timeout_s)
        finally:
            self.close()
        return rc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    def tail(self) -> str:
        return self.output[-2000:].decode("utf-8", "replace")


@pytest.fixture
def spawn(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Any]:
    started: list[WorkerProcess] = []

    def start(
        cfg: KafkaConfig,
        store: Path,
        group: str,
        idle_exit: float | None = None,
        settings: tuple[str, ...] = (),
        launcher: tuple[str, ...] = ("-m", "lumstream.cli"),
    ) -> WorkerProcess:
        data = tmp_path / f"data-{len(started)}"
        w = WorkerProcess(broker, cfg, store, group, data, idle_exit, settings, launcher)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


# -- comparing two runs ---------------------------------------------------------------------


@dataclasses.dataclass
class Final:
    """What a run left in its store and topics."""

    store: dict[int, dict[bytes, bytes]]  # partition -> meta and sequence chunks
    states: dict[int, dict[str, Any]]  # partition -> state without blob_no
    open_impressions: dict[int, bytes]
    samples: dict[tuple[int, int], tuple[bytes, bytes]]  # (partition, seq) -> row, history
    sample_messages: int
    dead: dict[tuple[int, int], tuple[str, bytes]]  # (partition, offset) -> reason, value


def read_final(root: Path, cfg: KafkaConfig, bootstrap: str) -> Final:
    store: dict[int, dict[bytes, bytes]] = {}
    states: dict[int, dict[str, Any]] = {}
    open_imps: dict[int, bytes] = {}
    for path in sorted(root.glob("p[0-9]*")):
        part = int(path.name[1:])
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            items: Any = db.items()  # raw mode: bytes keys and values
            store[part] = {k: v for k, v in items if k[:1] in (b"m", b"s")}
        finally:
            db.close()
        ps = PartitionStore(root, part, StoreConfig())
        try:
            state = dict(ps.state.__dict__)
            del state["blob_no"]  # one blob per batch: depends on the batch cuts
            states[part] = state
            join = LabelJoin(ps, int(WINDOW_S * 1000))
            rows = [b.rows for b in join.blobs.values()]
            if rows:
                all_rows = np.concatenate(rows)
                still_open = all_rows[all_rows["ts"] + join.window >= ps.state.watermark]
                open_imps[part] = np.sort(still_open, order="offset").tobytes()
        finally:
            ps.close()
    samples: dict[tuple[int, int], tuple[bytes, bytes]] = {}
    messages = read_topic(cfg, bootstrap, cfg.topic_samples, timeout_s=30)
    for rec in messages:
        block = decode_block(rec.value)
        ends = np.cumsum(block.hist_lengths, dtype=np.int64)
        for i in range(len(block)):
            key = (block.partition, int(block.rows["seq"][i]))
            content = (
                block.rows[i : i + 1].tobytes(),
                block.hist[int(ends[i] - block.hist_lengths[i]) : int(ends[i])].tobytes(),
            )
            # a sample re-sent after a crash carries the same (partition, seq) and content
            assert samples.setdefault(key, content) == content, key
    dead: dict[tuple[int, int], tuple[str, bytes]] = {}
    for d in read_deadletters(cfg, bootstrap, timeout_s=30):
        assert d.source is not None
        assert d.source.topic == cfg.topic_events
        key, got = (d.source.partition, d.source.offset), (d.reason, d.value)
        assert dead.setdefault(key, got) == got, key
    return Final(store, states, open_imps, samples, len(messages), dead)


def assert_same_final(got: Final, want: Final, total: int) -> None:
    assert sorted(got.store) == sorted(want.store) == [0, 1, 2, 3]
    for part in want.store:  # per partition: a readable failure
        assert got.store[part] == want.store[part], f"partition {part} sequences differ"
    assert got.states == want.states
    assert got.open_impressions == want.open_impressions
    assert got.samples == want.samples, describe_sample_diff(got.samples, want.samples)
    assert got.dead == want.dead
    # nothing missing: every offset applied or dead-lettered, samples numbered without gaps
    assert sum(s["next_offset"] for s in want.states.values()) == total
    assert (
        sum(s["counters"]["applied"] + s["counters"]["rejected"] for s in want.states.values())
        == total
    )
    for part, state in want.states.items():
        seqs = sorted(seq for p, seq in want.samples if p == part)
        assert seqs == list(range(state["sample_seq"])), part
    reasons = {reason for reason, _ in want.dead.values()}
    assert "duplicate" in reasons
    assert len(reasons) >= 4


def describe_sample_diff(
    got: dict[tuple[int, int], tuple[bytes, bytes]],
    want: dict[tuple[int, int], tuple[bytes, bytes]],
) -> str:
    """The first differing samples as (offset, ts, label, history length)."""

    def show(content: tuple[bytes, bytes] | None) -> str:
        if content is None:
            return "missing"
        row = np.frombuffer(content[0], SAMPLE_DTYPE)[0]
        return (
            f"offset {int(row['offset'])} ts {int(row['ts'])} label {int(row['label'])} "
            f"history {len(content[1]) // HIST_DTYPE.itemsize}"
        )

    keys = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    lines = [f"{len(keys)} samples differ:"]
    lines += [f"  {k}: got {show(got.get(k))}; want {show(want.get(k))}" for k in keys[:8]]
    return "\n".join(lines)


def applied_offsets(root: Path, tmp: Path) -> dict[int, int]:
    """Per partition, the next offset to apply, read through a secondary reader (the
    writers may be live)."""
    if not any(root.glob("p[0-9]*")):
        return {}
    reader = StoreReader(root, StoreConfig(), tmp / f"reader-{uuid.uuid4().hex[:6]}")
    try:
        reader.refresh()
        return {p: s.next_offset for p, s in reader.states().items()}
    finally:
        reader.close()


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_sigkilled_worker_ends_with_the_store_of_an_uninterrupted_run(
    broker: EmbeddedBroker, kafka_cfg: KafkaConfig, spawn: Any, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap
    produce(kafka_cfg, bootstrap, generated(24_000, seed=11))
    total = sum(end_offsets(kafka_cfg, bootstrap, kafka_cfg.topic_events).values())
    assert total > 24_000

    ref_cfg = side_topics(kafka_cfg, "ref", bootstrap)
    ref = spawn(ref_cfg, tmp_path / "ref", "ref-" + uuid.uuid4().hex[:6], idle_exit=5)
    assert ref.wait() == 0, ref.tail()

    rng = random.Random(1234)
    crash_cfg = side_topics(kafka_cfg, "crash", bootstrap)
    store = tmp_path / "crash"
    kills = 0
    for attempt in range(4):
        # a fresh group each time: the dead member would hold a rejoin for a session
        # timeout, and the RocksDB offset (not the group's) decides where to resume
        group = f"crash-{attempt}-{uuid.uuid4().hex[:6]}"
        w = spawn(crash_cfg, store, group)
        if w.wait_applied(rng.randrange(300, 4000)):
            time.sleep(rng.uniform(0, 0.05))  # anywhere in the next batch
            w.kill()
            kills += 1
        assert w.proc.returncode in (-signal.SIGKILL, None), w.tail()
        assert sum(applied_offsets(store, tmp_path).values()) < total  # mid-stream
    assert kills == 4
    last = spawn(crash_cfg, store, "crash-last-" + uuid.uuid4().hex[:6], idle_exit=5)
    assert last.wait() == 0, last.tail()

    want = read_final(tmp_path / "ref", ref_cfg, bootstrap)
    got = read_final(store, crash_cfg, bootstrap)
    assert_same_final(got, want, total)


@pytest.mark.integration
@pytest.mark.slow
def test_worker_killed_between_an_overlapped_flush_and_its_commit_converges(
    broker: EmbeddedBroker, kafka_cfg: KafkaConfig, spawn: Any, tmp_path: Path
) -> None:
    """worker.pipeline: a poll's samples are acknowledged, the next poll is processed on
    top of its sealed store batch, and the process dies before that batch is written
    (tests/support/killed_worker.py), twice; a restart ends like an uninterrupted run."""
    bootstrap = broker.bootstrap
    produce(kafka_cfg, bootstrap, generated(8_000, seed=17))
    total = sum(end_offsets(kafka_cfg, bootstrap, kafka_cfg.topic_events).values())

    ref_cfg = side_topics(kafka_cfg, "ref", bootstrap)
    ref = spawn(ref_cfg, tmp_path / "ref", "ref-" + uuid.uuid4().hex[:6], idle_exit=5)
    assert ref.wait() == 0, ref.tail()

    crash_cfg = side_topics(kafka_cfg, "crash", bootstrap)
    store = tmp_path / "crash"
    killer = (str(REPO / "tests" / "support" / "killed_worker.py"),)
    for attempt, kill_at in enumerate((4, 9)):
        group = f"crash-{attempt}-{uuid.uuid4().hex[:6]}"
        w = spawn(crash_cfg, store, group, launcher=(*killer, str(kill_at), "--"))
        assert w.wait() == -signal.SIGKILL, w.tail()
        assert "SIGKILL after flush" in w.tail(), w.tail()
        at_kill = applied_offsets(store, tmp_path)
        assert sum(at_kill.values()) < total  # mid-stream
    # the killed poll's samples reached lum.samples, its store batch did not
    killed = read_final(store, crash_cfg, bootstrap)
    stored_seq = {p: s["sample_seq"] for p, s in killed.states.items()}
    assert any(seq >= stored_seq[p] for p, seq in killed.samples), "none beyond the commit"
    last = spawn(crash_cfg, store, "crash-last-" + uuid.uuid4().hex[:6], idle_exit=5)
    assert last.wait() == 0, last.tail()

    want = read_final(tmp_path / "ref", ref_cfg, bootstrap)
    got = read_final(store, crash_cfg, bootstrap)
    assert_same_final(got, want, total)


@pytest.mark.integration
@pytest.mark.slow
def test_a_failed_flush_under_the_pipeline_reprocesses_both_polls(
    broker: EmbeddedBroker, kafka_cfg: KafkaConfig, spawn: Any, tmp_path: Path
) -> None:
    """worker.pipeline: the 4th flush (in the committer thread) fails after its records
    went out (tests/support/flaky_worker.py), while the next poll was already processed
    on top of it; both polls' partitions are reopened and re-read, and the run ends like
    an uninterrupted one."""
    bootstrap = broker.bootstrap
    produce(kafka_cfg, bootstrap, generated(6_000, seed=23))
    total = sum(end_offsets(kafka_cfg, bootstrap, kafka_cfg.topic_events).values())

    ref_cfg = side_topics(kafka_cfg, "ref", bootstrap)
    ref = spawn(ref_cfg, tmp_path / "ref", "ref-" + uuid.uuid4().hex[:6], idle_exit=5)
    assert ref.wait() == 0, ref.tail()

    flaky_cfg = side_topics(kafka_cfg, "flaky", bootstrap)
    report = tmp_path / "flaky.json"
    flaky = (str(REPO / "tests" / "support" / "flaky_worker.py"), "4", str(report), "--")
    store = tmp_path / "flaky"
    w = spawn(flaky_cfg, store, "flaky-" + uuid.uuid4().hex[:6], idle_exit=5, launcher=flaky)
    assert w.wait() == 0, w.tail()
    seen = orjson.loads(report.read_bytes())
    assert seen["failures"] >= 1, seen  # worker_batch_failures: one per partition reopened
    assert seen["flushes"] > 4, seen  # and work went on after it

    want = read_final(tmp_path / "ref", ref_cfg, bootstrap)
    got = read_final(store, flaky_cfg, bootstrap)
    assert_same_final(got, want, total)


@pytest.mark.integration
@pytest.mark.slow
def test_a_lost_partition_store_is_restored_from_its_snapshot_and_converges(
    broker: EmbeddedBroker, kafka_cfg: KafkaConfig, spawn: Any, tmp_path: Path
) -> None:
    """Losing a worker's disk loses nothing: a partition's store directory is deleted while
    the worker is down; the restarted worker restores it from its newest snapshot (taken
    two thirds of the events ago), re-processes lum.events from the snapshot's offset and
    ends with the store, samples and dead letters of an uninterrupted run (re-sent samples
    identical, so none counts twice)."""
    bootstrap = broker.bootstrap
    snaps = tmp_path / "snapshots"
    with_snapshots = ("store.snapshot_every_s=300", f"store.snapshot_dir={snaps}")
    without = ("store.snapshot_every_s=0", f"store.snapshot_dir={snaps}")
    lost_cfg = side_topics(kafka_cfg, "lost", bootstrap)
    store = tmp_path / "lost"

    def run(settings: tuple[str, ...]) -> WorkerProcess:
        w = spawn(lost_cfg, store, "lost-" + uuid.uuid4().hex[:6], 3, settings)
        assert w.wait() == 0, w.tail()
        return w

    produce(kafka_cfg, bootstrap, generated(5_000, seed=21))
    run(with_snapshots)  # snapshots each partition as it closes
    snapshot = Snapshots(snaps, 0).newest(1)
    assert snapshot is not None
    at = int(snapshot[1]["state"]["next_offset"])
    produce(kafka_cfg, bootstrap, generated(5_000, seed=22))
    run(without)  # moves on; its samples of partition 1 will be emitted again
    assert applied_offsets(store, tmp_path)[1] > at
    shutil.rmtree(store / "p00001")  # the disk of partition 1 is gone

    produce(kafka_cfg, bootstrap, generated(3_000, seed=23))
    total = sum(end_offsets(kafka_cfg, bootstrap, kafka_cfg.topic_events).values())
    w = run(with_snapshots)
    assert b"restored the store from snapshot" in w.output

    ref_cfg = side_topics(kafka_cfg, "ref", bootstrap)
    ref = spawn(ref_cfg, tmp_path / "ref", "ref-" + uuid.uuid4().hex[:6], 3)
    assert ref.wait() == 0, ref.tail()
    got = read_final(store, lost_cfg, bootstrap)  # asserts re-sent samples are identical
    want = read_final(tmp_path / "ref", ref_cfg, bootstrap)
    assert got.sample_messages > want.sample_messages  # partition 1's were sent again
    assert_same_final(got, want, total)


@pytest.mark.integration
@pytest.mark.slow
def test_survivor_takes_over_the_partitions_of_a_killed_worker(
    broker: EmbeddedBroker, kafka_cfg: KafkaConfig, spawn: Any, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap
    records = generated(24_000, seed=12)
    live_cfg = side_topics(kafka_cfg, "live", bootstrap)
    store = tmp_path / "live"
    group = "pair-" + uuid.uuid4().hex[:6]
    produced = threading.Event()

    killed = threading.Event()

    def trickle() -> None:
        """~2k events/s; the last 6,000 records wait for the kill, so that the stream
        flows on every partition after it."""
        with Producer(kafka_cfg, bootstrap, metrics=Metrics(CollectorRegistry())) as producer:
            for i in range(0, len(records), 200):
                if i == len(records) - 6_000:
                    killed.wait(120)
                producer.send_many(kafka_cfg.topic_events, records[i : i + 200])
                producer.flush()
                time.sleep(0.1)
        produced.set()

    feeder = threading.Thread(target=trickle, daemon=True)
    a = spawn(live_cfg, store, group)
    b = spawn(live_cfg, store, group)
    feeder.start()
    try:
        assert a.wait_applied(1), a.tail()
        assert b.wait_applied(1), b.tail()
        # both own partitions now; let them share the stream for a moment
        b_start = b.applied
        assert b.wait_applied(b_start + 300), b.tail()
        b.kill()
        at_kill = applied_offsets(store, tmp_path)
        killed.set()
        feeder.join(60)
        assert produced.is_set()
        total = sum(end_offsets(kafka_cfg, bootstrap, kafka_cfg.topic_events).values())
        assert total == len(records)
        deadline = time.monotonic() + 90
        while sum(applied_offsets(store, tmp_path).values()) < total:
            assert a.proc.poll() is None, a.tail()
            assert time.monotonic() < deadline, a.tail()
            time.sleep(0.5)
        # every partition moved on after the kill: the survivor took over the killed
        # worker's partitions (their stores were locked by it until it died)
        final = applied_offsets(store, tmp_path)
        assert len(at_kill) == 4
        assert all(final[p] > at_kill[p] for p in range(4)), (at_kill, final)
        a.proc.send_signal(signal.SIGTERM)
        assert a.wait() == 0, a.tail()
    finally:
        killed.set()
        feeder.join(60)

    ref_cfg = side_topics(kafka_cfg, "ref", bootstrap)
    ref = spawn(ref_cfg, tmp_path / "ref", "ref-" + uuid.uuid4().hex[:6], idle_exit=5)
    assert ref.wait() == 0, ref.tail()
    want = read_final(tmp_path / "ref", ref_cfg, bootstrap)
    got = read_final(store, live_cfg, bootstrap)
    assert_same_final(got, want, total)


# -- bad input ------------------------------------------------------------------------------


def bad_corpus(now_ms: int) -> list[tuple[bytes, str]]:
    """(payload, expected dead-letter reason) for each kind of broken event."""
    base: dict[str, Any] = {
        "event_id": "bad",
        "user_id": "u1",
        "item_id": "i1",
        "action": "click",
        "condition": "home",
        "ts": now_ms - 1000,
    }

    def obj(**changes: Any) -> bytes:
        d = dict(base) | changes
        return orjson.dumps({k: v for k, v in d.items() if v is not _DROP})

    good = obj()
    ts_literal = good.replace(b'"ts":%d' % base["ts"], b'"ts":%s')
    return [
        (good[:25], "malformed_json"),  # truncated
        (good[:-1], "malformed_json"),
        (b"", "malformed_json"),
        (b"   ", "malformed_json"),
        (obj(user_id=True), "wrong_type"),
        (obj(ts=str(base["ts"])), "wrong_type"),
        (obj(ts=1.5), "wrong_type"),
        (obj(features=["category", "x"]), "wrong_type"),
        (obj(action=3), "wrong_type"),
        (obj(event_id=_DROP), "missing_field"),
        (obj(user_id=_DROP), "missing_field"),
        (obj(item_id=""), "empty_field"),
        (obj(user_id="   "), "empty_field"),
        (obj(item_id="x" * 600), "field_too_long"),  # a huge string
        (obj(condition="y" * 12_000), "field_too_long"),
        (obj(ts=-1), "ts_out_of_range"),
        (obj(ts=0), "ts_out_of_range"),
        (obj(ts=now_ms + 10 * 365 * 86_400_000), "ts_out_of_range"),  # far future
        (ts_literal % b"NaN", "non_finite"),
        (ts_literal % b"Infinity", "non_finite"),
        (ts_literal % b"1e400", "non_finite"),
        (ts_literal % b"9223372036854775807", "ts_out_of_range"),  # int64 max
        (good.replace(b'"home"', b'"h\\ud800"'), "non_utf8"),
        (b"\xff\xfe\x00garbage" + bytes(range(256)), "non_utf8"),  # binary garbage
        (b"\x00\x01\x02\x03", "malformed_json"),
        (b"GIF89a" + bytes(range(200)), "non_utf8"),
        (b"x" * 20_000, "oversized"),
        (obj(features={"pad": "z" * 100}) + b" " * 20_000, "oversized"),
        (bytes(300_000), "oversized"),
        (b"null", "not_an_object"),
        (b"[1,2,3]", "not_an_object"),
        (b'"an event"', "not_an_object"),
        (obj(action="hover"), "unknown_action"),
        (obj(userId="u1"), "unknown_field"),
        (obj(features={f"k{i}": i for i in range(17)}), "too_many_features"),
        (obj(features={"price": "NaN"}).replace(b'"NaN"', b"NaN"), "non_finite"),
    ]


_DROP = object()


@pytest.mark.integration
def test_bad_input_is_dead_lettered_and_the_good_events_applied(
    broker: EmbeddedBroker, kafka_cfg: KafkaConfig, metrics: Metrics, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap
    now_ms = int(time.time() * 1000)
    corpus = bad_corpus(now_ms)
    sent: Records = []
    expected: list[str | None] = []  # None: a good event
    good_by_user: dict[str, list[str]] = defaultdict(list)
    rng = random.Random(5)
    seq = 0
    for j, (bad, reason) in enumerate(corpus * 2):
        for _ in range(rng.randrange(1, 4)):  # good events around every bad one
            user, action = f"u{rng.randrange(8)}", rng.choice(["impression", "click"])
            ev = {
                "event_id": f"ok-{seq}",
                "user_id": user,
                "item_id": f"i{seq % 13}",
                "action": action,
                "condition": "home",
                "ts": now_ms - 60_000 + seq,
            }
            seq += 1
            sent.append((user.encode(), orjson.dumps(ev)))
            expected.append(None)
            good_by_user[user].append(action)
            if seq % 9 == 0:  # a duplicate event id: the same record again
                sent.append(sent[-1])
                expected.append("duplicate")
        sent.append((f"u{j % 8}".encode(), bad))
        expected.append(reason)
    produce(kafka_cfg, bootstrap, sent)

    # where each record landed: per key the order is kept
    landed: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
    for rec in read_topic(kafka_cfg, bootstrap, kafka_cfg.topic_events, timeout_s=30):
        landed[rec.key].append((rec.partition, rec.offset))
    cursor: dict[bytes, int] = defaultdict(int)
    want_dead: dict[tuple[int, int], tuple[str, bytes, bytes]] = {}
    for (key, value), why in zip(sent, expected, strict=True):
        where = landed[key][cursor[key]]
        cursor[key] += 1
        if why is not None:
            want_dead[where] = (why, value, key)
    assert sum(len(v) for v in landed.values()) == len(sent)

    worker_cfg = WorkerConfig(group_id="bad-" + uuid.uuid4().hex[:6], batch_max=50)
    root = tmp_path / "store"

    stop = threading.Event()
    worker = StreamWorker(
        kafka_cfg, StoreConfig(), worker_cfg, EventConfig(), bootstrap, root, metrics
    )

    def done(stats: Any) -> None:
        if stats.applied + stats.dead_letters >= len(sent):
            stop.set()

    timer = threading.Timer(120, stop.set)  # never hang the suite
    timer.start()
    try:
        worker.run(stop, on_batch=done)
    finally:
        timer.cancel()

    got_dead = {}
    for d in read_deadletters(kafka_cfg, bootstrap, timeout_s=30):
        assert d.source is not None
        assert d.source.topic == kafka_cfg.topic_events
        assert d.stage == "worker"
        assert d.detail
        assert d.truncated_from is None
        got_dead[(d.source.partition, d.source.offset)] = (d.reason, d.value, d.key)
    assert got_dead == want_dead
    by_reason: dict[str, int] = defaultdict(int)
    for reason, _, _ in want_dead.values():
        by_reason[reason] += 1
    for reason, n in by_reason.items():
        assert (
            metrics.registry.get_sample_value(
                "lumstream_events_rejected_total", {"stage": "worker", "reason": reason}
            )
            == n
        )

    # every good event is applied and counted for its user
    n_good = expected.count(None)
    reader = StoreReader(root, StoreConfig(), tmp_path / "reader")
    try:
        states = reader.states()
        assert sum(s.counters.get("applied", 0) for s in states.values()) == n_good
        assert sum(s.next_offset for s in states.values()) == len(sent)
        for user, actions in good_by_user.items():
            found = reader.meta(stable_id(user))
            assert found is not None
            counts = found[1][3:6]
            assert counts == (actions.count("impression"), actions.count("click"), 0), user
            assert len(reader.sequence(stable_id(user))) == actions.count("click")
    finally:
        reader.close()


@pytest.mark.integration
def test_producer_keeps_the_order_of_a_key(broker: EmbeddedBroker, kafka_cfg: KafkaConfig) -> None:
    """The worker applies a partition in offset order, so Producer.send_many must keep
    the order of each key (Kafka's per-partition order) across its hand-offs."""
    records = generated(24_000, seed=13)
    with Producer(kafka_cfg, broker.bootstrap, metrics=Metrics(CollectorRegistry())) as p:
        p.send_many(kafka_cfg.topic_events, records)
        p.flush()
    sent: dict[bytes, list[bytes]] = defaultdict(list)
    for key, value in records:
        sent[key].append(value)
    landed: dict[bytes, list[bytes]] = defaultdict(list)
    for rec in read_topic(kafka_cfg, broker.bootstrap, kafka_cfg.topic_events, timeout_s=30):
        landed[rec.key].append(rec.value)
    assert sum(map(len, landed.values())) == len(records)
    out_of_order = [k for k in sent if landed[k] != sent[k]]
    assert out_of_order == []
