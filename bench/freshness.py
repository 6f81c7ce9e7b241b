"""Freshness of the closed loop, end to end, beside the running pipeline.

Starts the demo's processes (:func:`lumstream.pipeline.stack.local_pipeline`: the
embedded broker, a replayed history, ``lumstream worker``, ``backbone refresh`` with
incremental passes, ``train`` with LUM features, ``serve``), then an open-loop client
(events on a fixed schedule; each latency runs from the scheduled time) measures:

- **click → served history**: a simulated user is shown an item and clicks it; both
  events go to ``POST /v1/events``; the client then asks ``POST /v1/rank`` for that user
  until the served history holds the click (``history_ts`` of the answer);
- **sample → served version**: the event time of that impression against the first
  moment ``GET /v1/models`` shows a loaded ranker version whose data watermark is past it
  (the impression's sample is emitted when its label window closes, learned, published
  and hot-swapped);
- **served user vectors' age**: request time minus the newest event the served user
  vectors summarise (the service's ``lumstream_vectors_age_seconds{consumer="serving"}``);

and, in the same run, the worker's event-to-store latency (the floor of the first).

    python bench/freshness.py                   # 60 s at 5 clicks/s
    python bench/freshness.py --duration 120 --click-rate 10 --json
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine
from lumstream.config import load
from lumstream.pipeline.children import Children
from lumstream.pipeline.simulated_users import JsonHttp
from lumstream.pipeline.stack import DemoOptions, Pipeline, local_pipeline
from streams.generator.world import World


def _buckets(
    children: Children, name: str, metric: str, labels: dict[str, str]
) -> dict[float, float]:
    """A child's Prometheus histogram: cumulative count per upper bound."""
    buckets: dict[float, float] = {}
    for s in children.scrape(name):
        if s.name == f"{metric}_bucket" and all(s.labels.get(k) == v for k, v in labels.items()):
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
    return buckets


def _quantiles(
    buckets: dict[float, float], before: dict[float, float] | None = None
) -> list[float]:
    """p50 and p99 of a histogram (linear within a bucket); ``before``: an earlier snapshot
    of it, subtracted (the observations in between)."""
    if before:
        buckets = {le: n - before.get(le, 0.0) for le, n in buckets.items()}
    if not buckets:
        return [float("nan")] * 2
    edges = sorted(buckets)
    counts = np.array([buckets[e] for e in edges])
    total = counts[-1]
    out = []
    for q in (0.5, 0.99):
        if total <= 0:
            out.append(float("nan"))
            continue
        i = int(np.searchsorted(counts, q * total))
        lo = edges[i - 1] if i > 0 else 0.0
        hi = edges[i] if np.isfinite(edges[i]) else lo
        below = counts[i - 1] if i > 0 else 0.0
        frac = (q * total - below) / max(counts[i] - below, 1e-12)
        out.append(float(lo + (hi - lo) * frac))
    return out


