"""An asyncio producer that awaits each record's acknowledgement (for request handlers).

:class:`streams.kafka.producer.Producer` settles deliveries in bulk (no callback per
record): right for pipelines that flush a whole batch. A request handler that must answer
"Kafka has *your* events" while other requests produce concurrently needs each record's
own delivery report; this one asks librdkafka for them and resolves one asyncio future
per record (on the event loop, from librdkafka's poll thread). Same librdkafka settings as
:func:`streams.kafka.librdkafka.librdkafka_producer_config` (acks=all, murmur2
partitioner, bounded queue), with every delivery reported.

Example:
    >>> producer = AckedProducer(KafkaConfig(), "127.0.0.1:9092")  # doctest: +SKIP
    >>> await producer.send_all("lum.events", [(b"user-7", b"{...}")], timeout_s=5)
    ... # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from typing import Any

from monitoring.metrics import Metrics
from streams.config import KafkaConfig
from streams.kafka.librdkafka import librdkafka_producer_config

log = logging.getLogger(__name__)

_POLL_S = 0.05


class NotAcknowledged(RuntimeError):
    """Records were refused, failed, or not acknowledged in time (Kafka unavailable)."""


def _settle(fut: asyncio.Future[None], err: Any) -> None:
    if fut.done():  # the caller gave up (timeout) already
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(NotAcknowledged(str(err)))


class AckedProducer:
    """Produce records and await their acknowledgements, one future per record.

    Construction does not contact the cluster (a service starts while Kafka is down and
    answers 503 until it is back).

    Args:
        cfg: client id, request timeout and the largest record.
        bootstrap: ``host:port[,host:port]``.
        metrics: ``events_produced{topic, source}`` on acknowledgement,
            ``produce_errors{topic}`` on failure.
        overrides: librdkafka properties, an underscore for a dot (``linger_ms=1``).
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        bootstrap: str,
        *,
        metrics: Metrics,
        source: str = "http",
        **overrides: Any,
    ) -> None:
        from confluent_kafka import Producer as RdProducer

        self.metrics = metrics
        self.source = source
        self.max_record_bytes = cfg.max_message_bytes
        conf = librdkafka_producer_config(cfg, bootstrap)
        conf["delivery.report.only.error"] = False  # every record's own report
        conf |= {k.replace("_", "."): v for k, v in overrides.items()}
        conf["logger"] = log
        self._rd = RdProducer(conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="acked-producer", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._rd.poll(_POLL_S)  # runs the delivery callbacks

    @staticmethod
    def _report(
        loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None], err: Any, _: Any
    ) -> None:
        # a closed loop raises RuntimeError: nobody waits for this record any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, fut, err)

    async def send_all(
        self, topic: str, pairs: list[tuple[bytes | None, bytes]], *, timeout_s: float
    ) -> None:
        """Produce ``(key, value)`` records; return once Kafka acknowledged every one.

        Raises:
            NotAcknowledged: a record was refused or failed, or ``timeout_s`` passed (the
                records may still arrive later: a retry is then a harmless duplicate).
        """
        from confluent_kafka import KafkaException

        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        report = self._report
        try:
            for key, value in pairs:
                fut: asyncio.Future[None] = loop.create_future()
                futures.append(fut)
                self._rd.produce(
                    topic, value, key, on_delivery=functools.partial(report, loop, fut)
                )
        except (BufferError, KafkaException) as exc:  # queue full or refused
            for fut in futures:
                fut.cancel()
            self.metrics.produce_errors.labels(topic=topic).inc(len(pairs))
            raise NotAcknowledged(f"{topic}: not queued: {exc}") from exc
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), timeout_s
            )
        except TimeoutError:
            self.metrics.produce_errors.labels(topic=topic).inc(len(pairs))
            raise NotAcknowledged(
                f"{topic}: {len(pairs)} record(s) not acknowledged within {timeout_s} s"
            ) from None
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            self.metrics.produce_errors.labels(topic=topic).inc(len(failed))
            raise NotAcknowledged(
                f"{topic}: {len(failed)} of {len(pairs)} record(s) failed: {failed[0]}"
            )
        self.metrics.events_produced.labels(topic=topic, source=self.source).inc(len(pairs))

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout_s``), then stop."""
        self._rd.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout=10)
        if len(self._rd):
            self._rd.purge()
            self._rd.poll(0)
