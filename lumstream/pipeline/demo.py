"""The demo pipeline (``lumstream demo``): the closed loop, on embedded defaults, as separate
processes, for a bounded time.

1. **broker**: the embedded Kafka-protocol broker (tansu, a child process) and the topics;
2. **history**: the first ``history_events`` of the synthetic click stream, ending just
   before now, are written to an event log and replayed into lum.events (``lumstream
   replay produce``'s code): the backfill a new deployment starts from;
3. **processes**: ``lumstream worker`` ingests them into the RocksDB sequence store and
   emits labelled samples; ``lumstream backbone refresh`` trains backbone v1 on the
   history, writes every user's condition-query vectors and then recomputes the vectors
   of users whose sequences grew every ``incremental_every_s``; two ``lumstream train``
   processes, the same ranker with and without LUM features, learn every sample and
   publish a version every ``publish_every_s``; two ``lumstream serve`` processes serve
   them (hot-swapping each new version) and log every list they serve; a local
   Prometheus + Alertmanager (``lumstream monitor``'s code, the project's rules on a
   faster clock) scrapes them all;
4. **live**: simulated users (:mod:`lumstream.pipeline.simulated_users`), split at random
   between the LUM ranker, the ranker without LUM and a popularity policy, request
   rankings, click what they like (with position bias) and post their clicks; half-way
   through, their tastes shift, and the drift alerts fire;
5. **report**: served CTR per arm with a bootstrap interval over users, the trainers'
   progressive AUC, latency percentiles, freshness (click → served history, sample →
   served version) and every alert that fired, printed and drawn into a PNG.

Nothing outside ``<data_dir>/demo`` is touched.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.settings import ConfigError

if TYPE_CHECKING:
    from lumstream.config import Config
    from lumstream.pipeline.children import Children
    from lumstream.pipeline.report import Series
    from lumstream.pipeline.simulated_users import LoopResult
    from monitoring.stack import LocalMonitoring
    from streams.generator import ClickStream

ARMS = ("lum", "no_lum", "popularity")
RULES_FACTOR = 60.0  # the alert rules' clock: a drift alert's for: 15m becomes 15 s
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DemoOptions:
    """What ``lumstream demo`` runs (its flags; generator.* settings apply to the rest).

    Args:
        duration_s: seconds of the live closed loop.
        rate: ranking requests (page views) per second of the simulated users.
        history_events: events replayed before going live (the backbone's first data).
        incremental_every_s: seconds between incremental vector passes.
        publish_every_s: seconds between the trainers' checkpoints (each one a version).
        drift: shift the users' tastes half-way through the live loop.
        monitor: run Prometheus + Alertmanager with the rules.
        explore_share: share of requests served in a random order (logged as such).
        users / items / categories / ctr: a small, dense world, so that users have long
            sequences after a short history.
    """

    duration_s: float = 90.0
    rate: float = 30.0
    history_events: int = 120_000
    incremental_every_s: float = 2.0
    publish_every_s: float = 10.0
    drift: bool = True
    monitor: bool = True
    explore_share: float = 0.05
    users: int = 500
    items: int = 1_000
    categories: int = 8
    ctr: float = 0.15

    def __post_init__(self) -> None:
        if self.history_events < 1_000:
            raise ConfigError(
                f"--history {self.history_events}: the backbone's first version trains on "
                "the history; give at least 1000 events"
            )
        if min(self.duration_s, self.rate, self.incremental_every_s, self.publish_every_s) <= 0:
            raise ConfigError(
                "--duration, --rate, --incremental-every and --publish-every must be positive"
            )

    @classmethod
    def quick(cls) -> DemoOptions:
        """The short form the test suite runs (``--quick``)."""
        return cls(duration_s=40.0, rate=20.0, history_events=40_000, publish_every_s=5.0)


def run_demo(cfg: Config, opts: DemoOptions) -> bool:
    """Run the demo to its end, printing as it goes; True when every stage worked."""
    from streams.kafka.broker import EmbeddedBroker
    from streams.kafka.topics import ensure_topics

    root = cfg.layout.demo
    shutil.rmtree(root, ignore_errors=True)  # the embedded broker starts empty: so does the store
    root.mkdir(parents=True)
    from monitoring.metrics import default_metrics

    metrics = default_metrics()
    print(
        f"lumstream demo: {opts.history_events:,} events of history, then {opts.duration_s:.0f} s "
        f"of simulated users at {opts.rate:g} requests/s against the ranking services; "
        f"{opts.users:,} users, {opts.items:,} items, {opts.categories} categories",
        flush=True,
    )
    with EmbeddedBroker(cfg.broker, metrics, log_dir=root / "logs") as broker:
        print(f"  broker     {broker.bootstrap} (embedded tansu, in memory)")
        cfg = _demo_config(cfg, opts, root, broker.bootstrap)
        ensure_topics(cfg.kafka, broker.bootstrap)
        stream = _stream(cfg, opts)
        prior, history_end_ms = _history(cfg, root, stream)
        return _Demo(cfg, opts, root, stream, prior, history_end_ms).run()


def _demo_config(cfg: Config, opts: DemoOptions, root: Path, bootstrap: str) -> Config:
    """The settings every child reads: the demo's directory, the broker, small models."""

    ranker = replace(
        cfg.ranker,
        checkpoint_every_s=opts.publish_every_s,
        keep_checkpoints=2,
        keep_versions=3,
        vectors_poll_s=1.0,
        log_every=5,
    )
    return replace(
        cfg,
        paths=replace(cfg.paths, data_dir=root / "data"),
        kafka=replace(cfg.kafka, bootstrap_servers=bootstrap),
        generator=replace(
            cfg.generator,
            users=opts.users,
            items=opts.items,
            categories=opts.categories,
            base_ctr=opts.ctr,
            events=opts.history_events,
            drift_at=1.0 if opts.drift else -1.0,  # the world knows the shifted tastes
            drift_share=1.0,
            malformed_fraction=0.0,
        ),
        store=replace(cfg.store, snapshot_every_s=0.0),
        backbone=replace(cfg.backbone, condition_fields=("cond",), epochs=min(cfg.backbone.epochs, 3)),
        refresh=replace(
            cfg.refresh,
            cadence_s=10 * 365 * 86_400.0,  # one full refresh (v1), then incremental passes
            incremental_every_s=opts.incremental_every_s,
        ),
        ranker=ranker,
        drift=replace(cfg.drift, window=3_000, reference_samples=5_000, warmup_samples=10_000),
        metrics=replace(cfg.metrics, enabled=True, port=0),
    )


def _stream(cfg: Config, opts: DemoOptions) -> ClickStream:
    """The history's stream, timed so that it ends a little before now."""
    from streams.generator import ClickStream

    g = cfg.generator
    per_view = g.slate_size * (1.0 + g.base_ctr * (1.0 + g.purchase_prob))
    span_ms = opts.history_events / per_view * g.time_step_ms
    start = int(time.time() * 1000 - 1.2 * span_ms - 300_000)
    return ClickStream(replace(g, start_ts_ms=start))


def _history(cfg: Config, root: Path, stream: ClickStream) -> tuple[np.ndarray, int]:
    """Write the history to a log and replay it into lum.events; the items' click counts
    (the popularity policy's prior) and the history's last event time."""
    from monitoring.metrics import default_metrics
    from streams.replay.produce import replay_produce
    from streams.replay.sources import open_source
    from streams.sinks.events import event_output

    path = root / "history.jsonl"
    clicks = np.zeros(cfg.generator.items, dtype=np.float64)
    first, last, written = None, 0, 0
    with event_output(path, source="demo-history") as sink:
        for batch in stream.event_batches(limit=cfg.generator.events):
            for ev in batch:
                sink.write(ev)  # type: ignore[arg-type]
                written += 1
                first = ev.ts if first is None else first  # type: ignore[union-attr]
                last = max(last, ev.ts)  # type: ignore[union-attr]
                if ev.action != "impression":  # type: ignore[union-attr]
                    clicks[int(ev.item_id)] += 1  # type: ignore[union-attr]
    stats = replay_produce(
        open_source(str(path)),
        cfg.kafka,
        cfg.kafka.bootstrap_servers,
        root / "history-replay.json",
        metrics=default_metrics(),
    )
    hours = (last - (first or last)) / 3_600_000
    print(
        f"  history    {written:,} events ({hours:.1f} h of event time, ending "
        f"{(time.time() * 1000 - last) / 1000:.0f} s ago) replayed into {cfg.kafka.topic_events} "
        f"in {stats.seconds:.1f} s",
        flush=True,
    )
    return clicks, last


class _Demo:
    def __init__(
        self,
        cfg: Config,
        opts: DemoOptions,
        root: Path,
        stream: ClickStream,
        prior: np.ndarray,
        history_end_ms: int,
    ) -> None:
        from lumstream.config import to_toml
        from lumstream.pipeline.children import Children

        self.cfg, self.opts, self.root, self.stream = cfg, opts, root, stream
        self.prior, self.history_end_ms = prior, history_end_ms
        config = root / "config.toml"
        config.write_text(to_toml(cfg))
        self.layout = cfg.layout
        self.children: Children = Children(root, config, self.layout.metrics_discovery, REPO)
        self.ports: dict[str, int] = {}

    # -- the processes -------------------------------------------------------------------------
    def _ranker_sets(self, arm: str) -> list[str]:
        d = self.root / "data" / "ranker" / arm
        return [
            f"ranker.lum_features={'full' if arm == 'lum' else 'off'}",
            f"ranker.checkpoint_dir={d / 'ckpt'}",
            f"ranker.versions_dir={d / 'versions'}",
        ]

    def _start(self) -> None:
        from core.processes import free_port

        c = self.children
        c.start("worker", ["worker"])
        c.wait("the worker to ingest the history", self._history_applied, 300)
        print(f"  worker     ingested the history into {self.layout.data_dir / 'store'}", flush=True)
        c.start("backbone", ["backbone", "refresh"])
        print("  backbone   training v1 on the history (then incremental passes) ...", flush=True)
        c.wait("backbone v1 and its vectors", self._vectors_written, 600)
        print("  backbone   v1 published, every user's condition-query vectors written", flush=True)
        for arm in ARMS[:2]:
            c.start(f"train-{arm}", ["train"], self._ranker_sets(arm))
        c.wait("both rankers' first versions", self._rankers_published, 600)
        print(
            f"  trainers   with and without LUM: first versions published; a new one every "
            f"{self.opts.publish_every_s:g} s",
            flush=True,
        )
        for arm in ARMS[:2]:
            port = free_port("127.0.0.1")
            self.ports[arm] = port
            sets = [*self._ranker_sets(arm), f"serving.port={port}"]
            sets.append(f"serving.explore_share={self.opts.explore_share}")
            c.start(f"serve-{arm}", ["serve"], sets)
        c.wait("both ranking services", self._services_ready, 180)
        print(
            "  services   "
            + ", ".join(f"{a} http://127.0.0.1:{p}" for a, p in self.ports.items())
            + " (POST /v1/rank, POST /v1/events, GET /v1/models, /openapi.json)",
            flush=True,
        )

    def _history_applied(self) -> bool:
        applied = self.children.metric("worker", "lumstream_worker_events_applied_total")
        return applied is not None and applied >= self.cfg.generator.events

    def _vectors_written(self) -> bool:
        v = self.children.metric(
            "backbone", "lumstream_backbone_vectors_timestamp_seconds", {"mode": "full"}
        )
        return v is not None and v > 0

    def _rankers_published(self) -> bool:
        return all(
            (self.children.metric(f"train-{arm}", "lumstream_ranker_version") or 0) > 0
            for arm in ARMS[:2]
        )

    def _services_ready(self) -> bool:
        for port in self.ports.values():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status != 200:
                        return False
            except OSError:
                return False
        return True

    def _monitoring(self) -> LocalMonitoring | None:
        if not self.opts.monitor:
            return None
        from monitoring.rules import rule_files, scaled_rule_files
        from monitoring.stack import LocalMonitoring, MonitorPlan

        state = self.root / "monitor"
        rules = scaled_rule_files(
            rule_files(), RULES_FACTOR, state / "rules", min_range_s=10.0, min_for_s=3.0
        )
        plan = MonitorPlan.of(
            self.cfg.monitor,
            state,
            self.layout.metrics_discovery,
            rules=rules,
            scrape_interval_s=1.0,
            evaluation_interval_s=1.0,
            discovery_refresh_s=1.0,
            group_wait_s=1.0,
            group_interval_s=5.0,
        )
        mon = LocalMonitoring(plan).start()
        print(
            f"  monitor    Prometheus {mon.prometheus_url} (rules on a {RULES_FACTOR:g}x clock), "
            f"Alertmanager {mon.alertmanager_url}",
            flush=True,
        )
        return mon

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> bool:
        mon = None
        try:
            mon = self._monitoring()
            self._start()
            result = self._live()
            ok = self._summary(result, mon)
        finally:
            codes = self.children.stop()
            if mon is not None:
                mon.stop()
        bad = {n: c for n, c in codes.items() if c not in (0, None)}
        if bad:
            print(f"lumstream demo: children exited badly: {bad}", file=sys.stderr)
        return ok and not bad

    def _live(self) -> LoopResult:
        from lumstream.pipeline.simulated_users import Arm, ClosedLoop, LoopOptions
        from streams.generator.world import World

        world: World = self.stream.world
        arms = [Arm(a, f"http://127.0.0.1:{self.ports[a]}") for a in ARMS[:2]]
        arms.append(Arm("popularity"))
        loop_opts = LoopOptions(rate=self.opts.rate, seed=self.cfg.generator.seed)
        drift_after = self.opts.duration_s / 2 if self.opts.drift else None
        loop = ClosedLoop(world, arms, arms[0].url or "", loop_opts, self.prior, drift_after)
        print(
            f"live       {self.opts.duration_s:.0f} s: {world.n_users:,} users split at random "
            f"between {', '.join(ARMS)}; top {loop_opts.k} of {loop_opts.candidates} candidates "
            f"shown, position p examined with probability 1/(1+p)"
            + (f"; tastes shift at {drift_after:.0f} s" if drift_after is not None else ""),
            flush=True,
        )
        done = threading.Event()
        printer = threading.Thread(target=self._progress, args=(loop, done), daemon=True)
        printer.start()
        try:
            return loop.run(self.opts.duration_s)
        finally:
            done.set()
            printer.join()

    def _progress(self, loop: object, done: threading.Event) -> None:
        from lumstream.pipeline.simulated_users import ClosedLoop

        assert isinstance(loop, ClosedLoop)
        while not done.wait(10.0):
            self.children.check()
            with loop.lock:
                parts = [
                    f"{name} {s.ctr:.2%} ({s.requests:,} req)"
                    for name, s in loop.result.arms.items()
                ]
            elapsed = time.time() - loop.result.started
            print(f"  [{elapsed:5.0f}s] served CTR  " + "   ".join(parts), flush=True)

    # -- the summary ----------------------------------------------------------------------------
    def _auc_series(self, mon: LocalMonitoring | None, result: LoopResult) -> dict[str, Series]:
        from lumstream.pipeline.report import Series
        from monitoring.alerts import ApiError, query_range

        out: dict[str, Series] = {}
        if mon is None:
            return out
        for arm in ARMS[:2]:
            url = self.children.metrics_url(f"train-{arm}")
            if url is None:
                continue
            instance = url.split("/")[2]
            s = Series(arm)
            try:
                got = query_range(
                    mon.prometheus_url,
                    f'lumstream_ranker_progressive{{metric="auc",instance="{instance}"}}',
                    result.started,
                    result.ended,
                    2.0,
                )
            except ApiError:
                got = []
            for _, values in got:
                s.times += [t for t, _ in values]
                s.values += [v for _, v in values]
            out[arm] = s
        return out

    def _version_lag(self) -> list[float]:
        """Seconds from a sample's event time to the publication of the first version
        that learned it (the trainers' histogram, as the summary's means)."""
        out = []
        for arm in ARMS[:2]:
            total = self.children.metric(
                f"train-{arm}", "lumstream_ranker_sample_to_version_seconds_sum"
            )
            count = self.children.metric(
                f"train-{arm}", "lumstream_ranker_sample_to_version_seconds_count"
            )
            if total is not None and count:
                out.append(total / count)
        return out

    def _summary(self, result: LoopResult, mon: LocalMonitoring | None) -> bool:
        from lumstream.pipeline.report import percentiles, write_report
        from lumstream.pipeline.simulated_users import ctr_interval
        from monitoring.alerts import ApiError, fired_alerts

        print("summary")
        print(f"  {'arm':<11} {'requests':>9} {'errors':>7} {'impressions':>12} {'clicks':>8} "
              f"{'CTR':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'randomized':>11}")
        for name, s in result.arms.items():
            p50, p99, p999 = percentiles(s.latencies_ms)
            print(
                f"  {name:<11} {s.requests:>9,} {s.errors:>7,} {s.impressions:>12,} {s.clicks:>8,} "
                f"{s.ctr:>7.2%} {p50:>8.1f} {p99:>8.1f} {p999:>9.1f} {s.randomized:>11,}"
            )
        lifts = {}
        for a, b in (("lum", "no_lum"), ("no_lum", "popularity"), ("lum", "popularity")):
            lift, lo, hi = ctr_interval(result.arms[a], result.arms[b])
            lifts[f"{a}_over_{b}"] = (lift, lo, hi)
            print(f"  CTR lift {a} over {b}: {lift:+.1%} [95% over users {lo:+.1%}, {hi:+.1%}]")
        print("  (the LUM paper's online A/B: +2.9% CTR of LUM over its production baseline)")
        fresh = result.freshness_s
        if fresh:
            p50, p99 = percentiles(fresh, (50, 99))
            print(
                f"  freshness  click posted -> in that user's served history: p50 {p50 * 1000:.0f} ms, "
                f"p99 {p99 * 1000:.0f} ms ({len(fresh)} probes, {result.probe_timeouts} timed out)"
            )
        lag = self._version_lag()
        if lag:
            print(
                "  freshness  sample event time -> a published ranker version that learned it: "
                + ", ".join(f"{a} mean {v:.1f} s" for a, v in zip(ARMS, lag, strict=False))
            )
        print(
            f"  events     {result.events_posted:,} posted to POST /v1/events, "
            f"{result.events_rejected:,} rejected"
        )
        alerts: list[str] = []
        if mon is not None:
            try:
                fired = fired_alerts(mon.prometheus_url, result.started - 60.0)
            except ApiError as exc:
                fired = []
                print(f"  alerts     Prometheus did not answer: {exc}")
            alerts = [a.line(result.started) for a in fired]
            print(f"  alerts     {len(alerts)} fired" + (":" if alerts else ""))
            for line in alerts:
                print(f"    {line}")
        png = write_report(
            self.root / "report.png",
            result,
            self._auc_series(mon, result),
            lag,
            alerts,
            10.0,
        )
        (self.root / "report.json").write_text(
            json.dumps(
                {
                    "options": asdict(self.opts),
                    "arms": {
                        n: {
                            "requests": s.requests,
                            "errors": s.errors,
                            "impressions": s.impressions,
                            "clicks": s.clicks,
                            "ctr": s.ctr,
                            "latency_ms_p50_p99_p999": percentiles(s.latencies_ms),
                        }
                        for n, s in result.arms.items()
                    },
                    "lifts": lifts,
                    "freshness_click_to_history_s": percentiles(fresh, (50, 99)),
                    "sample_to_version_mean_s": lag,
                    "alerts": alerts,
                },
                indent=2,
            )
        )
        print(f"  report     {png} (and {self.root / 'report.json'})")
        served = sum(s.requests - s.errors for s in result.arms.values())
        return served > 0 and all(s.errors == 0 for s in result.arms.values())
