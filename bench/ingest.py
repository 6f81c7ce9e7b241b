"""End-to-end ingest rate of one stream worker process, against the limit of its own
building blocks and the naive faust baseline, all in one run on this machine.

One fresh embedded broker:

1. pre-fill ``lum.events`` (4 partitions) with ``--events`` generator records (1% malformed
   by default) through ``Producer.send_many``;
2. ``--rounds`` interleaved rounds of (medians printed):

   - **worker**: one :class:`streams.worker.confluent_engine.StreamWorker` (the confluent
     engine: librdkafka consumer, ``worker.pipeline`` on by default) in this process
     consumes them all: validate, sequence update, label join, samples and dead letters
     produced and flushed, one fsynced RocksDB WriteBatch with the offsets per partition
     batch. Timed from the start of the first batch to the end of the last commit (the
     group join before and the idle tail after are excluded). Also: event-to-store
     latency (on a pre-filled topic mostly the time a record waited in the topic) and the
     per-batch apply latency;
   - ``--variant NAME=VALUE`` (``--sequential`` = ``pipeline=false``): the worker again
     with one worker setting changed, each run with its own samples topic;
   - **limit loops** on the same records, the rate the worker cannot beat: raw consume
     (the worker's consumer settings), + the worker's ``decode_batch`` of every partition
     slice, + one fsynced RocksDB WriteBatch per partition slice (append-only); the
     worker's fraction of the last is printed. ``--consumer-set KEY=VALUE`` runs them a
     second time with other librdkafka consumer settings (e.g. the old defaults);

3. ``--drain-samples``: the trainer's source (``PositionedConsumer`` + ``decode_block``)
   over the first round's samples of the worker and of each variant;
4. ``--open-loop-rate R``: a worker on an empty topic while a child process produces R
   events/s for ``--open-loop-seconds`` (open loop: it does not wait for the worker);
   event-to-store latency from each record's timestamp to its durable commit, p50/p99;
5. **naive**: a faust-streaming agent over the first ``--naive-events`` of the same
   records, updating a RocksDB-backed faust Table per event
   (``table[user] = table[user] + [event]``), in a child process, timed from its first
   to its last event;
6. optionally (``--faust-engine-events N``) the worker's faust engine
   (``worker.engine=faust``) as a ``lumstream worker`` subprocess, timed from its first
   to its last applied offset by polling the store (0.1 s resolution).

``--profile`` adds a worker run under cProfile and prints where the time goes (the main
thread only: the committer thread's flush and commit are not in it).

Usage::

    python bench/ingest.py                           # a table
    python bench/ingest.py --events 500000 --rounds 3 --sequential --skip-naive
    python bench/ingest.py --consumer-set fetch.queue.backoff.ms=1000 --skip-naive
    python bench/ingest.py --variant compression=gzip --drain-samples --skip-naive
    python bench/ingest.py --events 20000 --skip-limits --open-loop-rate 20000
    python bench/ingest.py --events 200000 --profile --skip-naive --json
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry
from rocksdict import Rdict, WriteBatch, WriteOptions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import machine
from lumstream.config import Config, load
from monitoring.metrics import Metrics
from streams.config import KafkaConfig
from streams.contracts.samples import HIST_DTYPE, SAMPLE_DTYPE, decode_block
from streams.generator import ClickStream
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.consumer import PositionedConsumer, end_offsets
from streams.kafka.librdkafka import librdkafka_consumer_config
from streams.kafka.producer import Producer
from streams.kafka.topics import ensure_topics, with_topics
from streams.worker.confluent_engine import StreamWorker
from streams.worker.decode import decode_batch
from streams.worker.store import StoreReader, _options

REPO = Path(__file__).resolve().parent.parent


class Recorder:
    """Stands in for a Histogram metric: keeps every observation and when it came."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.ends: list[float] = []

    def observe(self, value: float) -> None:
        self.values.append(value)
        self.ends.append(time.perf_counter())


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


# -- pre-fill ----------------------------------------------------------------------------


def prefill(cfg: Config, kafka: KafkaConfig, bootstrap: str, topic: str, n: int) -> float:
    """Produce the first ``n`` generator records into ``topic``; returns records/s."""
    gen = dataclasses.replace(cfg.generator, events=n)
    metrics = Metrics(CollectorRegistry())
    t0 = time.perf_counter()
    with Producer(kafka, bootstrap, metrics=metrics) as producer:
        for batch in ClickStream(gen).pair_batches():
            producer.send_many(topic, batch)
        producer.flush()
    return n / (time.perf_counter() - t0)


# -- the worker ------------------------------------------------------------------------------