class Freshness:
    """The open-loop client (see the module doc)."""

    def __init__(self, pipeline: Pipeline, rate: float, threads: int, seed: int) -> None:
        self.p, self.rate, self.threads = pipeline, rate, threads
        self.world: World = pipeline.stream.world
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()
        self.click_to_history: list[float] = []
        self.history_timeouts = 0
        self.impressions: list[int] = []  # event times (ms)
        self.watermarks: list[tuple[float, int]] = []  # (seen at, data watermark ms)
        self.errors = 0

    def _one(self, conn: JsonHttp, scheduled: float, user: int, item: int, cond: int) -> None:
        ts = int(scheduled * 1000)
        name = World.condition_name(cond)
        eid = f"fresh-{user}-{ts}"
        events = [
            {
                "event_id": f"{eid}-i",
                "user_id": str(user),
                "item_id": str(item),
                "action": "impression",
                "condition": name,
                "ts": ts,
                "features": {"category": name},
            },
            {
                "event_id": f"{eid}-c",
                "user_id": str(user),
                "item_id": str(item),
                "action": "click",
                "condition": name,
                "ts": ts + 1,
                "features": {"category": name},
            },
        ]
        status, answer = conn.post("/v1/events", events)
        if status not in (200, 202):
            with self.lock:
                self.errors += 1
                if self.errors == 1:
                    print(f"POST /v1/events answered {status}: {answer}", flush=True)
            return
        with self.lock:
            self.impressions.append(ts)
        deadline = scheduled + 10.0
        body = {"user_id": str(user), "candidates": [{"item_id": str(item)}], "k": 1, "log": False}
        while time.time() < deadline:
            status, answer = conn.post("/v1/rank", body)
            seen = answer.get("history_ts") if status == 200 else None
            if isinstance(seen, int) and seen >= ts + 1:
                with self.lock:
                    self.click_to_history.append(time.time() - scheduled)
                return
            time.sleep(0.005)
        with self.lock:
            self.history_timeouts += 1

    def _tick(self, conn: JsonHttp) -> None:
        """One impression of a random user (moves that partition's event time on)."""
        _, conds, items = self.world.page_views(self.rng, 1, 1)
        user, ts = int(self.rng.integers(self.world.n_users)), int(time.time() * 1000)
        name = World.condition_name(int(conds[0]))
        event = {
            "event_id": f"tick-{user}-{ts}",
            "user_id": str(user),
            "item_id": str(int(items[0, 0])),
            "action": "impression",
            "condition": name,
            "ts": ts,
            "features": {"category": name},
        }
        conn.post("/v1/events", [event])

    def _client(self, jobs: queue.Queue[tuple[float, int, int, int] | None]) -> None:
        conn = JsonHttp(self.p.url("lum"), 10.0)
        try:
            while (job := jobs.get()) is not None:
                scheduled, user, item, cond = job
                delay = scheduled - time.time()
                if delay > 0:
                    time.sleep(delay)
                try:
                    self._one(conn, scheduled, user, item, cond)
                except OSError:
                    with self.lock:
                        self.errors += 1
        finally:
            conn.close()

    def _models(self, stop: threading.Event) -> None:
        conn = JsonHttp(self.p.url("lum"), 10.0)
        try:
            while not stop.wait(0.1):
                status, answer = conn.get("/v1/models")
                loaded = answer.get("loaded") if status == 200 else None
                if isinstance(loaded, dict) and loaded.get("data_watermark_ms") is not None:
                    self.watermarks.append((time.time(), int(loaded["data_watermark_ms"])))
        finally:
            conn.close()

    def run(self, duration_s: float, drain_s: float) -> None:
        users = self.rng.integers(0, self.world.n_users, int(duration_s * self.rate) + 1)
        start = time.time() + 0.5
        jobs: queue.Queue[tuple[float, int, int, int] | None] = queue.Queue()
        for i, user in enumerate(users):
            _, conds, items = self.world.page_views(self.rng, 1, 1)
            jobs.put((start + i / self.rate, int(user), int(items[0, 0]), int(conds[0])))
        for _ in range(self.threads):
            jobs.put(None)
        stop = threading.Event()
        watcher = threading.Thread(target=self._models, args=(stop,), daemon=True)
        watcher.start()
        clients = [threading.Thread(target=self._client, args=(jobs,)) for _ in range(self.threads)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        # the last impressions still need their label window and a published version; a
        # window closes only when later events move its partition's event time on, so
        # other users keep browsing (not measured) until then
        deadline = time.time() + drain_s
        conn = JsonHttp(self.p.url("lum"), 10.0)
        try:
            while time.time() < deadline:
                if (
                    self.watermarks
                    and self.impressions
                    and self.watermarks[-1][1] >= max(self.impressions)
                ):
                    break
                self._tick(conn)
                time.sleep(0.2)
        finally:
            conn.close()
        stop.set()
        watcher.join()

    def sample_to_version(self) -> tuple[list[float], int]:
        """Per impression: seconds from its event time to the first poll that showed a
        loaded version past it; and how many never got one."""
        seen = sorted(self.watermarks)
        out, missing = [], 0
        for ts in self.impressions:
            got = next((t for t, wm in seen if wm >= ts), None)
            if got is None:
                missing += 1
            else:
                out.append(got - ts / 1000.0)
        return out, missing


def _pct(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of clicks (default 60)")
    ap.add_argument("--click-rate", type=float, default=5.0, help="clicks per second (default 5)")
    ap.add_argument(
        "--history", type=int, default=40_000, help="events of history (default 40,000)"
    )
    ap.add_argument(
        "--publish-every", type=float, default=5.0, help="trainer checkpoint cadence (s)"
    )
    ap.add_argument("--threads", type=int, default=4, help="concurrent clients (default 4)")
    ap.add_argument(
        "--drain", type=float, default=90.0, help="seconds to wait for the last versions"
    )
    ap.add_argument("--data-dir", default="data/bench-freshness", help="where the run's state goes")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = ap.parse_args()

    cfg = load(overrides={"paths": {"data_dir": args.data_dir}})
    opts = replace(
        DemoOptions(),
        history_events=args.history,
        publish_every_s=args.publish_every,
        monitor=False,
        drift=False,
        explore_share=0.0,
    )
    started = time.time()
    store_metric = "lumstream_worker_event_to_store_seconds"
    age_metric, serving = "lumstream_vectors_age_seconds", {"consumer": "serving"}
    with local_pipeline(cfg, opts, rankers=("lum",)) as pipeline:
        children = pipeline.children
        store_before = _buckets(children, "worker", store_metric, {})
        age_before = _buckets(children, "serve-lum", age_metric, serving)
        bench = Freshness(pipeline, args.click_rate, args.threads, seed=3)
        bench.run(args.duration, args.drain)
        store = _quantiles(_buckets(children, "worker", store_metric, {}), store_before)
        vec_age = _quantiles(_buckets(children, "serve-lum", age_metric, serving), age_before)
        worker_cfg = pipeline.cfg.worker
    s2v, never = bench.sample_to_version()
    c2h = _pct(bench.click_to_history)
    s2v_p = _pct(s2v)
    result = {
        "config": {
            "duration_s": args.duration,
            "click_rate": args.click_rate,
            "history_events": args.history,
            "publish_every_s": args.publish_every,
            "label_window_s": worker_cfg.label_window_s,
            "threads": args.threads,
        },
        "machine": machine(),
        "click_to_history_s": {
            "n": len(bench.click_to_history),
            "p50": c2h[0],
            "p99": c2h[1],
            "timeouts": bench.history_timeouts,
        },
        "sample_to_served_version_s": {
            "n": len(s2v),
            "p50": s2v_p[0],
            "p99": s2v_p[1],
            "never": never,
        },
        "served_vector_age_s": {"p50": vec_age[0], "p99": vec_age[1]},
        "worker_event_to_store_s": {"p50": store[0], "p99": store[1]},
        "errors": bench.errors,
        "wall_s": round(time.time() - started, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m, c = result["machine"], result["config"]
    print(f"freshness: {c}")
    print(f"machine: {m}")
    print(f"  {'what':<48} {'n':>6} {'p50':>10} {'p99':>10}  goal")
    print(
        f"  {'click posted -> in the served history':<48} {len(bench.click_to_history):>6} "
        f"{c2h[0] * 1000:>8.0f} ms {c2h[1] * 1000:>7.0f} ms  p99 <= 1 s "
        f"({bench.history_timeouts} timed out)"
    )
    print(
        f"  {'  floor: worker event -> store commit':<48} {'':>6} {store[0] * 1000:>8.0f} ms "
        f"{store[1] * 1000:>7.0f} ms"
    )
    print(
        f"  {'sample event time -> served version learned it':<48} {len(s2v):>6} "
        f"{s2v_p[0]:>9.1f} s {s2v_p[1]:>8.1f} s  p99 <= 60 s ({never} never)"
    )
    print(f"  {'served user vectors age':<48} {'':>6} {vec_age[0]:>9.1f} s {vec_age[1]:>8.1f} s")
    print(f"  errors {bench.errors}; wall {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
