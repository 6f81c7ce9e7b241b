"""The demo pipeline (``lumstream demo``): everything on embedded defaults, for a bounded
time.

Starts the embedded broker and creates the topics, then:

1. **history**: the first ``history_events`` of the synthetic click stream are written to
   an event log and replayed into lum.events at full speed (``lumstream replay produce``'s
   code): the backfill a new deployment starts from;
2. the stream worker ingests them (sequences into a fresh RocksDB store under
   ``<data_dir>/demo``, labelled samples to lum.samples, rejected events to
   lum.deadletter), and two live rankers, the same streaming trainer without and with LUM
   features (:mod:`lumstream.pipeline.demo_rankers`), learn from every sample;
3. **backbone**: once the history is in the store, the refresh job
   (:mod:`lumstream.pipeline.demo_backbone`) trains v1 on it, publishes it and writes every
   user's condition-query vectors;
4. **live**: the stream goes on at a steady rate (with a small share of malformed events)
   for ``duration_s``, while the frozen v1 recomputes the vectors of users whose sequences
   grew every ``incremental_every_s`` and the LUM ranker uses them, each sample only ever
   with vectors of events before it.

A live line shows the counts; a summary of each stage follows, with both rankers'
progressive metrics and the age of the vectors the live samples got. Nothing outside
``<data_dir>/demo`` is touched.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from core.settings import ConfigError

if TYPE_CHECKING:
    from lumstream.config import Config
    from lumstream.pipeline.demo_backbone import LiveBackbone
    from lumstream.pipeline.demo_rankers import LiveRankers
    from monitoring.metrics import Metrics
    from monitoring.server import MetricsServer
    from streams.generator import ClickStream
    from streams.worker.applier import WorkerStats
    from streams.worker.confluent_engine import StreamWorker


@dataclass(frozen=True)
class DemoOptions:
    """What ``lumstream demo`` runs (its flags; generator.* settings apply to the rest).

    Args:
        duration_s: seconds of live traffic after the history.
        rate: events per second the generator sends live.
        history_events: events replayed before going live (the backbone's first data).
        incremental_every_s: seconds between incremental vector passes while live.
        skip_backbone: the stream stage only (no history, backbone or rankers).
        malformed_fraction: share of deliberately broken events (live traffic only: an
            event log holds valid events).
        users / items / categories / ctr: a small, dense world, so that users have long
            sequences after a short history.
    """

    duration_s: float = 20.0
    rate: float = 6_000.0
    history_events: int = 120_000
    incremental_every_s: float = 2.0
    skip_backbone: bool = False
    malformed_fraction: float = 0.002
    users: int = 500
    items: int = 1_000
    categories: int = 8
    ctr: float = 0.15

    def __post_init__(self) -> None:
        if not self.skip_backbone and self.history_events < 1_000:
            raise ConfigError(
                f"--history {self.history_events}: the backbone's first version trains on "
                "the history; give at least 1000 events, or --skip-backbone"
            )
        if self.duration_s <= 0 or self.rate <= 0 or self.incremental_every_s <= 0:
            raise ConfigError("--duration, --rate and --incremental-every must be positive")


def run_demo(cfg: Config, opts: DemoOptions) -> bool:
    """Run the demo to its end, printing as it goes; True when every stage produced output."""
    from monitoring.metrics import default_metrics
    from monitoring.server import metrics_endpoint

    metrics = default_metrics()
    with metrics_endpoint(
        cfg.metrics, metrics.registry, role="demo", discovery_dir=cfg.layout.metrics_discovery
    ) as server:
        return _run(cfg, opts, metrics, server)


def _run(cfg: Config, opts: DemoOptions, metrics: Metrics, server: MetricsServer | None) -> bool:
    import torch

    from streams.generator import ClickStream
    from streams.kafka.broker import EmbeddedBroker
    from streams.kafka.topics import ensure_topics
    from streams.worker.confluent_engine import StreamWorker

    root = cfg.layout.demo
    shutil.rmtree(root, ignore_errors=True)  # the embedded broker starts empty: so does the store
    torch.set_num_threads(1)  # two rankers and a backbone share the machine's cores
    for noisy in ("torchrec", "torch.fx._symbolic_trace"):  # planner chatter, fx notes
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("trainer.ranker.loop").setLevel(logging.WARNING)  # the live line has it
    warnings.filterwarnings("ignore", category=FutureWarning)  # torchrec's deprecations
    gen_cfg = replace(
        cfg.generator,
        events=0,
        rate=opts.rate,
        malformed_fraction=opts.malformed_fraction,
        users=opts.users,
        items=opts.items,
        categories=opts.categories,
        base_ctr=opts.ctr,
    )
    cfg = replace(
        cfg,
        backbone=replace(
            cfg.backbone, condition_fields=("cond",), epochs=min(cfg.backbone.epochs, 3)
        ),
    )
    stream = ClickStream(gen_cfg)
    history = 0 if opts.skip_backbone else opts.history_events
    print(
        f"lumstream demo: {history:,} events of history, then {opts.duration_s:.0f} s of live "
        f"synthetic traffic at {opts.rate:,.0f} events/s; {gen_cfg.users:,} users, "
        f"{gen_cfg.items:,} items, {gen_cfg.categories} categories",
        flush=True,
    )
    with EmbeddedBroker(cfg.broker, metrics, log_dir=root / "logs") as broker:
        print(f"  broker   {broker.bootstrap} (embedded tansu, in memory)")
        ensure_topics(cfg.kafka, broker.bootstrap)
        print(
            f"  topics   {cfg.kafka.topic_events}, {cfg.kafka.topic_samples}, "
            f"{cfg.kafka.topic_deadletter}, {cfg.kafka.topic_model_updates}"
        )
        if server is not None:
            print(f"  metrics  {server.url}")
        worker = StreamWorker(
            cfg.kafka,
            cfg.store,
            cfg.worker,
            cfg.events,
            broker.bootstrap,
            root / "store",
            metrics,
        )
        stages = _Stages(cfg, opts, root, broker.bootstrap, metrics, stream, worker)
        return stages.run(history)


class _Stages:
    """The demo's threads and its phases (history, backbone, live, drain, summary)."""

    def __init__(
        self,
        cfg: Config,
        opts: DemoOptions,
        root: Path,
        bootstrap: str,
        metrics: Metrics,
        stream: ClickStream,
        worker: StreamWorker,
    ) -> None:
        from lumstream.pipeline.demo_backbone import LiveBackbone
        from lumstream.pipeline.demo_rankers import LiveRankers

        self.cfg, self.opts, self.root, self.bootstrap = cfg, opts, root, bootstrap
        self.metrics, self.stream, self.worker = metrics, stream, worker
        self.rankers: LiveRankers | None = None
        self.backbone: LiveBackbone | None = None
        if not opts.skip_backbone:
            self.rankers = LiveRankers(cfg, root, bootstrap, metrics)
            self.backbone = LiveBackbone(cfg, root, metrics, opts.incremental_every_s)
        self.produced = 0
        self.started = time.monotonic()
        self.line = _LiveLine(sys.stdout.isatty(), self.started)
        self.stop_worker = threading.Event()
        self.errors: list[BaseException] = []
        self.stats: WorkerStats | None = None
        self.live_s = 0.0

    # -- threads ------------------------------------------------------------------------------
    def _consume(self) -> None:
        try:
            self.stats = self.worker.run(self.stop_worker)
        except BaseException as exc:  # re-raised by the main thread
            self.errors.append(exc)

    def show(self, final: bool = False) -> None:
        s = self.worker.stats
        lag = self.produced - s.applied - s.dead_letters
        ranker = f"  {self.rankers.progress()}" if self.rankers is not None else ""
        self.line.show(
            f"produced {self.produced:>8,}  applied {s.applied:>8,}  samples "
            f"{s.samples:>7,}  dead letters {s.dead_letters:>4,}  lag {lag:>6,}" + ranker,
            final,
        )

    def _wait(self, done: threading.Event | None = None) -> None:
        """Until ``done`` is set, or else until the worker has applied everything produced,
        showing the counts; a failed worker raises."""
        while True:
            if self.errors:
                raise RuntimeError(f"the stream worker failed: {self.errors[0]!r}")
            s = self.worker.stats
            if done is not None and done.wait(0.25):
                return
            if done is None:
                if s.applied + s.dead_letters >= self.produced:
                    return
                time.sleep(0.25)
            self.show()

    # -- phases -------------------------------------------------------------------------------
    def run(self, history: int) -> bool:
        from streams.kafka.consumer import end_offsets

        consumer = threading.Thread(target=self._consume, name="demo-worker", daemon=True)
        consumer.start()
        if self.rankers is not None:
            self.rankers.start()
        ok = True
        try:
            live_from_ms = self._history(history) if history else 0
            if self.backbone is not None:
                ok = self._first_backbone()
            self._live()
            self._wait()  # the worker has everything
            self.stop_worker.set()
            consumer.join()
            if self.errors:
                raise RuntimeError(f"the stream worker failed: {self.errors[0]!r}")
            if self.backbone is not None:
                self.backbone.close()
            if self.rankers is not None:
                ends = end_offsets(self.cfg.kafka, self.bootstrap, self.cfg.kafka.topic_samples)
                self.rankers.finish(ends, waiting=self.show)
        except BaseException:
            self.stop_worker.set()
            if self.backbone is not None:
                self.backbone.close()
            if self.rankers is not None:
                self.rankers.abort()
            raise
        self.show(final=True)
        self.line.newline()
        stats = self.stats or self.worker.stats
        _stream_summary(self.cfg, self.stream, stats, self.root, time.monotonic() - self.started)
        ok = ok and stats.applied > 0 and stats.samples > 0
        if self.rankers is not None and self.backbone is not None:
            ok = self.rankers.report() and ok
            self._ages(live_from_ms)
        if not ok:
            print("lumstream demo: a stage of the pipeline produced nothing", file=sys.stderr)
        return ok

    def _history(self, n: int) -> int:
        """Write the stream's first ``n`` events to a log and replay it into lum.events;
        the event time the live traffic starts after."""
        from streams.generator.malformed import Malformed
        from streams.replay.produce import replay_produce
        from streams.replay.sources import open_source
        from streams.sinks.events import event_output

        path = self.root / "history.jsonl"
        written, left_out, first, last = 0, 0, None, 0
        started = time.perf_counter()
        with event_output(path, source="demo-history") as sink:
            for batch in self.stream.event_batches(limit=n):
                for ev in batch:
                    if isinstance(ev, Malformed):
                        left_out += 1
                        continue
                    sink.write(ev)
                    written += 1
                    first = ev.ts if first is None else first
                    last = max(last, ev.ts)
        wrote_s = time.perf_counter() - started
        stats = replay_produce(
            open_source(str(path)),
            self.cfg.kafka,
            self.bootstrap,
            self.root / "history-replay.json",
            metrics=self.metrics,
        )
        self.produced += stats.produced
        hours = (last - (first or last)) / 3_600_000
        self.line.newline()
        print(
            f"history   {written:,} events ({hours:.1f} simulated hours; {left_out:,} malformed "
            f"left out: a log holds valid events) written to {path} in {wrote_s:.1f} s and "
            f"replayed into {self.cfg.kafka.topic_events} in {stats.seconds:.1f} s",
            flush=True,
        )
        self._wait()
        return last

    def _first_backbone(self) -> bool:
        from lumstream.pipeline.demo_backbone import print_refresh

        assert self.backbone is not None
        self.line.newline()
        print(
            f"backbone (LUM, {self.cfg.backbone.objective}): training v1 on the history in the "
            "store, publishing it, computing condition-query vectors ...",
            flush=True,
        )
        self.backbone.start()
        self._wait(self.backbone.first)
        result = self.backbone.wait_first()
        self.line.newline()
        ok = print_refresh(result, self.backbone.paths)
        print(
            f"live      {self.opts.duration_s:.0f} s at {self.opts.rate:,.0f} events/s; "
            f"incremental vector passes every {self.opts.incremental_every_s:g} s",
            flush=True,
        )
        return ok

    def _live(self) -> None:
        from streams.generator.pacing import TokenBucket
        from streams.kafka.producer import Producer

        bucket = TokenBucket(self.opts.rate)
        live_started = time.monotonic()
        deadline = live_started + self.opts.duration_s
        with Producer(self.cfg.kafka, self.bootstrap, metrics=self.metrics) as producer:
            for pairs in self.stream.pair_batches(batch_size=500):
                bucket.acquire(len(pairs))
                producer.send_many(self.cfg.kafka.topic_events, pairs, source="demo")
                self.produced += len(pairs)
                if self.errors:
                    raise RuntimeError(f"the stream worker failed: {self.errors[0]!r}")
                self.show()
                if time.monotonic() >= deadline:
                    break
            producer.flush()
        self.live_s = time.monotonic() - live_started

    def _ages(self, live_from_ms: int) -> None:
        """The age of the vectors the LUM ranker's live samples got."""
        import numpy as np

        from lumstream.pipeline.demo_backbone import print_ages, vector_ages

        assert self.rankers is not None
        assert self.backbone is not None
        scored = self.rankers.rankers[1].loop.stats.scored
        users = np.concatenate([s.users for s in scored]) if scored else np.zeros(0, np.int64)
        ts = np.concatenate([s.ts for s in scored]) if scored else np.zeros(0, np.int64)
        live = ts > live_from_ms
        if not live.any():
            return
        ages = vector_ages(self.backbone.paths.vectors, users[live], ts[live], live_from_ms + 1)
        clock = (int(ts[live].max()) - live_from_ms) / 1000.0 / max(self.live_s, 1e-3)
        print_ages(ages, clock, self.backbone.incremental_users())


class _LiveLine:
    """One status line: rewritten in place on a terminal, every 2 s otherwise."""

    def __init__(self, tty: bool, started: float) -> None:
        self.tty, self.started, self.shown, self.open = tty, started, 0.0, False
        self.lock = threading.Lock()

    def show(self, text: str, final: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        with self.lock:
            if not (self.tty or final or elapsed - self.shown >= 2.0):
                return
            self.shown = elapsed
            end = "" if self.tty else "\n"
            print(f"{chr(13) if self.tty else ''}  [{elapsed:5.1f}s] {text}", end=end, flush=True)
            self.open = self.tty

    def newline(self) -> None:
        """End an in-place line before other output."""
        with self.lock:
            if self.open:
                print(flush=True)
                self.open = False


def _stream_summary(
    cfg: Config, stream: ClickStream, stats: WorkerStats, root: Path, elapsed: float
) -> None:
    n_samples, positives, hist = stats.samples, stats.positives, stats.history_events
    gs = stream.stats
    print("stream")
    print(
        f"  generated   {gs.events:,} events ({gs.impressions:,} impressions, "
        f"{gs.clicks:,} clicks, {gs.purchases:,} purchases, {gs.malformed:,} malformed), "
        f"{gs.users:,} users, CTR {gs.ctr:.2%}"
    )
    print(
        f"  worker      {stats.applied:,} events applied in {stats.batches:,} batches, "
        f"{stats.dead_letters:,} dead letters, caught up {elapsed:.1f} s after start"
    )
    print(
        f"  samples     {n_samples:,} delivered to {cfg.kafka.topic_samples} "
        f"({positives:,} positive = {positives / max(n_samples, 1):.2%}), "
        f"{hist / max(n_samples, 1):.1f} history events per sample; impressions still "
        f"inside their {cfg.worker.label_window_s:.0f} s label window stay open"
    )
    print(
        f"  store       {root / 'store'}  (inspect: lumstream store stats --store {root / 'store'})"
    )