def run_worker(
    cfg: Config,
    kafka: KafkaConfig,
    bootstrap: str,
    root: Path,
    total: int,
    profile: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """One in-process StreamWorker over ``total`` records; stops once all are processed."""
    metrics = Metrics(CollectorRegistry())
    batches = Recorder()
    metrics.batch_apply_seconds = batches  # type: ignore[assignment]
    worker_cfg = dataclasses.replace(cfg.worker, group_id=f"bench-{uuid.uuid4().hex[:8]}")
    store_cfg = dataclasses.replace(cfg.store, path=str(root))
    worker = StreamWorker(kafka, store_cfg, worker_cfg, cfg.events, bootstrap, root, metrics)
    worker.keep_latencies = True

    def on_batch(stats: Any) -> None:
        if stats.applied + stats.dead_letters >= total:
            stop.set()

    stop = threading.Event()
    cpu_start = time.process_time()  # the group join before the first batch costs little CPU
    if profile is not None:
        profile.enable()
    try:
        stats = worker.run(stop, on_batch=on_batch)
    finally:
        if profile is not None:
            profile.disable()
    cpu_end = time.process_time()
    values = np.array(batches.values)
    first_start = batches.ends[0] - batches.values[0]
    seconds = batches.ends[-1] - first_start
    processed = stats.applied + stats.dead_letters
    latencies = np.concatenate(worker.latencies_ms) if worker.latencies_ms else np.empty(0)
    return {
        "events": processed,
        "seconds": seconds,
        "events_per_s": processed / seconds,
        # per CPU second of this process (the producer's background thread included): the
        # figure to trust on a shared, loaded machine
        "events_per_cpu_s": processed / max(cpu_end - cpu_start, 1e-9),
        "applied": stats.applied,
        "dead_letters": stats.dead_letters,
        "samples": stats.samples,
        # what went to lum.samples: fixed columns + history lengths + history rows
        "sample_bytes": stats.samples * (SAMPLE_DTYPE.itemsize + 4)
        + getattr(stats, "history_events", 0) * HIST_DTYPE.itemsize,
        "batches": len(values),
        "mean_batch": processed / max(len(values), 1),
        "p50_batch_apply_ms": _pct(values, 50) * 1000,
        "p99_batch_apply_ms": _pct(values, 99) * 1000,
        "p50_event_to_store_ms": _pct(latencies, 50),
        "p99_event_to_store_ms": _pct(latencies, 99),
    }


# -- the limit loops --------------------------------------------------------------------------

LIMITS = ("consume", "decode", "append")
LIMIT_TITLES = {
    "consume": "limit: raw consume",
    "decode": "limit: consume + decode",
    "append": "limit: consume + decode + durable append",
}


def run_limit(
    cfg: Config,
    kafka: KafkaConfig,
    bootstrap: str,
    root: Path,
    total: int,
    level: str,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """The worker's building blocks alone, on the same records: the rate it cannot beat.

    ``consume``: a confluent-kafka consumer with the worker's settings (plus
    ``overrides``), all partitions assigned from offset 0, ``worker.batch_max`` records per
    poll, the values, keys, offsets and timestamps taken out of every record as the worker
    does. ``decode``: + the worker's :func:`decode_batch` of each partition slice (msgspec,
    validation, id columns). ``append``: + one fsynced RocksDB WriteBatch per partition
    slice (one database per partition, the store's options) holding the slice's decoded
    columns and its next offset, append-only (no reads, no sequences, join or samples).
    Timed like the worker: from the first non-empty poll to the end of the last slice.
    """
    conf = librdkafka_consumer_config(kafka, bootstrap, f"limit-{uuid.uuid4().hex[:8]}", "limit")
    conf |= overrides
    consumer = Consumer(conf)
    parts = sorted(end_offsets(kafka, bootstrap, kafka.topic_events))
    consumer.assign([TopicPartition(kafka.topic_events, p, 0) for p in parts])
    dbs: dict[int, Rdict] = {}
    sync = WriteOptions()
    sync.sync = cfg.store.sync_writes
    if level == "append":
        for p in parts:
            (root / f"p{p:05d}").mkdir(parents=True, exist_ok=True)
            dbs[p] = Rdict(str(root / f"p{p:05d}"), _options(create=True))
    timeout_s = cfg.worker.batch_timeout_ms / 1000
    seen = polls = empty = 0
    first = 0.0
    cpu_start = time.process_time()
    deadline = time.monotonic() + 60 + total / 5_000
    try:
        while seen < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"limit loop {level!r}: {seen} of {total} records in time")
            records = consumer.consume(num_messages=cfg.worker.batch_max, timeout=timeout_s)
            if not records:
                empty += bool(seen)
                continue
            if not seen:
                first = time.perf_counter()
            polls += 1
            by_partition: dict[int, list[Any]] = {}
            for rec in records:
                by_partition.setdefault(rec.partition(), []).append(rec)
            for p, recs in by_partition.items():
                offsets = [r.offset() for r in recs]
                _keys = [r.key() for r in recs]
                values = [r.value() or b"" for r in recs]
                stamps = [r.timestamp()[1] for r in recs]
                seen += len(recs)
                if level == "consume":
                    continue
                wall = int(time.time() * 1000)
                now = np.minimum(np.asarray(stamps, np.int64), wall)
                cols, _bad = decode_batch(values, cfg.events, now)
                if level == "decode":
                    continue
                wb = WriteBatch(raw_mode=True)
                wb.put(
                    b"b" + offsets[0].to_bytes(8, "big"),
                    b"".join(
                        getattr(cols, c).tobytes()
                        for c in ("user", "item", "cond", "cat", "action", "ts")
                    ),
                )
                wb.put(b"P", str(offsets[-1] + 1).encode())
                dbs[p].write(wb, sync)
        seconds = time.perf_counter() - first
        cpu = time.process_time() - cpu_start
    finally:
        consumer.close()
        for db in dbs.values():
            db.close()
    return {
        "events_per_s": seen / seconds,
        "events_per_cpu_s": seen / max(cpu, 1e-9),
        "seconds": seconds,
        "polls": polls,
        "empty_polls": empty,
    }


# -- open loop: event-to-store latency at a steady rate ----------------------------------------


def open_loop_child(bootstrap: str, topic: str, rate: float, n: int, malformed: float) -> None:
    """``lumstream generate``'s pump: ``n`` generator records into ``topic`` at ``rate``
    events/s, whatever the worker does (open loop); prints the rate it held."""
    from streams.generator.pump import generate

    cfg = load()
    gen = dataclasses.replace(
        cfg.generator,
        events=n,
        rate=rate,
        start_ts_ms=int(time.time() * 1000) - 86_400_000,
        malformed_fraction=malformed,
    )
    result = generate(gen, kafka=cfg.kafka, bootstrap=bootstrap, topic=topic)
    print(orjson.dumps({"events": result.stats.events, "seconds": result.seconds}).decode())


def run_open_loop(
    cfg: Config, kafka_base: KafkaConfig, bootstrap: str, tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """A worker on an empty topic; once it owns every partition, a child process produces
    ``--open-loop-rate`` events/s for ``--open-loop-seconds``; event-to-store latency is
    the Kafka record timestamp (set when the generator produced it) to the durable store
    commit. The first ``--open-loop-warmup-s`` seconds of records are left out."""
    kafka = with_topics(kafka_base, f".open.{uuid.uuid4().hex[:8]}")
    ensure_topics(kafka, bootstrap)
    total = int(args.open_loop_rate * args.open_loop_seconds)
    worker_cfg = dataclasses.replace(
        cfg.worker,
        group_id=f"bench-open-{uuid.uuid4().hex[:8]}",
        batch_timeout_ms=args.open_loop_batch_timeout_ms or cfg.worker.batch_timeout_ms,
    )
    root = tmp / "open-loop"
    store_cfg = dataclasses.replace(cfg.store, path=str(root))
    metrics = Metrics(CollectorRegistry())
    worker = StreamWorker(kafka, store_cfg, worker_cfg, cfg.events, bootstrap, root, metrics)
    worker.keep_latencies = True
    stop = threading.Event()

    def on_batch(stats: Any) -> None:
        if stats.applied + stats.dead_letters >= total:
            stop.set()

    runner = threading.Thread(target=worker.run, args=(stop,), kwargs={"on_batch": on_batch})
    runner.start()
    child: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 60
        while len(worker.processors) < args.partitions:
            if time.monotonic() > deadline or not runner.is_alive():
                raise RuntimeError("open loop: the worker did not get its partitions")
            time.sleep(0.05)
        started_ms = time.time() * 1000.0
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--open-loop-child",
            bootstrap,
            kafka.topic_events,
            str(args.open_loop_rate),
            str(total),
            str(args.malformed),
        ]
        child = subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        out, err = child.communicate(timeout=120 + 2 * args.open_loop_seconds)
        if child.returncode != 0:
            raise RuntimeError(f"open-loop producer failed:\n{err.decode()[-3000:]}")
        produced = orjson.loads(out.splitlines()[-1])
        runner.join(60)
        if runner.is_alive():
            raise RuntimeError("open loop: the worker did not apply every record in time")
    finally:
        stop.set()
        runner.join(30)
        if child is not None and child.poll() is None:
            _stop(child)
    warm_ms = started_ms + args.open_loop_warmup_s * 1000.0
    lat = np.concatenate(worker.latencies_ms) if worker.latencies_ms else np.empty(0)
    ends = np.repeat(worker.commit_ms, [len(x) for x in worker.latencies_ms])
    keep = (ends - lat) >= warm_ms  # record timestamp after the warm-up
    lat = lat[keep]
    return {
        "rate": args.open_loop_rate,
        "produced_events_per_s": produced["events"] / produced["seconds"],
        "seconds": args.open_loop_seconds,
        "batch_timeout_ms": worker_cfg.batch_timeout_ms,
        "measured_events": len(lat),
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "p999_ms": _pct(lat, 99.9),
        "max_ms": float(lat.max()) if len(lat) else float("nan"),
        "batches": worker.stats.batches,
    }


# -- the naive faust baseline -----------------------------------------------------------------


def naive_child(bootstrap: str, topic: str, n: int, datadir: str, out: str) -> None:
    """A faust app that appends every event to the user's list in a RocksDB faust Table;
    writes {first, last, n} to ``out`` after ``n`` events, then idles until killed."""
    import faust

    app = faust.App(
        f"naive-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="rocksdb://",
        value_serializer="raw",
        datadir=datadir,
        web_enabled=False,
        topic_partitions=4,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        # as streams.kafka.consumer.consumer_options: a ~3 s join on tansu
        broker_session_timeout=6.0,
        broker_heartbeat_interval=0.5,
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes)
    schema: Any = faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json")
    table = app.Table("sequences", default=list, partitions=4, schema=schema)
    seen = {"n": 0, "first": 0.0}

    @app.agent(source)
    async def apply(stream: Any) -> None:
        async for event in stream.events():
            try:
                ev = orjson.loads(event.value)
                user = str(ev["user_id"]).encode()
                table[user] = table[user] + [[ev["item_id"], ev["action"], ev["ts"]]]
            except Exception:  # the naive loop skips what it cannot read
                pass
            seen["n"] += 1
            if seen["n"] == 1:
                seen["first"] = time.time()
            if seen["n"] == n:
                Path(out).write_bytes(
                    orjson.dumps({"first": seen["first"], "last": time.time(), "n": n})
                )

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def run_naive(kafka: KafkaConfig, bootstrap: str, topic: str, n: int, tmp: Path) -> float:
    out = tmp / "naive.json"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--naive-child",
        bootstrap,
        topic,
        str(n),
        str(tmp / "faust"),
        str(out),
    ]
    child = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60 + n / 100  # even 100 events/s finishes
        while not out.exists():
            if child.poll() is not None:
                err = child.stderr.read().decode(errors="replace") if child.stderr else ""
                raise RuntimeError(f"naive faust baseline exited early:\n{err[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("naive faust baseline did not finish in time")
            time.sleep(0.2)
        time.sleep(0.1)
        result = orjson.loads(out.read_bytes())
    finally:
        _stop(child)
    return (result["n"] - 1) / (result["last"] - result["first"])


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    if child.stderr is not None:
        child.stderr.close()


# -- the faust engine of the worker (optional) ------------------------------------------------


def run_faust_engine(kafka: KafkaConfig, bootstrap: str, total: int, tmp: Path) -> float:
    """``lumstream worker`` with worker.engine=faust; rate from polling its store."""
    return run_cli_workers(kafka, bootstrap, total, tmp, "faust-engine", ["worker.engine=faust"])


def run_cli_workers(
    kafka: KafkaConfig,
    bootstrap: str,
    total: int,
    tmp: Path,
    name: str,
    settings: list[str],
    processes: int = 1,
    from_fraction: float = 0.0,
) -> float:
    """``processes`` ``lumstream worker`` processes in one group over one store root; the
    rate from polling the store (0.1 s resolution), from the first progress (or from
    ``from_fraction`` of ``total``: leaves the group join and its first rebalance out) to
    the last record."""
    root = tmp / name
    argv = [sys.executable, "-m", "lumstream.cli"]
    for item in settings:
        argv += ["--set", item]
    for topic in (
        "topic_events",
        "topic_samples",
        "topic_deadletter",
        "topic_model_updates",
    ):
        argv += ["--set", f"kafka.{topic}={getattr(kafka, topic)}"]
    argv += ["worker", "--store", str(root), "--group", f"bench-{name}-{uuid.uuid4().hex[:8]}"]
    argv += ["--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUMSTREAM_")}
    env |= {
        "LUMSTREAM_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LUMSTREAM_METRICS_ENABLED": "false",
    }
    children = [
        subprocess.Popen(
            argv,
            cwd=REPO,
            env=env | {"LUMSTREAM_PATHS_DATA_DIR": str(tmp / f"{name}-data-{i}")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for i in range(processes)
    ]
    first: tuple[float, int] | None = None
    try:
        deadline = time.monotonic() + 120 + total / 1000
        while True:
            done = _applied(root, tmp)
            now = time.perf_counter()
            if first is None and done > 0 and done >= from_fraction * total:
                first = (now, done)
            if done >= total:
                break
            for child in children:
                if child.poll() is not None:
                    err = child.stderr.read().decode(errors="replace") if child.stderr else ""
                    raise RuntimeError(f"{name} worker exited early:\n{err[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} workers did not finish in time")
            time.sleep(0.1)
    finally:
        for child in children:
            _stop(child)
    assert first is not None
    return (total - first[1]) / max(now - first[0], 1e-9)


def _applied(root: Path, tmp: Path) -> int:
    if len(list(root.glob("p[0-9]*"))) == 0:
        return 0
    scratch = tmp / f"reader-{uuid.uuid4().hex[:6]}"
    try:
        reader = StoreReader(root, load().store, scratch)
    except Exception:  # a partition directory that is still being created
        return 0
    try:
        reader.refresh()
        return sum(s.next_offset for s in reader.states().values())
    finally:
        reader.close()


# -- main -----------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load()
    kafka_base = dataclasses.replace(cfg.kafka, partitions=args.partitions)
    gen = dataclasses.replace(
        cfg.generator,
        start_ts_ms=int(time.time() * 1000) - 86_400_000,
        malformed_fraction=args.malformed,
    )
    cfg = dataclasses.replace(cfg, generator=gen)
    result: dict[str, Any] = {
        "events": args.events,
        "naive_events": args.naive_events,
        "config": {
            "partitions": args.partitions,
            "batch_max": cfg.worker.batch_max,
            "batch_timeout_ms": cfg.worker.batch_timeout_ms,
            "sync_writes": cfg.store.sync_writes,
            "seq_len": cfg.store.seq_len,
            "chunk_events": cfg.store.chunk_events,
            "label_window_s": cfg.worker.label_window_s,
            "history_len": cfg.worker.history_len,
            "pipeline": cfg.worker.pipeline,
            "compression": cfg.worker.compression,
            "users": gen.users,
            "items": gen.items,
            "malformed_fraction": gen.malformed_fraction,
        },
        "machine": machine(),
    }
    metrics = Metrics(CollectorRegistry())
    with (
        tempfile.TemporaryDirectory(prefix="lumstream-bench-") as tmp_name,
        EmbeddedBroker(cfg.broker, metrics=metrics) as broker,
    ):
        tmp = Path(tmp_name)
        bootstrap = broker.bootstrap
        kafka = with_topics(kafka_base, f".bench.{uuid.uuid4().hex[:8]}")
        ensure_topics(kafka, bootstrap)
        result["prefill_events_per_s"] = prefill(
            cfg, kafka, bootstrap, kafka.topic_events, args.events
        )
        total = sum(end_offsets(kafka, bootstrap, kafka.topic_events).values())
        if total != args.events:
            raise RuntimeError(f"pre-filled {total} records, expected {args.events}")
        result |= measure_rounds(cfg, kafka, bootstrap, tmp, total, args)
        if args.processes > 1:
            result["processes"] = {
                str(n): run_cli_workers(
                    own_samples(kafka, bootstrap, f"procs{n}"),
                    bootstrap,
                    total,
                    tmp,
                    f"procs{n}",
                    [],
                    n,
                    from_fraction=0.1,
                )
                for n in (1, args.processes)
            }
        if args.open_loop_rate:
            result["open_loop"] = run_open_loop(cfg, kafka_base, bootstrap, tmp, args)
        if args.profile:
            prof = cProfile.Profile()
            run_worker(cfg, kafka, bootstrap, tmp / "store-profiled", total, profile=prof)
            result["profile"] = _profile_text(prof, args.profile_top)
        if args.naive_events:
            naive = with_topics(kafka_base, f".naive.{uuid.uuid4().hex[:8]}")
            ensure_topics(naive, bootstrap)
            prefill(cfg, naive, bootstrap, naive.topic_events, args.naive_events)
            result["naive_events_per_s"] = run_naive(
                naive, bootstrap, naive.topic_events, args.naive_events, tmp
            )
            result["ratio"] = result["events_per_s"] / result["naive_events_per_s"]
        else:
            result["naive_events_per_s"] = None
            result["ratio"] = None
        if args.faust_engine_events:
            fe = with_topics(kafka_base, f".faust.{uuid.uuid4().hex[:8]}")
            ensure_topics(fe, bootstrap)
            prefill(cfg, fe, bootstrap, fe.topic_events, args.faust_engine_events)
            result["faust_engine_events_per_s"] = run_faust_engine(
                fe, bootstrap, args.faust_engine_events, tmp
            )
    result["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return result


def measure_rounds(
    cfg: Config,
    kafka: KafkaConfig,
    bootstrap: str,
    tmp: Path,
    total: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """``args.rounds`` interleaved rounds (worker, then each limit loop) on the same
    records; the worker's figures are those of its median round, each limit its median."""
    overrides = dict(_parse_set(kv) for kv in args.consumer_set)
    workers: list[dict[str, Any]] = []
    limits: dict[str, list[dict[str, Any]]] = {}
    loops = [(level, level, {}) for level in LIMITS]
    if overrides:
        loops += [(f"{level}+set", level, overrides) for level in LIMITS]
    variants = {kv: _worker_variant(cfg, kv) for kv in args.variant}
    ran: dict[str, list[dict[str, Any]]] = {kv: [] for kv in variants}
    for r in range(args.rounds):
        workers.append(
            run_worker(
                cfg, own_samples(kafka, bootstrap, f"w{r}"), bootstrap, tmp / f"w-{r}", total
            )
        )
        if args.drain_samples and r == 0:
            workers[-1]["trainer_source"] = drain_samples(kafka, bootstrap, f"w{r}")
        for i, (kv, vcfg) in enumerate(variants.items()):
            tag = f"v{i}r{r}"
            ran[kv].append(
                run_worker(vcfg, own_samples(kafka, bootstrap, tag), bootstrap, tmp / tag, total)
            )
            if args.drain_samples and r == 0:
                ran[kv][-1]["trainer_source"] = drain_samples(kafka, bootstrap, tag)
        if args.skip_limits:
            continue
        for name, level, conf in loops:
            limits.setdefault(name, []).append(
                run_limit(cfg, kafka, bootstrap, tmp / f"limit-{name}-{r}", total, level, conf)
            )
    rates = [w["events_per_s"] for w in workers]
    out = dict(workers[int(np.argsort(rates)[len(rates) // 2])])
    out["worker_rounds_events_per_s"] = rates
    out["limits"] = {
        name: {
            "events_per_s": float(np.median([x["events_per_s"] for x in runs])),
            "events_per_cpu_s": float(np.median([x["events_per_cpu_s"] for x in runs])),
            "empty_polls": int(np.median([x["empty_polls"] for x in runs])),
            "rounds_events_per_s": [x["events_per_s"] for x in runs],
        }
        for name, runs in limits.items()
    }
    out["consumer_set"] = overrides
    out["variants"] = {
        kv: {
            "events_per_s": float(np.median([w["events_per_s"] for w in runs])),
            "events_per_cpu_s": float(np.median([w["events_per_cpu_s"] for w in runs])),
            "rounds_events_per_s": [w["events_per_s"] for w in runs],
            "trainer_source": runs[0].get("trainer_source"),
        }
        for kv, runs in ran.items()
    }
    out["trainer_source"] = workers[0].get("trainer_source")
    out["worker_rounds_fraction_of_append"] = (
        [w / a["events_per_s"] for w, a in zip(rates, limits["append"], strict=True)]
        if "append" in limits
        else []
    )
    fractions = out["worker_rounds_fraction_of_append"]
    out["worker_fraction_of_append"] = float(np.median(fractions)) if fractions else None
    # per CPU second: what the process did with the CPU it got (a loaded machine moves
    # the wall-clock rates of both sides with its scheduler, far less this one)
    out["worker_cpu_fraction_of_append"] = (
        float(
            np.median(
                [
                    w["events_per_cpu_s"] / a["events_per_cpu_s"]
                    for w, a in zip(workers, limits["append"], strict=True)
                ]
            )
        )
        if "append" in limits
        else None
    )
    return out


def _worker_variant(cfg: Config, kv: str) -> Config:
    """``cfg`` with one ``worker`` setting changed (``pipeline=false``, ``compression=lz4``)."""
    name, _, value = kv.partition("=")
    fields = {f.name: f for f in dataclasses.fields(cfg.worker)}
    if name not in fields or not value:
        raise SystemExit(f"--variant wants NAME=VALUE of a worker setting, got {kv!r}")
    current = getattr(cfg.worker, name)
    typed: Any = value.lower() in ("1", "true", "yes") if isinstance(current, bool) else value
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        typed = type(current)(value)
    return dataclasses.replace(cfg, worker=dataclasses.replace(cfg.worker, **{name: typed}))


def own_samples(kafka: KafkaConfig, bootstrap: str, tag: str) -> KafkaConfig:
    """``kafka`` with a samples topic of this worker run's own (same events topic)."""
    out = dataclasses.replace(kafka, topic_samples=f"{kafka.topic_samples}.{tag}")
    ensure_topics(out, bootstrap)
    return out


def drain_samples(kafka: KafkaConfig, bootstrap: str, tag: str) -> dict[str, Any]:
    """The trainer's source on one run's samples topic: its ``PositionedConsumer`` reads
    every message and ``decode_block`` decodes it (what the ranker's assembler gets)."""
    topic = f"{kafka.topic_samples}.{tag}"
    ends = end_offsets(kafka, bootstrap, topic)
    src = PositionedConsumer(kafka, bootstrap, topic, stop_at=ends)
    messages = samples = 0
    nbytes = 0
    start = time.perf_counter()
    try:
        while not src.exhausted():
            for rec in src.poll(64, 0.2):
                block = decode_block(rec.value)
                messages += 1
                samples += len(block)
                nbytes += len(rec.value)
    finally:
        src.close()
    seconds = time.perf_counter() - start
    return {
        "messages": messages,
        "samples": samples,
        "mib": nbytes / 2**20,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
    }


def _parse_set(kv: str) -> tuple[str, Any]:
    key, sep, value = kv.partition("=")
    if not sep:
        raise SystemExit(f"--consumer-set wants KEY=VALUE, got {kv!r}")
    return key, int(value) if value.lstrip("-").isdigit() else value


def _profile_text(prof: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def _print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    naive = r["naive_events_per_s"]
    rows = [
        (
            "machine",
            f"{m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}, "
            f"load {m['load_average_1m']} -> {m['load_average_1m_end']} (1 min)",
        ),
        ("config", ", ".join(f"{k}={v}" for k, v in r["config"].items())),
        (
            "events (pre-filled)",
            f"{r['events']:,} ({r['prefill_events_per_s']:,.0f} events/s to pre-fill)",
        ),
        (
            "worker: one process",
            f"{r['events_per_s']:>10,.0f} events/s  "
            f"({r['seconds']:.2f} s, first batch to last commit; rounds "
            + ", ".join(f"{x:,.0f}" for x in r["worker_rounds_events_per_s"])
            + ")",
        ),
        ("  per CPU second", f"{r['events_per_cpu_s']:>10,.0f} events/s"),
        (
            "  batches",
            f"{r['batches']:,} (mean {r['mean_batch']:,.0f} records), "
            f"{r['dead_letters']:,} dead letters",
        ),
        (
            "  samples",
            f"{r['samples']:,} ({r['sample_bytes'] / 2**20:,.0f} MiB with history to lum.samples)",
        ),
        (
            "  batch apply p50 / p99",
            f"{r['p50_batch_apply_ms']:.1f} / "
            f"{r['p99_batch_apply_ms']:.1f} ms  (process + send + "
            "flush + fsynced commit of one partition batch)",
        ),
        (
            "  event-to-store p50 / p99",
            f"{r['p50_event_to_store_ms']:,.0f} / "
            f"{r['p99_event_to_store_ms']:,.0f} ms  (record "
            "timestamp to commit: includes time waiting in the "
            "pre-filled topic)",
        ),
    ]
    if r.get("trainer_source"):
        rows.append(("  trainer source", _source_text(r["trainer_source"])))
    for kv, v in r.get("variants", {}).items():
        rows.append(
            (
                f"worker, worker.{kv}",
                f"{v['events_per_s']:>10,.0f} events/s  ({v['events_per_cpu_s']:,.0f} per CPU "
                "second; rounds " + ", ".join(f"{x:,.0f}" for x in v["rounds_events_per_s"]) + ")",
            )
        )
        if v.get("trainer_source"):
            rows.append(("  trainer source", _source_text(v["trainer_source"])))
    for name, lim in r.get("limits", {}).items():
        level, _, tuned = name.partition("+")
        title = LIMIT_TITLES[level] + (" (--consumer-set)" if tuned else "")
        rows.append(
            (
                title,
                f"{lim['events_per_s']:>10,.0f} events/s  "
                f"({lim['events_per_cpu_s']:,.0f} per CPU second, "
                f"{lim['empty_polls']} empty polls)",
            )
        )
    if r.get("worker_fraction_of_append") is not None:
        rows.append(
            (
                "worker / durable-append limit",
                f"{r['worker_fraction_of_append']:>10.2f}  (median of the per-round ratios "
                + ", ".join(f"{f:.2f}" for f in r["worker_rounds_fraction_of_append"])
                + ")",
            )
        )
    if r.get("worker_cpu_fraction_of_append") is not None:
        rows.append(
            (
                "  per CPU second",
                f"{r['worker_cpu_fraction_of_append']:>10.2f}  (worker events per CPU second / "
                "the limit's, median of the rounds)",
            )
        )
    if r.get("consumer_set"):
        rows.append(("--consumer-set", ", ".join(f"{k}={v}" for k, v in r["consumer_set"].items())))
    for n, rate in (r.get("processes") or {}).items():
        rows.append(
            (
                f"`lumstream worker` x {n}",
                f"{rate:>10,.0f} events/s  (one group, subprocesses, store polled, from 10% "
                "of the records on)",
            )
        )
    if r.get("open_loop"):
        ol = r["open_loop"]
        rows += [
            (
                "open loop",
                f"{ol['rate']:,.0f} events/s for {ol['seconds']:.0f} s (held "
                f"{ol['produced_events_per_s']:,.0f}), batch_timeout_ms="
                f"{ol['batch_timeout_ms']}, {ol['batches']:,} batches",
            ),
            (
                "  event-to-store p50 / p99",
                f"{ol['p50_ms']:,.0f} / {ol['p99_ms']:,.0f} ms  (p99.9 {ol['p999_ms']:,.0f}, "
                f"max {ol['max_ms']:,.0f}; {ol['measured_events']:,} records after the warm-up)",
            ),
        ]
    if naive:
        rows += [
            ("naive faust Table", f"{naive:>10,.0f} events/s  ({r['naive_events']:,} events)"),
            ("ratio worker / naive", f"{r['ratio']:>10,.1f} x"),
        ]
    if r.get("faust_engine_events_per_s"):
        rows.append(("worker, faust engine", f"{r['faust_engine_events_per_s']:>10,.0f} events/s"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if "profile" in r:
        print(
            "\ncProfile of a second worker run (the event-loop thread; the producer's "
            "background thread is not included):\n"
        )
        print(r["profile"])


def _source_text(src: dict[str, Any]) -> str:
    return (
        f"{src['samples_per_s']:>10,.0f} samples/s  ({src['samples']:,} samples in "
        f"{src['messages']:,} messages, {src['mib']:,.0f} MiB as fetched, PositionedConsumer "
        "+ decode_block)"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--open-loop-child"]:
        open_loop_child(argv[1], argv[2], float(argv[3]), int(argv[4]), float(argv[5]))
        return 0
    if argv[:1] == ["--naive-child"]:
        naive_child(argv[1], argv[2], int(argv[3]), argv[4], argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="records to pre-fill")
    parser.add_argument("--partitions", type=int, default=4, help="lum.events partitions")
    parser.add_argument(
        "--malformed", type=float, default=0.01, help="fraction of malformed generator records"
    )
    parser.add_argument(
        "--naive-events",
        type=int,
        default=20_000,
        help="records for the naive faust baseline (0 = skip)",
    )
    parser.add_argument("--skip-naive", action="store_true", help="same as --naive-events 0")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="interleaved rounds of the worker and the limit loops (medians printed)",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="same as --variant pipeline=false (one poll at a time)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="each round also times the worker with this worker setting (repeatable), "
        "e.g. compression=lz4",
    )
    parser.add_argument(
        "--drain-samples",
        action="store_true",
        help="time the trainer's source (PositionedConsumer + decode_block) over each "
        "variant's samples of the first round",
    )
    parser.add_argument(
        "--skip-limits", action="store_true", help="time the worker only (no limit loops)"
    )
    parser.add_argument(
        "--consumer-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also run the limit loops with this librdkafka consumer setting (repeatable)",
    )
    parser.add_argument(
        "--faust-engine-events",
        type=int,
        default=0,
        help="also time the worker's faust engine on this many records",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="a second worker run under cProfile; print the top functions",
    )
    parser.add_argument("--profile-top", type=int, default=25, help="functions to print")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="also time this many `lumstream worker` processes in one group against one "
        "(subprocesses, from 10%% of the records on; 1 = skip)",
    )
    parser.add_argument(
        "--open-loop-rate",
        type=float,
        default=0.0,
        help="also measure event-to-store latency with an open-loop producer at this "
        "many events/s (0 = skip)",
    )
    parser.add_argument(
        "--open-loop-seconds", type=float, default=20.0, help="how long the open loop produces"
    )
    parser.add_argument(
        "--open-loop-warmup-s", type=float, default=2.0, help="records left out at its start"
    )
    parser.add_argument(
        "--open-loop-batch-timeout-ms",
        type=int,
        default=0,
        help="worker.batch_timeout_ms for the open loop (0 = the configured one)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.skip_naive:
        args.naive_events = 0
    if args.sequential and "pipeline=false" not in args.variant:
        args.variant.append("pipeline=false")
    result = bench(args)
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        _print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
