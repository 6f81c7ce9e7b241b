"""The HTTP side: one aiohttp application per worker process over a :class:`RankService`.

Each request is admitted or refused at once: at most ``serving.max_inflight`` requests are
admitted per process, the next gets an immediate 503 with ``Retry-After`` (never an
unbounded queue). Admitted requests are scored on the process's single scoring thread
(torch then uses ``serving.torch_threads`` threads), so the event loop stays free to
refuse, to answer health checks and to enforce the deadline: a request not answered
within ``serving.deadline_ms`` gets a 504 (and is dropped from the scoring queue when it
has not started), never a late 200.

Every error is a JSON :class:`~serving.api.ErrorBody` with a precise ``detail``, counted
in ``lumstream_serving_request_seconds{endpoint,status}`` and, when refused before
scoring, ``lumstream_serving_rejected{reason}``.

Extra routes are added to the application :func:`make_app` returns (e.g. an events
endpoint); after a ranking response is built, ``on_served(request, response)`` is called
(synchronously: it must not block; schedule I/O with ``asyncio.create_task``).

Example:
    >>> app = make_app(service, cfg, metrics)  # doctest: +SKIP
    >>> web.run_app(app, host=cfg.host, port=cfg.port, reuse_port=True)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitoring.metrics import Metrics
from serving.api import ENCODER, ErrorBody, Health, RankRequest, RankResponse, decode_rank, validate
from serving.api import openapi as openapi_doc
from serving.config import ServingConfig
from serving.service import RankService, Refused

log = logging.getLogger(__name__)

# after a list is built, before it is sent: returns the list to send (None: unchanged)
OnServed = Callable[[RankRequest, RankResponse], RankResponse | None]
SERVICE_KEY: web.AppKey[RankService] = web.AppKey("service", RankService)
JSON = "application/json"


class _Expired(Exception):
    """The deadline passed while the request waited for the scoring thread."""


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON, headers=headers)


def _error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return _json(ENCODER.encode(ErrorBody(code, detail)), status, headers)


class RankHandler:
    """``POST /v1/rank`` with admission, deadline, metrics and the ``on_served`` hook."""

    def __init__(
        self,
        service: RankService,
        cfg: ServingConfig,
        metrics: Metrics,
        executor: concurrent.futures.ThreadPoolExecutor,
        on_served: OnServed | None,
    ) -> None:
        self.service, self.cfg, self.metrics = service, cfg, metrics
        self.executor, self.on_served = executor, on_served
        self.inflight = 0

    def _refuse(self, reason: str, status: int, code: str, detail: str, **kw: str) -> web.Response:
        self.metrics.serving_rejected.labels(reason=reason).inc()
        return _error(status, code, detail, kw or None)

    async def handle(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        status = "error"
        if self.inflight >= self.cfg.max_inflight:
            resp = self._refuse(
                "overload",
                503,
                "overloaded",
                f"{self.inflight} requests in flight (serving.max_inflight); retry later",
                **{"Retry-After": str(self.cfg.retry_after_s)},
            )
            self._done("overloaded", t0)
            return resp
        self.inflight += 1
        self.metrics.serving_inflight.inc()
        try:
            resp, status = await self._handle(request, t0)
            return resp
        except Exception:
            log.exception("serving: request failed")
            return _error(500, "error", "internal error (logged)")
        finally:
            self.inflight -= 1
            self.metrics.serving_inflight.dec()
            self._done(status, t0)

    def _done(self, status: str, t0: float) -> None:
        self.metrics.serving_request_seconds.labels(endpoint="rank", status=status).observe(
            time.perf_counter() - t0
        )

    async def _handle(self, request: web.Request, t0: float) -> tuple[web.Response, str]:
        limit = self.cfg.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            detail = (
                f"body of {request.content_length} bytes exceeds serving.max_body_bytes={limit}"
            )
            return self._refuse("invalid", 413, "too_large", detail), "bad_request"
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            detail = f"body exceeds serving.max_body_bytes={limit}"
            return self._refuse("invalid", 413, "too_large", detail), "bad_request"
        try:
            req = decode_rank(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return self._refuse("invalid", 400, "bad_request", str(exc)), "bad_request"
        problem = validate(req, self.cfg.max_candidates, self.cfg.max_id_chars)
        if problem is not None:
            return self._refuse("invalid", 400, "bad_request", problem), "bad_request"
        self.metrics.serving_candidates.metric.observe(len(req.candidates))
        deadline = t0 + self.cfg.deadline_ms / 1000.0
        try:
            fut = self.executor.submit(self._score, req, deadline)
            remaining = max(deadline - time.perf_counter(), 0.0)
            result = await asyncio.wait_for(asyncio.wrap_future(fut), remaining)
        except (TimeoutError, _Expired):
            detail = f"not answered within serving.deadline_ms={self.cfg.deadline_ms:g}"
            return self._refuse("deadline", 504, "deadline", detail), "overloaded"
        except Refused as exc:
            status = "bad_request" if exc.status < 500 else "error"
            return _error(exc.status, exc.code, exc.detail), status
        if self.on_served is not None:
            try:
                result = self.on_served(req, result) or result
            except Exception:
                log.exception("serving: on_served hook failed (the response is still sent)")
        return _json(ENCODER.encode(result)), "ok"

    def _score(self, req: RankRequest, deadline: float) -> RankResponse:
        if time.perf_counter() >= deadline:  # waited past its deadline: do not score it
            raise _Expired
        return self.service.rank(req)


def make_app(
    service: RankService,
    cfg: ServingConfig,
    metrics: Metrics,
    *,
    on_served: OnServed | None = None,
) -> web.Application:
    """The service's application: /v1/rank, /v1/models, /openapi.json, /healthz, /readyz
    and /metrics (this process's registry). Add routes to it before it starts."""
    app = web.Application(client_max_size=cfg.max_body_bytes)
    app[SERVICE_KEY] = service
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lumstream-score")
    rank = RankHandler(service, cfg, metrics, executor, on_served)
    spec = ENCODER.encode(openapi_doc())

    async def models(_: web.Request) -> web.Response:
        return _json(ENCODER.encode(service.models()))

    async def openapi(_: web.Request) -> web.Response:
        return _json(spec)

    async def healthz(_: web.Request) -> web.Response:
        return _json(ENCODER.encode(Health("ok")))

    async def readyz(_: web.Request) -> web.Response:
        # the stores are only touched from the scoring thread; when it is busy for long,
        # answer from what is already open
        try:
            why = await asyncio.wait_for(
                asyncio.wrap_future(executor.submit(service.check_ready)), 1.0
            )
        except TimeoutError:
            why = service.not_ready()
        if why is None:
            return _json(ENCODER.encode(Health("ready")))
        return _json(ENCODER.encode(Health("not_ready", why)), 503)

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def stop_executor(_: web.Application) -> None:
        executor.shutdown(wait=True, cancel_futures=False)

    app.router.add_post("/v1/rank", rank.handle)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.on_cleanup.append(stop_executor)
    return app
