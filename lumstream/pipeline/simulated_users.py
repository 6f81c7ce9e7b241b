"""Simulated users in a closed loop with the ranking service (the demo's live traffic).

Each page view draws a user by activity, the condition they browse and candidate items of
that condition (:meth:`streams.generator.world.World.page_views`). The user's arm decides
who orders the candidates: a ranking service (``lum``, ``no_lum``) through ``POST
/v1/rank``, or the client itself by observed popularity (``popularity``: items ordered by
the clicks seen so far). The top ``k`` are shown; the user examines position ``p`` (from 0)
with probability ``(1 + p) ** -position_decay`` and clicks an examined item with the
world's ground-truth probability, so top positions get clicks whatever their order
(position bias). Clicks go back through ``POST /v1/events`` with the request id; the
popularity arm posts its impressions there too (the services log their own served lists).

Requests follow a fixed schedule (open loop): latency runs from the scheduled time, so a
slow service cannot hide queueing. Users are assigned to arms at random, once, with the
same share per arm.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import queue
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import orjson

from streams.generator.world import World

POPULARITY = "popularity"
HTTP_ERRORS = (http.client.HTTPException, ValueError)  # a broken connection or body


class LoopError(RuntimeError):
    """The loop cannot run (a service does not answer at all)."""


@dataclass(frozen=True)
class Arm:
    """One policy of the experiment.

    Args:
        name: shown in the summary (``lum``, ``no_lum``, ``popularity``).
        url: the ranking service's base URL; None for the popularity policy.
    """

    name: str
    url: str | None = None


@dataclass(frozen=True)
class LoopOptions:
    """How the simulated users behave.

    Args:
        rate: page views (ranking requests) per second, on a fixed schedule.
        candidates: candidate items per request.
        k: items shown (the top of the ranked list).
        position_decay: examination probability ``(1 + position) ** -position_decay``.
        threads: concurrent clients (requests in flight at most).
        bucket_s: width of the time buckets of the CTR series.
        probe_share: share of clicks whose arrival in the served history is probed.
        click_delay_s: how long after a list is shown its clicks are posted (a click
            must reach lum.events after the served list's impressions to be joined).
        seed: random seed of the users' draws and arm assignment.
    """

    rate: float = 40.0
    candidates: int = 30
    k: int = 10
    position_decay: float = 1.0
    threads: int = 6
    bucket_s: float = 10.0
    probe_share: float = 0.05
    click_delay_s: float = 1.0
    seed: int = 1


@dataclass
class ArmStats:
    """What one arm served and what it earned."""

    requests: int = 0
    errors: int = 0
    impressions: int = 0
    clicks: int = 0
    randomized: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    buckets: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    clicks_by_user: dict[int, list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0])
    )
    versions: dict[str, float] = field(default_factory=dict)  # ranker version -> first served

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else float("nan")


@dataclass
class LoopResult:
    """The run's figures (see :class:`ClosedLoop`)."""

    arms: dict[str, ArmStats]
    started: float
    ended: float = 0.0
    drift_at: float | None = None
    events_posted: int = 0
    events_rejected: int = 0
    freshness_s: list[float] = field(default_factory=list)
    probe_timeouts: int = 0
    served: list[tuple[str, int, int]] = field(default_factory=list)  # arm, user, time (ms)


class JsonHttp:
    """One keep-alive connection per thread to one host."""

    def __init__(self, base: str, timeout_s: float) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout_s = timeout_s
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: object) -> tuple[int, dict[str, object]]:
        """POST ``body`` as JSON; the status and the decoded answer."""
        return self._request("POST", path, orjson.dumps(body))

    def get(self, path: str) -> tuple[int, dict[str, object]]:
        return self._request("GET", path, None)

    def _request(self, method: str, path: str, data: bytes | None) -> tuple[int, dict[str, object]]:
        for attempt in range(2):  # one retry on a connection the server closed
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                self.conn.request(method, path, data, {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                raw = resp.read()
                return resp.status, (orjson.loads(raw) if raw else {})
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


class ClosedLoop:
    """Simulated users against the arms; :meth:`run` until ``duration_s`` has passed.

    Args:
        world: the generator's ground truth (tastes, click model).
        arms: the policies; users are split between them at random.
        events_url: the service that takes ``POST /v1/events``.
        opts: the users' behaviour.
        popularity_prior: (items,) click counts the popularity arm starts from (e.g. the
            history's).
        drift_after_s: seconds into the run after which the users' tastes shift (None: no
            shift).
    """

    def __init__(
        self,
        world: World,
        arms: list[Arm],
        events_url: str,
        opts: LoopOptions,
        popularity_prior: np.ndarray | None = None,
        drift_after_s: float | None = None,
    ) -> None:
        self.world, self.arms, self.events_url, self.opts = world, arms, events_url, opts
        self.drift_after_s = drift_after_s
        rng = np.random.default_rng(opts.seed)
        self.arm_of_user = rng.permutation(world.n_users) % len(arms)
        counts = np.zeros(world.n_items, dtype=np.float64)
        if popularity_prior is not None:
            counts += popularity_prior
        self.popularity = counts
        self.lock = threading.Lock()
        self.result = LoopResult({a.name: ArmStats() for a in arms}, started=time.time())
        self.stop = threading.Event()
        # clicks waiting to be posted: (due, tie, user, events, probe)
        self.clicks: list[tuple[float, int, int, list[dict[str, object]], bool]] = []
        self.order = itertools.count()

    # -- one page view -----------------------------------------------------------------------
    def _order(
        self, arm: Arm, http: dict[str, JsonHttp], user: int, cond: int, items: np.ndarray
    ) -> tuple[list[int], str, bool, dict[str, object]]:
        """The shown items in order, the request id, whether the order was randomised, and
        the service's answer (empty for the popularity arm)."""
        request_id = uuid.uuid4().hex
        if arm.url is None:
            with self.lock:
                scores = self.popularity[items]
            order = items[np.argsort(-scores, kind="stable")][: self.opts.k]
            return [int(i) for i in order], request_id, False, {}
        body = {
            "user_id": str(user),
            "condition": World.condition_name(cond),
            "candidates": [
                {"item_id": str(int(i)), "category": World.condition_name(cond)} for i in items
            ],
            "k": self.opts.k,
            "request_id": request_id,
        }
        status, answer = http[arm.name].post("/v1/rank", body)
        if status != 200:
            raise LoopError(f"{arm.name}: POST /v1/rank answered {status}: {answer}")
        shown = [int(str(it["item_id"])) for it in answer["items"]]  # type: ignore[attr-defined]
        return shown, request_id, bool(answer.get("randomized", False)), answer

    def _view(self, rng: np.random.Generator, http: dict[str, JsonHttp], scheduled: float) -> None:
        drifted = self.drift_after_s is not None and (
            scheduled - self.result.started >= self.drift_after_s
        )
        users, conds, items = self.world.page_views(rng, 1, self.opts.candidates, drifted)
        user, cond = int(users[0]), int(conds[0])
        cands = items[0][items[0] >= 0]
        arm = self.arms[int(self.arm_of_user[user])]
        stats = self.result.arms[arm.name]
        try:
            shown, request_id, randomized, answer = self._order(arm, http, user, cond, cands)
        except (LoopError, OSError, *HTTP_ERRORS) as exc:
            with self.lock:
                stats.requests += 1
                stats.errors += 1
                stats.latencies_ms.append((time.time() - scheduled) * 1000.0)
                first = stats.errors == 1
            if first:
                print(f"  {arm.name}: a request failed: {exc}", flush=True)
            return
        latency_ms = (time.time() - scheduled) * 1000.0
        probs = self.world.click_prob(user, np.asarray(shown), cond, drifted)
        examine = (1.0 + np.arange(len(shown))) ** -self.opts.position_decay
        clicked = rng.random(len(shown)) < examine * probs
        now_ms = int(time.time() * 1000)
        category = World.condition_name(cond)
        if arm.url is None:  # the services log their own lists; the client logs this one
            self._post(
                http,
                [
                    _event(
                        f"{request_id}-{p}",
                        user,
                        item,
                        "impression",
                        category,
                        now_ms,
                        request_id,
                        p,
                    )
                    for p, item in enumerate(shown)
                ],
            )
        clicks = [
            _event(f"{request_id}-c{p}", user, item, "click", category, 0, request_id, p)
            for p, item in enumerate(shown)
            if clicked[p]
        ]
        bucket = int((scheduled - self.result.started) // self.opts.bucket_s)
        with self.lock:
            stats.requests += 1
            stats.impressions += len(shown)
            stats.clicks += int(clicked.sum())
            stats.randomized += int(randomized)
            stats.latencies_ms.append(latency_ms)
            self.result.served.append((arm.name, user, now_ms))
            b = stats.buckets[bucket]
            b[0] += len(shown)
            b[1] += int(clicked.sum())
            u = stats.clicks_by_user[user]
            u[0] += len(shown)
            u[1] += int(clicked.sum())
            for p, item in enumerate(shown):
                if clicked[p]:
                    self.popularity[item] += 1.0
            version = answer.get("ranker_version")
            if version is not None and str(version) not in stats.versions:
                stats.versions[str(version)] = time.time()
        if clicks:
            probe = arm.url is not None and rng.random() < self.opts.probe_share
            due = time.time() + self.opts.click_delay_s
            with self.lock:
                heapq.heappush(self.clicks, (due, next(self.order), user, clicks, probe))

    def _post(self, http: dict[str, JsonHttp], events: list[dict[str, object]]) -> bool:
        try:
            status, answer = http["events"].post("/v1/events", events)
        except (OSError, *HTTP_ERRORS):
            status, answer = 0, {}
        ok = status in (200, 202)
        with self.lock:
            if ok:
                self.result.events_posted += len(events)
            else:
                self.result.events_rejected += len(events)
                if self.result.events_rejected == len(events):
                    print(f"  POST /v1/events answered {status}: {answer}", flush=True)
        return ok

    def _poster(self, probes: queue.Queue[tuple[int, float] | None], done: threading.Event) -> None:
        """Post each view's clicks ``click_delay_s`` after it was shown (with the time of
        posting as their event time), then hand a sample of them to the prober."""
        conns = self._connections()
        try:
            while True:
                with self.lock:
                    head = self.clicks[0] if self.clicks else None
                    if head is not None and head[0] <= time.time():
                        heapq.heappop(self.clicks)
                if head is None:
                    if done.is_set():
                        return
                    time.sleep(0.01)
                    continue
                if head[0] > time.time():
                    time.sleep(min(0.01, head[0] - time.time()))
                    continue
                _, _, user, clicks, probe = head
                now_ms = int(time.time() * 1000)
                for ev in clicks:
                    ev["ts"] = now_ms
                if self._post(conns, clicks) and probe:
                    probes.put((user, now_ms / 1000.0))
        finally:
            for c in conns.values():
                c.close()

    # -- the schedule -------------------------------------------------------------------------
    def run(self, duration_s: float) -> LoopResult:
        """Send page views on the schedule for ``duration_s``; the figures."""
        start = time.time()
        self.result.started = start
        if self.drift_after_s is not None:
            self.result.drift_at = start + self.drift_after_s
        n = int(duration_s * self.opts.rate)
        jobs: queue.Queue[float | None] = queue.Queue()
        for i in range(n):
            jobs.put(start + i / self.opts.rate)
        probes: queue.Queue[tuple[int, float] | None] = queue.Queue()
        threads = [
            threading.Thread(target=self._client, args=(t, jobs, probes), daemon=True)
            for t in range(self.opts.threads)
        ]
        for _ in threads:
            jobs.put(None)
        prober = threading.Thread(target=self._prober, args=(probes,), daemon=True)
        prober.start()
        clicks_done = threading.Event()
        poster = threading.Thread(target=self._poster, args=(probes, clicks_done), daemon=True)
        poster.start()
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:  # also on Ctrl-C: every thread of the loop ends before it returns
            clicks_done.set()
            poster.join()
            probes.put(None)
            prober.join()  # each probe gives up after 5 s
            self.stop.set()
        self.result.ended = time.time()
        return self.result

    def _connections(self) -> dict[str, JsonHttp]:
        conns = {a.name: JsonHttp(a.url, 10.0) for a in self.arms if a.url is not None}
        conns["events"] = JsonHttp(self.events_url, 30.0)
        return conns

    def _client(
        self,
        index: int,
        jobs: queue.Queue[float | None],
        probes: queue.Queue[tuple[int, float] | None],
    ) -> None:
        rng = np.random.default_rng([self.opts.seed, index])
        conns = self._connections()
        try:
            while (scheduled := jobs.get()) is not None and not self.stop.is_set():
                delay = scheduled - time.time()
                if delay > 0:
                    time.sleep(delay)
                self._view(rng, conns, scheduled)
        finally:
            for c in conns.values():
                c.close()

    def _prober(self, probes: queue.Queue[tuple[int, float] | None]) -> None:
        """For a sample of clicks: ask the user's service for the user's history until the
        click is in it; the time from posting the click to seeing it served."""
        conns = self._connections()
        try:
            while (probe := probes.get()) is not None:
                user, posted = probe
                arm = self.arms[int(self.arm_of_user[user])]
                got = self._probe(conns[arm.name], user, posted)
                with self.lock:
                    if got is None:
                        self.result.probe_timeouts += 1
                    else:
                        self.result.freshness_s.append(got)
        finally:
            for c in conns.values():
                c.close()

    @staticmethod
    def _probe(conn: JsonHttp, user: int, posted: float, timeout_s: float = 5.0) -> float | None:
        posted_ms = int(posted * 1000)
        while time.time() - posted < timeout_s:
            with contextlib.suppress(OSError, *HTTP_ERRORS):
                status, answer = conn.post(
                    "/v1/rank",
                    {"user_id": str(user), "candidates": [{"item_id": "0"}], "k": 1, "log": False},
                )
                newest = answer.get("history_ts") if status == 200 else None
                if isinstance(newest, int) and newest >= posted_ms:
                    return time.time() - posted
            time.sleep(0.02)
        return None


def _event(
    event_id: str,
    user: int,
    item: int,
    action: str,
    category: str,
    ts: int,
    request_id: str,
    position: int,
) -> dict[str, object]:
    return {
        "event_id": event_id,
        "user_id": str(user),
        "item_id": str(item),
        "action": action,
        "condition": category,
        "ts": ts,
        "features": {"category": category, "request_id": request_id, "position": position},
    }


def ctr_interval(
    stats: ArmStats, base: ArmStats, draws: int = 500, seed: int = 0
) -> tuple[float, float, float]:
    """The relative CTR lift of ``stats`` over ``base`` and its 95% interval, bootstrapped
    over users (each arm's users resampled with all their impressions)."""
    rng = np.random.default_rng(seed)

    def arrays(s: ArmStats) -> tuple[np.ndarray, np.ndarray]:
        rows = np.array(list(s.clicks_by_user.values()), dtype=np.float64).reshape(-1, 2)
        return rows[:, 0], rows[:, 1]

    (ia, ca), (ib, cb) = arrays(stats), arrays(base)
    if ia.sum() == 0 or ib.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    lift = (ca.sum() / ia.sum()) / max(cb.sum() / ib.sum(), 1e-12) - 1.0
    out = []
    for _ in range(draws):
        a = rng.integers(0, ia.size, ia.size)
        b = rng.integers(0, ib.size, ib.size)
        ctr_b = cb[b].sum() / max(ib[b].sum(), 1.0)
        out.append((ca[a].sum() / max(ia[a].sum(), 1.0)) / max(ctr_b, 1e-12) - 1.0)
    lo, hi = np.percentile(out, [2.5, 97.5])
    return float(lift), float(lo), float(hi)
