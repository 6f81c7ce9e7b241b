"""Drift and latency alerts in a real Prometheus, end to end.

A stream worker and a ranker trainer run as real ``lumstream`` processes against the
embedded broker, each serving /metrics on a free port and registering it in a discovery
directory. A local Prometheus (the project's rules on a clock 120 times faster: a drift
alert's ``for: 15m`` is 7.5 s) and an Alertmanager routing to a webhook here watch them.
The generator streams a small world (60 users, 16 categories) and, part-way, re-draws every
user's interests (``generator.drift_at``, ``drift_share=1``):

1. before the shift nothing may be pending or firing; after it the ranker's drift alert
   goes pending, then firing, and Alertmanager posts it to the webhook;
2. then the worker is made slow (stopped 4 s out of every 6 with SIGSTOP while events keep
   coming): the event-to-store latency alert fires and is posted;
3. every dashboard panel's query runs against this Prometheus; :func:`fired_alerts` reads
   back what fired, when and why.

It prints the measured times (drift start -> firing, slowness -> firing) and the series
each process exported, for the issue note.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.dashboard import panel_exprs
from support.paths import REPO
from support.ranker import set_args
from support.webhook import Webhook

from embeddings.config import EmbeddingsConfig
from monitoring.alerts import ApiError, api, fired_alerts, query, query_range
from monitoring.metrics import Metrics
from monitoring.rules import rule_files, scaled_rule_files
from monitoring.stack import LocalMonitoring, MonitorPlan
from streams.config import GeneratorConfig, KafkaConfig
from streams.generator import ClickStream
from streams.generator.pacing import TokenBucket
from streams.kafka.producer import Producer
from trainer.ranker.config import RankerConfig

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FACTOR = 120  # the rules' clock: for: 15m -> 7.5 s, rate(...[30m]) -> 15 s
RATE = 5_000  # events per second
EVENTS = 600_000  # more than the test sends: it stops the generator itself
DRIFT_AT = 0.25  # the shift after 150,000 events, about 30 s in
DRIFT_ALERTS = ("LumstreamRankerScoreDrift", "LumstreamRankerFeatureDrift")
LATENCY_ALERT = "LumstreamEventToStoreSlow"
GEN = GeneratorConfig(
    users=60,
    items=1_000,
    categories=16,
    base_ctr=0.1,
    slate_size=5,
    seed=3,
    events=EVENTS,
    drift_at=DRIFT_AT,
    drift_share=1.0,
)
RANKER = RankerConfig(
    lum_features="off",
    history_len=5,
    batch_size=256,
    mlp=(16,),
    attention_hidden=8,
    log_every=2,
    checkpoint_every_s=2.0,
    keep_checkpoints=2,
    keep_versions=2,
)
EMB = EmbeddingsConfig(dim=8, user_rows=256, item_rows=2048, cond_rows=64, cat_rows=64)
DRIFT = ["drift.window=10000", "drift.reference_samples=10000", "drift.warmup_samples=40000"]


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


class Processes:
    """lumstream commands as child processes; stopped with SIGINT (then SIGKILL)."""

    def __init__(self, root: Path) -> None:
        self.root, self.procs = root, {}  # type: ignore[var-annotated]

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUMSTREAM_")}
        env["PYTHONPATH"] = str(REPO)
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "lumstream.cli", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def check(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{self.log(name)}"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def generator(kafka: KafkaConfig) -> Iterator[dict[str, float]]:
    """Stream GEN's events at RATE until the block ends; ``info["drift"]`` is the wall time
    the first event with shifted interests was sent."""
    info: dict[str, float] = {}
    stop = threading.Event()
    stream = ClickStream(GEN)

    def run() -> None:
        bucket = TokenBucket(RATE)
        with Producer(kafka, kafka.bootstrap_servers, metrics=Metrics(CollectorRegistry())) as p:
            for pairs in stream.pair_batches(batch_size=500):
                if stop.is_set():
                    break
                bucket.acquire(len(pairs))
                if "drift" not in info and stream.stats.drift_ts_ms is not None:
                    info["drift"] = time.time()
                p.send_many(kafka.topic_events, pairs, source="test")
                info["sent"] = float(stream.stats.events)
            p.flush()

    thread = threading.Thread(target=run, name="e2e-generator", daemon=True)
    info["started"] = time.time()
    thread.start()
    try:
        yield info
    finally:
        stop.set()
        thread.join(timeout=30)


def _wait(what: str, check: object, timeout_s: float, procs: Processes) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check()
        got = check()  # type: ignore[operator]
        if got:
            return got
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _firing(url: str, names: tuple[str, ...]) -> list[dict[str, object]]:
    return [
        a
        for a in api(url, "/api/v1/alerts")["alerts"]
        if a["labels"]["alertname"] in names and a["state"] == "firing"
    ]


def _first(url: str, names: tuple[str, ...], state: str, start: float, end: float) -> float | None:
    """The first evaluation at which one of ``names`` was in ``state``."""
    regex = "|".join(names)
    got = query_range(url, f'ALERTS{{alertname=~"{regex}", alertstate="{state}"}}', start, end, 1)
    times = [t for _, values in got for t, _ in values]
    return min(times) if times else None


def test_drift_and_latency_alerts_fire_in_a_real_prometheus(
    kafka_cfg: KafkaConfig, tmp_path: Path
) -> None:
    discovery = tmp_path / "run" / "metrics"
    rules = scaled_rule_files(
        rule_files(), FACTOR, tmp_path / "rules", min_range_s=10.0, min_for_s=3.0
    )
    common = _sets(
        f"paths.data_dir={tmp_path}",
        f"kafka.bootstrap_servers={kafka_cfg.bootstrap_servers}",
        f"kafka.topic_events={kafka_cfg.topic_events}",
        f"kafka.topic_samples={kafka_cfg.topic_samples}",
        f"kafka.topic_deadletter={kafka_cfg.topic_deadletter}",
        f"kafka.topic_model_updates={kafka_cfg.topic_model_updates}",
        "worker.history_len=5",
        *DRIFT,
    )
    hook = Webhook()
    plan = MonitorPlan(
        state_dir=tmp_path / "monitor",
        webhooks=(hook.url,),
        discovery_dir=discovery,
        rules=rules,
        scrape_interval_s=1.0,
        evaluation_interval_s=1.0,
        discovery_refresh_s=1.0,
        group_wait_s=1.0,
        group_interval_s=2.0,
        repeat_interval_s=3600.0,
    )
    procs = Processes(tmp_path)
    with hook, LocalMonitoring(plan) as mon:
        prom = mon.prometheus_url
        t0 = time.time()
        try:
            worker = procs.start("worker", [*common, "worker", "--quiet", "--group", "e2e"])
            procs.start(
                "trainer",
                [
                    *common,
                    *set_args("ranker", RANKER),
                    *set_args("embeddings", EMB),
                    "train",
                    "--threads",
                    "1",
                ],
            )
            _wait(
                "the worker's partitions and the trainer's histogram in Prometheus",
                lambda: (
                    query(prom, 'lumstream_worker_partitions_owned{role="worker"} > 0')
                    and query(prom, 'lumstream_ranker_scores_count{role="trainer"}')
                ),
                120,
                procs,
            )
            with generator(kafka_cfg) as gen:
                _wait("the shift", lambda: "drift" in gen, 120, procs)
                drift = gen["drift"]
                refs = query(prom, "lumstream_ranker_reference_timestamp_seconds > 0", drift)
                assert refs, "the trainer had no drift reference before the shift: raise EVENTS"
                _wait("a drift alert firing", lambda: _firing(prom, DRIFT_ALERTS), 90, procs)
                # 2. the worker made slow: stopped 4 s out of every 6
                slow_from = time.time()
                deadline = slow_from + 90
                try:
                    while not _firing(prom, (LATENCY_ALERT,)) and time.time() < deadline:
                        worker.send_signal(signal.SIGSTOP)
                        time.sleep(4)
                        worker.send_signal(signal.SIGCONT)
                        time.sleep(2)
                        procs.check()
                finally:
                    worker.send_signal(signal.SIGCONT)
                latency_fired = time.time()
                assert _firing(prom, (LATENCY_ALERT,)), "no latency alert under injected slowness"
            end = time.time()
            # 1. nothing before the shift; pending, then firing, after it
            before = query_range(prom, "ALERTS", t0, drift, 1)
            assert not before, f"alerts before the shift: {[s for s, _ in before]}"
            pending = _first(prom, DRIFT_ALERTS, "pending", t0, end)
            firing = _first(prom, DRIFT_ALERTS, "firing", t0, end)
            assert pending is not None
            assert firing is not None
            assert drift <= pending < firing
            slow_firing = _first(prom, (LATENCY_ALERT,), "firing", slow_from, end)
            assert slow_firing is not None
            # Alertmanager posted both
            _wait(
                "the webhook",
                lambda: (
                    {a["labels"]["alertname"] for a in hook.alerts() if a["status"] == "firing"}
                    >= {LATENCY_ALERT}
                    and any(a["labels"]["alertname"] in DRIFT_ALERTS for a in hook.alerts())
                ),
                30,
                procs,
            )
            # 3. the dashboard's queries, what fired, and the series each process exports
            for where, expr in panel_exprs():
                try:
                    query(prom, expr.replace("$__rate_interval", "10s"))
                except ApiError as exc:
                    pytest.fail(f"{where}: {exc}")
            fired = fired_alerts(prom, since=t0)
            names = {a.name for a in fired}
            assert names & set(DRIFT_ALERTS)
            assert LATENCY_ALERT in names
            for a in fired:
                assert a.annotations.get("summary"), a
                assert "{{" not in a.annotations["summary"], a
            drift_alert = min(
                (a for a in fired if a.name in DRIFT_ALERTS), key=lambda a: a.firing_at
            )
            assert drift_alert.firing_at >= drift
            for series_expr in (
                "lumstream_worker_consumer_lag_seconds",
                "lumstream_ranker_consumer_lag_seconds",
                "lumstream_ranker_sample_to_version_seconds_count > 0",
                "lumstream_worker_event_to_store_seconds_count > 0",
                "lumstream:ranker_calibration:ratio_rate30m",
                'lumstream_ranker_feature_share{feature="new_condition"}',
                "lumstream_ranker_version_timestamp_seconds > 0",
            ):
                assert query(prom, series_expr), f"no {series_expr} in Prometheus"
            series = {
                labels["role"]: int(value)
                for labels, value in query(prom, 'count by (role) ({job="lumstream"})')
            }
            print(
                f"\n[e2e] drift start -> pending {pending - drift:.1f} s, -> firing "
                f"{firing - drift:.1f} s ({drift_alert.name} [{drift_alert.severity}], rule "
                f"for: 15m/{FACTOR} = 7.5 s, PSI over the last 10,000 samples); "
                f"slowness -> {LATENCY_ALERT} firing {slow_firing - slow_from:.1f} s "
                f"(for: 10m/{FACTOR} = 5 s, p99 over rate[5m/{FACTOR} -> 10 s]); "
                f"alerts before the shift: {len(before)} ({drift - refs[0][1]:.0f} s with a "
                f"reference); series per process: {series}; "
                f"events sent {gen.get('sent', 0):,.0f}; test took {end - t0:.0f} s, "
                f"latency phase {latency_fired - slow_from:.0f} s"
            )
            for a in fired:
                print(f"[e2e]   {a.line(t0)}")
        finally:
            procs.stop()
    for name in ("worker", "trainer"):
        assert procs.procs[name].returncode == 0, procs.log(name)
