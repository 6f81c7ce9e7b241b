"""An asyncio producer that awaits each record's acknowledgement (for request handlers).

:class:`streams.kafka.producer.Producer` settles deliveries in bulk (no callback per
record): right for pipelines that flush a whole batch. A request handler that must answer
"Kafka has *your* events" while other requests produce concurrently needs each record's
own delivery report; this one asks librdkafka for them and resolves one asyncio future
per ``send_all`` once the last of its records is reported (one wake-up of the event loop
per request, from librdkafka's poll thread). Same librdkafka settings as
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


class _Pending:
    """The delivery reports of one ``send_all``: one wake-up of the event loop when the
    last report arrives (not one per record)."""

    __slots__ = ("errors", "fut", "loop", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.loop = loop
        self.fut: asyncio.Future[list[str]] = loop.create_future()
        self.remaining = n
        self.errors: list[str] = []

    def report(self, err: Any, _msg: Any) -> None:
        """librdkafka's delivery callback (runs in the thread that polls)."""
        if err is not None:
            self.errors.append(str(err))
        self.remaining -= 1
        if self.remaining == 0:
            # a closed loop raises RuntimeError: nobody waits for these records any more
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if not self.fut.done():  # the caller may have given up (timeout)
            self.fut.set_result(self.errors)


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

    async def send_all(
        self, topic: str, pairs: list[tuple[bytes | None, bytes]], *, timeout_s: float
    ) -> None:
        """Produce ``(key, value)`` records; return once Kafka acknowledged every one.

        Raises:
            NotAcknowledged: a record was refused or failed, or ``timeout_s`` passed (the
                records may still arrive later: a retry is then a harmless duplicate).
        """
        from confluent_kafka import KafkaException

        if not pairs:
            return
        pending = _Pending(asyncio.get_running_loop(), len(pairs))
        report = pending.report
        produce = self._rd.produce
        try:
            for key, value in pairs:
                produce(topic, value, key, on_delivery=report)
        except (BufferError, KafkaException) as exc:  # queue full or refused
            self.metrics.produce_errors.labels(topic=topic).inc(len(pairs))
            raise NotAcknowledged(f"{topic}: not queued: {exc}") from exc
        try:
            errors = await asyncio.wait_for(asyncio.shield(pending.fut), timeout_s)
        except TimeoutError:
            self.metrics.produce_errors.labels(topic=topic).inc(len(pairs))
            raise NotAcknowledged(
                f"{topic}: {pending.remaining} of {len(pairs)} record(s) not acknowledged "
                f"within {timeout_s} s"
            ) from None
        if errors:
            self.metrics.produce_errors.labels(topic=topic).inc(len(errors))
            raise NotAcknowledged(
                f"{topic}: {len(errors)} of {len(pairs)} record(s) failed: {errors[0]}"
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
