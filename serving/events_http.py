"""``POST /v1/events``: live events over HTTP, answered once Kafka has them.

The body is one event or a JSON array of events in the contract of lum.events
(streams/contracts/events.py). Each is validated with the contract's own code; the valid
ones are produced to ``kafka.topic_events`` (key = user id) and the answer waits for
Kafka's acknowledgement of each of them. Nothing is acknowledged before Kafka has it.

Answers (JSON; docs/serving.md, "Closing the loop"):

- ``202`` every event accepted: ``{"accepted": n, "rejected": 0, "results": [...]}``.
- ``400`` some or all events rejected: the same body; each rejected result names the
  ``field``, the ``reason`` (a :class:`streams.contracts.events.Reason`) and a ``detail``.
  The accepted events of a mixed batch *were* produced: re-posting the whole batch is
  harmless, the worker drops a repeated ``event_id`` inside its duplicate window.
- ``400`` / ``413`` the body as a whole: malformed JSON, not an object or array, an empty
  array (``{"error": reason, "detail": ..., "field": null}``); larger than
  ``events_api.max_body_bytes`` or more than ``events_api.max_batch`` events (413).
- ``503`` with ``Retry-After``: Kafka did not acknowledge within
  ``events_api.ack_timeout_s`` (some records may still arrive; a retry is harmless).

Example:
    >>> app = web.Application()
    >>> add_event_routes(app, EventsApiConfig(), KafkaConfig(), "127.0.0.1:9092",
    ...                  EventConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from monitoring.metrics import Metrics
from serving.loop_config import EventsApiConfig
from streams.config import EventConfig, KafkaConfig
from streams.contracts.events import (
    FIELDS,
    EventError,
    Reason,
    encode,
    event_key,
    loads,
    validate,
)
from streams.kafka.acked import AckedProducer, NotAcknowledged

log = logging.getLogger(__name__)

ROUTE = "/v1/events"
PRODUCER_KEY: web.AppKey[AckedProducer] = web.AppKey("events_producer", AckedProducer)
_WHOLE_BODY = {Reason.MALFORMED_JSON, Reason.NON_UTF8, Reason.NON_FINITE, Reason.OVERSIZED}


def error_field(exc: EventError) -> str | None:
    """The field an :class:`EventError` is about (``user_id``, ``features.position``,
    an unknown field's name), or None when it is about the whole event."""
    if exc.reason in _WHOLE_BODY or exc.reason is Reason.NOT_AN_OBJECT:
        return None
    head, sep, _ = exc.detail.partition(":")
    if not sep or " " in head:
        return None
    if head in FIELDS or head.startswith("features") or exc.reason is Reason.UNKNOWN_FIELD:
        return head
    return None


def _json(obj: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers
    )


class EventsHandler:
    """The handler behind :func:`add_event_routes` (one per application).

    Args:
        cfg: body and batch limits, acknowledgement timeout.
        kafka: the topic (``topic_events``).
        events: the event contract.
        metrics: where counts go.
    """

    def __init__(
        self, cfg: EventsApiConfig, kafka: KafkaConfig, events: EventConfig, metrics: Metrics
    ) -> None:
        self.cfg, self.kafka, self.events, self.metrics = cfg, kafka, events, metrics

    def _answer(
        self, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> web.Response:
        self.metrics.events_api_requests.labels(status=str(status)).inc()
        return _json(body, status, headers)

    def _whole(self, status: int, reason: str, detail: str) -> web.Response:
        self.metrics.events_rejected.labels(stage="http", reason=reason).inc()
        body = {"error": reason, "detail": detail, "field": None}
        return self._answer(status, body)

    async def _body(self, request: web.Request) -> bytes | None:
        """The body, or None when it is over the limit."""
        limit = self.cfg.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(65_536):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _check(self, obj: object, now_ms: int) -> tuple[str, bytes, bytes]:
        """One parsed event -> (event_id, key, value); raises EventError."""
        ev = validate(obj, self.events, now_ms)
        value = encode(ev)
        if len(value) > self.events.max_event_bytes:
            raise EventError(
                Reason.OVERSIZED,
                f"{len(value)} bytes, at most {self.events.max_event_bytes} (max_event_bytes)",
            )
        return ev.event_id, event_key(ev), value

    async def handle(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        raw = await self._body(request)
        if raw is None:
            detail = f"body exceeds events_api.max_body_bytes={self.cfg.max_body_bytes}"
            return self._whole(413, Reason.OVERSIZED.value, detail)
        try:
            parsed = loads(raw)
        except EventError as exc:
            return self._whole(400, exc.reason.value, exc.detail)
        batch = isinstance(parsed, list)
        items: list[object] = parsed if isinstance(parsed, list) else [parsed]
        if batch and not items:
            return self._whole(400, "empty_batch", "an empty array: post at least one event")
        if len(items) > self.cfg.max_batch:
            detail = f"{len(items)} events, at most events_api.max_batch={self.cfg.max_batch}"
            return self._whole(413, "batch_too_large", detail)
        if not batch and not isinstance(parsed, dict):
            detail = f"expected an event object or an array of events, got {type(parsed).__name__}"
            return self._whole(400, Reason.NOT_AN_OBJECT.value, detail)
        now_ms = time.time_ns() // 1_000_000
        results: list[dict[str, Any]] = []
        pairs: list[tuple[bytes | None, bytes]] = []
        for index, obj in enumerate(items):
            try:
                event_id, key, value = self._check(obj, now_ms)
            except EventError as exc:
                self.metrics.events_rejected.labels(stage="http", reason=exc.reason.value).inc()
                results.append(
                    {
                        "index": index,
                        "status": "rejected",
                        "reason": exc.reason.value,
                        "field": error_field(exc),
                        "detail": exc.detail,
                    }
                )
                continue
            pairs.append((key, value))
            results.append({"index": index, "status": "accepted", "event_id": event_id})
        rejected = len(items) - len(pairs)
        self.metrics.events_api_events.labels(outcome="rejected").inc(rejected)
        if pairs:
            producer = request.app[PRODUCER_KEY]
            try:
                await producer.send_all(
                    self.kafka.topic_events, pairs, timeout_s=self.cfg.ack_timeout_s
                )
            except NotAcknowledged as exc:
                log.warning("POST %s: %s", ROUTE, exc)
                self.metrics.events_api_events.labels(outcome="unavailable").inc(len(pairs))
                unavailable = {"error": "kafka_unavailable", "detail": str(exc), "field": None}
                retry = {"Retry-After": str(self.cfg.retry_after_s)}
                return self._answer(503, unavailable, retry)
            self.metrics.events_api_events.labels(outcome="accepted").inc(len(pairs))
            self.metrics.events_api_ack_seconds.observe(time.perf_counter() - t0)
        body = {"accepted": len(pairs), "rejected": rejected, "results": results}
        return self._answer(400 if rejected else 202, body)


def add_event_routes(
    app: web.Application,
    cfg: EventsApiConfig,
    kafka: KafkaConfig,
    bootstrap: str,
    events: EventConfig,
    *,
    metrics: Metrics | None = None,
    **producer_overrides: Any,
) -> EventsHandler:
    """Add ``POST /v1/events`` to ``app``; its Kafka producer lives with the app (started
    on startup, flushed and closed on cleanup).

    Args:
        producer_overrides: librdkafka properties for the producer (``linger_ms=1``).
    """
    if metrics is None:
        from monitoring.metrics import default_metrics

        metrics = default_metrics()
    handler = EventsHandler(cfg, kafka, events, metrics)

    async def producer_ctx(app: web.Application) -> AsyncIterator[None]:
        producer = AckedProducer(kafka, bootstrap, metrics=metrics, **producer_overrides)
        app[PRODUCER_KEY] = producer
        yield
        producer.close()

    app.cleanup_ctx.append(producer_ctx)
    app.router.add_post(ROUTE, handler.handle)
    return handler
