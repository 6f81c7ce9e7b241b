"""The service's processes: a small supervisor and its worker processes.

Each worker process is a whole service (its own :class:`~serving.service.RankService`,
stores' secondary readers, version watcher, scoring thread, /metrics endpoint registered
for discovery) listening on the same port with ``SO_REUSEPORT``, so the kernel spreads
connections over the workers and every core is used without a proxy. Torch uses
``serving.torch_threads`` threads per worker.

The supervisor (:func:`supervise`) starts ``serving.workers`` workers (spawned: nothing
of the parent's threads or locks leaks into them), restarts one that dies, and on stop
sends SIGTERM to each: a worker then stops accepting, lets its in-flight requests finish
(up to ``serving.shutdown_grace_s``) and exits. A worker dies with its supervisor
(``PR_SET_PDEATHSIG``), so none outlives it, even when the supervisor is SIGKILLed.

Extra routes and the ``on_served`` hook reach worker processes through ``hooks``: the
import path ``module:function`` of a function ``(service, metrics) -> AppHooks``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from core.processes import free_port
from monitoring.config import MetricsConfig
from monitoring.metrics import Metrics
from serving.api import RankRequest, RankResponse
from serving.app import OnServed, make_app
from serving.config import ServingConfig
from serving.loop import LoopSpec, ServedLoop
from serving.service import RankService, ServicePaths
from streams.config import KafkaConfig, StoreConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppHooks:
    """What a ``hooks`` function gives a worker's application."""

    on_served: OnServed | None = None
    add_routes: Callable[[web.Application], None] | None = None


@dataclass(frozen=True)
class ServeSpec:
    """Everything a worker process needs (plain dataclasses: sent to spawned processes).

    Args:
        serving / store: the service's and the sequence store's settings.
        history_len: ``worker.history_len`` (the history a sample carries).
        paths: the stores and the versions.
        metrics / discovery_dir: each worker's /metrics endpoint and where it registers.
        kafka / bootstrap: where lum.model-updates is (None: only the directory is polled).
        hooks: ``module:function`` returning :class:`AppHooks` (empty: none).
        loop: the closed loop's pieces in every worker (exploration, the served-list log,
            ``POST /v1/events``; docs/serving.md); None: none of them.
    """

    serving: ServingConfig
    store: StoreConfig
    history_len: int
    paths: ServicePaths
    metrics: MetricsConfig
    discovery_dir: Path | None = None
    kafka: KafkaConfig | None = None
    bootstrap: str | None = None
    hooks: str = ""
    loop: LoopSpec | None = None


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


def _load_hooks(path: str, service: RankService, metrics: Metrics) -> AppHooks:
    module, _, name = path.partition(":")
    fn = getattr(importlib.import_module(module), name)
    hooks = fn(service, metrics)
    if not isinstance(hooks, AppHooks):
        raise TypeError(f"{path} returned {type(hooks).__name__}, not AppHooks")
    return hooks


def build_app(
    spec: ServeSpec, service: RankService, metrics: Metrics, worker: int = 0
) -> web.Application:
    """The worker's application. Its ``on_served`` steps, in order: the loop's exploration
    (``spec.loop``), the spec's hooks, and last the loop's record of the list exactly as it
    is sent. A step that fails is logged and skipped (the list stays what it was)."""
    loop = ServedLoop(spec.loop, metrics, worker) if spec.loop is not None else None
    hooks = _load_hooks(spec.hooks, service, metrics) if spec.hooks else AppHooks()
    steps: list[OnServed] = []
    if loop is not None:
        steps.append(loop.explore)
    if hooks.on_served is not None:
        steps.append(hooks.on_served)

    def on_served(req: RankRequest, resp: RankResponse) -> RankResponse:
        for step in steps:
            try:
                resp = step(req, resp) or resp
            except Exception:
                log.exception("serving: an on_served step failed (the list is sent as it was)")
        if loop is not None:
            loop.record(req, resp)
        return resp

    app = make_app(service, spec.serving, metrics, on_served=on_served if steps or loop else None)
    if loop is not None:
        loop.add_routes(app)
    if hooks.add_routes is not None:
        hooks.add_routes(app)
    return app


def worker_main(spec: ServeSpec, index: int, parent: int) -> None:
    """One worker process: serve until SIGTERM/SIGINT, then finish in-flight requests."""
    _die_with_parent()
    if os.getppid() != parent:
        return
    logging.basicConfig(level=logging.INFO, format=f"serve[{index}] %(levelname)s %(message)s")
    import torch

    from monitoring.metrics import default_metrics
    from monitoring.server import metrics_endpoint

    torch.set_num_threads(spec.serving.torch_threads)
    metrics = default_metrics()
    cfg = spec.serving
    with metrics_endpoint(
        spec.metrics, metrics.registry, role="serve", discovery_dir=spec.discovery_dir
    ):
        service = RankService(cfg, spec.store, spec.history_len, spec.paths, metrics)
        stop = threading.Event()
        try:
            service.watcher.check()
            service.watch(stop, spec.kafka, spec.bootstrap)
            web.run_app(
                build_app(spec, service, metrics, index),
                host=cfg.host,
                port=cfg.port,
                reuse_port=True,
                shutdown_timeout=cfg.shutdown_grace_s,
                print=None,
                handle_signals=True,
                access_log=None,
            )
        finally:
            stop.set()
            service.close()


def worker_count(cfg: ServingConfig) -> int:
    return cfg.workers or (os.cpu_count() or 1)


def resolved(spec: ServeSpec) -> ServeSpec:
    """``spec`` with a concrete port (0 picks a free one, shared by all workers) and, with
    several workers, /metrics endpoints on free ports (one each)."""
    serving = spec.serving
    if serving.port == 0:
        serving = dataclasses.replace(serving, port=free_port(serving.host))
    metrics = spec.metrics
    if worker_count(serving) > 1 and metrics.port != 0:
        metrics = dataclasses.replace(metrics, port=0)
    return dataclasses.replace(spec, serving=serving, metrics=metrics)


def supervise(
    spec: ServeSpec,
    stop: threading.Event,
    on_start: Callable[[str], None] | None = None,
) -> int:
    """Run the workers until ``stop`` is set; restart any that dies. Returns 0.

    Args:
        spec: resolved (:func:`resolved`): a concrete port.
        on_start: called with the service URL once the workers are started.
    """
    ctx = multiprocessing.get_context("spawn")
    n = worker_count(spec.serving)
    me = os.getpid()

    def start(i: int) -> multiprocessing.process.BaseProcess:
        p = ctx.Process(target=worker_main, args=(spec, i, me), name=f"lumstream-serve-{i}")
        p.start()
        return p

    procs = [start(i) for i in range(n)]
    if on_start is not None:
        on_start(f"http://{spec.serving.host}:{spec.serving.port}")
    restarts = [0.0] * n
    try:
        while not stop.wait(0.2):
            for i, p in enumerate(procs):
                if not p.is_alive() and time.monotonic() - restarts[i] > 1.0:
                    log.warning("serve: worker %d exited (code %s); restarting it", i, p.exitcode)
                    restarts[i] = time.monotonic()
                    procs[i] = start(i)
    finally:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(spec.serving.shutdown_grace_s + 10)
            if p.is_alive():
                p.kill()
                p.join(5)
    return 0
