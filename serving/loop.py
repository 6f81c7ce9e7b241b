"""The closed loop inside one service worker process: exploration, the served-list log
and ``POST /v1/events`` (docs/serving.md, "Closing the loop").

:class:`ServedLoop` gives the worker's application two ``on_served`` steps — first
:meth:`ServedLoop.explore` (a share of lists reordered at random, :mod:`serving.explore`),
last :meth:`ServedLoop.record` (every list exactly as sent, to the spool of
:class:`~serving.served_log.ServedLog`: one write, shipped to lum.events in the background)
— and the events route (:func:`serving.events_http.add_event_routes`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
from aiohttp import web

from monitoring.metrics import Metrics
from serving.api import NO_CONDITION, RankRequest, RankResponse, as_text
from serving.explore import Explorer
from serving.loop_config import EventsApiConfig, ExploreConfig, ServedLogConfig
from serving.served_log import ServedList, ServedLog, spool_path
from streams.config import EventConfig, KafkaConfig


@dataclass(frozen=True)
class LoopSpec:
    """The loop's settings in a service worker (plain dataclasses: sent to spawned
    processes).

    Args:
        served_log / events_api / explore: their sections.
        events: the event contract (limits) of what is logged and accepted.
        kafka / bootstrap: where lum.events is.
        data_dir: ``paths.data_dir`` (the spools' default home).
    """

    served_log: ServedLogConfig
    events_api: EventsApiConfig
    explore: ExploreConfig
    events: EventConfig
    kafka: KafkaConfig
    bootstrap: str
    data_dir: Path


class ServedLoop:
    """One worker's loop pieces (see the module doc).

    Args:
        spec: the settings.
        metrics: this process's metrics.
        worker: the worker's index (its spool is ``w<worker>``: a restarted worker ships
            its predecessor's backlog).
    """

    def __init__(self, spec: LoopSpec, metrics: Metrics, worker: int) -> None:
        self.spec, self.metrics = spec, metrics
        self.explorer = Explorer(spec.explore, metrics)
        self.log: ServedLog | None = None
        if spec.served_log.enabled:
            self.log = ServedLog(
                spec.served_log,
                spool_path(spec.served_log, spec.data_dir, worker),
                spec.kafka,
                spec.bootstrap,
                spec.events,
                metrics=metrics,
            )

    def explore(self, request: RankRequest, response: RankResponse) -> RankResponse:
        """The list reordered at random when the request explores (not for ``log: false``
        reads: no user sees them)."""
        if not request.log:
            return response
        items, randomized = self.explorer.apply(response.request_id, response.items)
        if randomized:
            response = msgspec.structs.replace(response, items=items, randomized=True)
        return response

    def record(self, request: RankRequest, response: RankResponse) -> None:
        """The list as it is sent, to the served log (unless ``log: false``)."""
        if self.log is None or not request.log:
            return
        self.log.log(
            ServedList(
                request_id=response.request_id,
                user_id=as_text(request.user_id),
                condition=NO_CONDITION if request.condition is None else as_text(request.condition),
                items=[it.item_id for it in response.items],
                categories=[it.category for it in response.items],
                ranker_version=response.ranker_version,
                backbone_version=response.backbone_version or "",
                randomized=response.randomized,
                ts_ms=time.time_ns() // 1_000_000,
            )
        )

    def add_routes(self, app: web.Application) -> None:
        """``POST /v1/events``, and the served log closed (its backlog flushed as far as
        ``served_log.drain_s`` allows) when the application stops."""
        from serving.events_http import add_event_routes

        add_event_routes(
            app,
            self.spec.events_api,
            self.spec.kafka,
            self.spec.bootstrap,
            self.spec.events,
            metrics=self.metrics,
        )

        async def close_log(_: web.Application) -> None:
            if self.log is not None:
                self.log.close()

        app.on_cleanup.append(close_log)
