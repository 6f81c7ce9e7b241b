"""The closed loop's processes on one machine: the embedded broker, a replayed history,
``lumstream worker``, ``lumstream backbone refresh``, two ``lumstream train`` (with and
without LUM features), two ``lumstream serve`` and a local Prometheus + Alertmanager,
each a child process reading one generated config file (the demo and
``bench/freshness.py`` run on it).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.settings import ConfigError

if TYPE_CHECKING:
    from lumstream.config import Config
    from lumstream.pipeline.children import Children
    from monitoring.config import DriftConfig
    from monitoring.stack import LocalMonitoring
    from streams.generator import ClickStream

ARMS = ("lum", "no_lum", "popularity")
LABEL_WINDOW_S = 10.0  # a served impression's sample is learned this soon after it
RULES_FACTOR = 120.0  # the alert rules' clock: a drift alert's for: 15m becomes 7.5 s
SHOWN = 10  # items a simulated user is shown per request (LoopOptions.k)
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
        return cls(duration_s=60.0, rate=20.0, history_events=40_000, publish_every_s=5.0)


@contextlib.contextmanager
def local_pipeline(
    cfg: Config, opts: DemoOptions, rankers: tuple[str, ...] = ARMS[:2]
) -> Iterator[Pipeline]:
    """The broker, the history and every process of the loop, started, for the ``with``
    block; everything stopped after it. ``rankers``: which ranker arms (``lum``,
    ``no_lum``) get a trainer and a service."""
    from monitoring.metrics import default_metrics
    from streams.kafka.broker import EmbeddedBroker
    from streams.kafka.topics import ensure_topics

    root = cfg.layout.demo
    shutil.rmtree(root, ignore_errors=True)  # the embedded broker starts empty: so does the store
    root.mkdir(parents=True)
    with EmbeddedBroker(cfg.broker, default_metrics(), log_dir=root / "logs") as broker:
        print(f"  broker     {broker.bootstrap} (embedded tansu, in memory)")
        cfg = _demo_config(cfg, opts, root, broker.bootstrap)
        ensure_topics(cfg.kafka, broker.bootstrap)
        stream = _stream(cfg, opts)
        prior, history_end_ms = _history(cfg, root, stream)
        pipeline = Pipeline(cfg, opts, root, stream, prior, history_end_ms, rankers)
        try:
            pipeline.start()
            yield pipeline
        finally:
            pipeline.stop()


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
            click_delay_mean_s=2.0,  # the live users click at once: a short label window fits
        ),
        worker=replace(cfg.worker, label_window_s=LABEL_WINDOW_S),
        store=replace(cfg.store, snapshot_every_s=0.0),
        backbone=replace(
            cfg.backbone, condition_fields=("cond",), epochs=min(cfg.backbone.epochs, 3)
        ),
        refresh=replace(
            cfg.refresh,
            cadence_s=10 * 365 * 86_400.0,  # one full refresh (v1), then incremental passes
            incremental_every_s=opts.incremental_every_s,
        ),
        ranker=ranker,
        drift=_drift(cfg, opts),
        metrics=replace(cfg.metrics, enabled=True, port=0),
    )


def _drift(cfg: Config, opts: DemoOptions) -> DriftConfig:
    """Drift references taken from the live loop before the users' tastes shift: the
    history's samples are another traffic (lists the generator showed, samples from before
    any vector existed), so comparing live samples with them would flag that difference,
    not the shift. The trainers learn the history (one sample per impression),
    then the first quarter of the live loop, and the next version carries the reference
    of its newest samples: all live, all before the shift."""
    live_per_s = opts.rate * SHOWN
    reference = max(int(live_per_s * opts.duration_s * 0.25), 500)
    return replace(
        cfg.drift,
        warmup_samples=int(
            _samples_per_event(opts.ctr, cfg.generator.purchase_prob) * opts.history_events
        )
        + reference,
        reference_samples=reference,
        window=max(reference // 2, 250),
    )


def _samples_per_event(ctr: float, purchase_prob: float) -> float:
    """Impressions (samples) per event of the generator: a click per impression with
    probability ``ctr``, a purchase after a click with ``purchase_prob``."""
    return 1.0 / (1.0 + ctr * (1.0 + purchase_prob))


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


class Pipeline:
    """The loop's processes (see :func:`local_pipeline`)."""

    def __init__(
        self,
        cfg: Config,
        opts: DemoOptions,
        root: Path,
        stream: ClickStream,
        prior: np.ndarray,
        history_end_ms: int,
        rankers: tuple[str, ...] = ARMS[:2],
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
        self.rankers = rankers
        self.mon: LocalMonitoring | None = None

    def start(self) -> None:
        """Monitoring first (it sees every process from its start), then the worker, the
        backbone, the trainers and the services, each once the one before is ready."""
        self.mon = self._monitoring()
        self._start()

    def stop(self) -> dict[str, int | None]:
        """Every process stopped (services first); their exit codes."""
        codes = self.children.stop()
        if self.mon is not None:
            self.mon.stop()
        return codes

    def url(self, arm: str) -> str:
        """The base URL of an arm's ranking service."""
        return f"http://127.0.0.1:{self.ports[arm]}"

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
        print(
            f"  worker     ingested the history into {self.layout.data_dir / 'store'}", flush=True
        )
        c.start("backbone", ["backbone", "refresh"])
        print("  backbone   training v1 on the history (then incremental passes) ...", flush=True)
        c.wait("backbone v1 and its vectors", self._vectors_written, 600)
        print("  backbone   v1 published, every user's condition-query vectors written", flush=True)
        for arm in self.rankers:
            c.start(f"train-{arm}", ["train"], self._ranker_sets(arm))
        c.wait("the rankers' first versions", self._rankers_published, 600)
        print(
            f"  trainers   {', '.join(self.rankers)}: first versions published; a new one every "
            f"{self.opts.publish_every_s:g} s",
            flush=True,
        )
        for arm in self.rankers:
            port = free_port("127.0.0.1")
            self.ports[arm] = port
            sets = [*self._ranker_sets(arm), f"serving.port={port}", "serving.workers=1"]
            sets += [f"explore.share={self.opts.explore_share}", f"explore.seed={len(self.ports)}"]
            sets.append(f"served_log.spool_dir={self.root / 'data' / 'served-spool' / arm}")
            c.start(f"serve-{arm}", ["serve"], sets)
        c.wait("the ranking services", self._services_ready, 180)
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
            for arm in self.rankers
        )

    def _services_ready(self) -> bool:
        from serving.client import RankClient

        for arm in self.ports:
            try:
                with RankClient(self.url(arm), 2.0) as c:
                    if c.ready().status != "ready":
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
