"""A fast, thread-safe, synchronous Kafka producer: aiokafka's batch API on a background loop.

Measured into tansu 0.6.0 on the 2-core dev machine (~170-byte events, 4 partitions):
kafka-python 3.0 ``send`` ≈ 8k msg/s (it builds records in pure Python), aiokafka ``send``
≈ 45k msg/s, aiokafka ``create_batch``/``send_batch`` (C record builder) well over 100k
msg/s. This module wraps the last one so synchronous code (generator, importers, tools)
gets its speed; docs/broker.md has the numbers.

Example:
    >>> with Producer(KafkaConfig(), "127.0.0.1:9092") as p:  # doctest: +SKIP
    ...     p.send("lum.events", b"user-7", b"{...}", source="demo")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from monitoring.metrics import Metrics
from streams.config import KafkaConfig

log = logging.getLogger(__name__)

Header = tuple[str, bytes]
# (key, value, headers or None, timestamp ms or None): one queued record
_Record = tuple[bytes | None, bytes, list[Header] | None, int | None]
_BATCH_BYTES = 256 * 1024  # aiokafka batch size: measured as fast as 1 MiB, less latency
_HASH_CACHE_MAX = 1 << 20


class ProduceError(RuntimeError):
    """Records were not delivered (also counted in ``produce_errors{topic}``)."""


def _murmur2_positive(key: bytes) -> int:
    from aiokafka.partitioner import murmur2

    return int(murmur2(key)) & 0x7FFFFFFF


class Producer:
    """A thread-safe synchronous producer: aiokafka's batch API on a background loop.

    ``send`` only appends to a buffer in the caller's thread; every ``chunk_records``
    records (or ``linger_ms`` after the first) the buffer is handed to the loop, which
    partitions it (murmur2 of the key, as the Java client does; records without a key go
    to one partition per hand-off, round robin), builds record batches in C and sends them
    with acks=all. At most ``max_inflight`` hand-offs are pending; then ``send`` blocks
    (back-pressure). Failed deliveries are counted in ``produce_errors{topic}`` and raised
    by the next :meth:`flush` as :class:`ProduceError`; delivered records with a
    ``source`` count in ``events_produced{topic, source}``.

    Args:
        cfg: client id, request timeout and the largest record (``max_message_bytes``).
        bootstrap: ``host:port[,host:port]``.
        metrics: where to count (default: the process-wide metrics).
        chunk_records: records per hand-off.
        max_inflight: hand-offs in flight before ``send`` blocks.
        linger_ms: longest a buffered record waits for its hand-off.
        overrides: aiokafka ``AIOKafkaProducer`` options (see :func:`make_producer`).

    Example:
        >>> with Producer(KafkaConfig(), "127.0.0.1:9092") as p:  # doctest: +SKIP
        ...     p.send("lum.events", b"user-7", b"{...}", source="demo")
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        bootstrap: str,
        *,
        metrics: Metrics | None = None,
        chunk_records: int = 4096,
        max_inflight: int = 8,
        linger_ms: float = 5.0,
        **overrides: Any,
    ) -> None:
        if metrics is None:
            from monitoring.metrics import default_metrics

            metrics = default_metrics()
        self.metrics = metrics
        self.bootstrap = bootstrap
        self.max_record_bytes = cfg.max_message_bytes
        self.chunk_records = chunk_records
        self.chunk_bytes = 4 * _BATCH_BYTES
        self.max_inflight = max_inflight
        self.linger_s = linger_ms / 1000.0
        self._cond = threading.Condition(threading.Lock())
        self._buffers: dict[tuple[str, str | None], list[_Record]] = {}
        self._buffered = 0
        self._buffered_bytes = 0
        self._inflight = 0
        self._timer_armed = False
        self._failed = 0
        self._first_error: str | None = None
        self._closed = False
        self._hashes: dict[bytes, int] = {}
        self._partitions: dict[str, int] = {}
        self._round_robin = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._order = asyncio.Lock()  # binds to the producer's loop on first use
        # hand-offs in the order their records were taken from the buffer: a delivery task
        # takes the oldest one under ``_order``, whichever task happens to run first
        self._handoffs: deque[tuple[str, str | None, list[_Record]]] = deque()
        options = {
            "bootstrap_servers": bootstrap,
            "client_id": f"{cfg.client_id}-producer",
            "acks": "all",
            "linger_ms": 0,  # batching happens in the buffer above
            "max_batch_size": min(_BATCH_BYTES, cfg.max_message_bytes),
            "max_request_size": cfg.max_message_bytes + 65_536,
            "request_timeout_ms": cfg.request_timeout_ms,
            "enable_idempotence": False,
            "compression_type": None,
        } | overrides
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lumstream-producer", daemon=True
        )
        self._thread.start()
        self._aio: Any = None
        start = asyncio.run_coroutine_threadsafe(self._start(options), self._loop)
        try:
            start.result(timeout=cfg.request_timeout_ms / 1000.0 + 5.0)
        except BaseException as exc:
            self._closed = True
            self._stop_loop()
            raise ProduceError(f"cannot start a producer for {bootstrap}: {exc!r}") from exc

    async def _start(self, options: dict[str, Any]) -> None:
        from aiokafka import AIOKafkaProducer

        self._aio = AIOKafkaProducer(**options)
        try:
            await self._aio.start()
        except BaseException:
            await self._aio.stop()
            raise

    # -- caller side -------------------------------------------------------------------
    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: tuple[Header, ...] = (),
        *,
        source: str | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue one record; ``source`` labels ``events_produced`` (None: not counted)."""
        size = len(value) + (len(key) if key else 0)
        if headers:
            size += sum(len(k) + len(v) for k, v in headers)
        if size > self.max_record_bytes:
            self._too_large(topic, size)
        self._enqueue(
            topic, source, [(key, value, list(headers) if headers else None, timestamp_ms)], size
        )

    def send_many(
        self, topic: str, pairs: Iterable[tuple[bytes | None, bytes]], *, source: str | None = None
    ) -> int:
        """Queue pre-encoded ``(key, value)`` pairs; returns how many.

        Raises:
            ProduceError: a record is too large; the pairs before it are queued.
        """
        total, size = 0, 0
        chunk: list[_Record] = []
        try:
            for key, value in pairs:
                n = len(value) + (len(key) if key else 0)
                if n > self.max_record_bytes:
                    self._too_large(topic, n)
                chunk.append((key, value, None, None))
                size += n
                if len(chunk) >= self.chunk_records:
                    total += len(chunk)
                    self._enqueue(topic, source, chunk, size)
                    chunk, size = [], 0
        finally:
            if chunk:
                total += len(chunk)
                self._enqueue(topic, source, chunk, size)
        return total

    def _too_large(self, topic: str, size: int) -> None:
        self.metrics.produce_errors.labels(topic=topic).inc()
        raise ProduceError(
            f"record of {size} bytes for {topic} exceeds "
            f"kafka.max_message_bytes={self.max_record_bytes}"
        )

    def _enqueue(self, topic: str, source: str | None, records: list[_Record], size: int) -> None:
        with self._cond:
            if self._closed:
                raise ProduceError("send on a closed producer")
            buf = self._buffers.get((topic, source))
            if buf is None:
                self._buffers[(topic, source)] = records
            else:
                buf.extend(records)
            self._buffered += len(records)
            self._buffered_bytes += size
            full = self._buffered >= self.chunk_records or self._buffered_bytes >= self.chunk_bytes
            if not full and not self._timer_armed:
                self._timer_armed = True
                self._loop.call_soon_threadsafe(
                    self._loop.call_later, self.linger_s, self._on_linger
                )
        if full:
            self._hand_off(from_loop=False)

    def _hand_off(self, from_loop: bool) -> None:
        with self._cond:
            if not from_loop:  # back-pressure for callers, never for the loop itself
                self._cond.wait_for(lambda: self._inflight < self.max_inflight)
            taken, self._buffers = self._buffers, {}
            self._buffered = self._buffered_bytes = 0
            self._inflight += len(taken)
            self._handoffs.extend((topic, source, recs) for (topic, source), recs in taken.items())
        for _ in taken:
            if from_loop:
                task = self._loop.create_task(self._deliver())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                asyncio.run_coroutine_threadsafe(self._deliver(), self._loop)

    def flush(self, timeout_s: float | None = None) -> None:
        """Hand off and wait for everything queued so far.

        Raises:
            ProduceError: records failed since the last flush, or ``timeout_s`` passed.
        """
        self._hand_off(from_loop=False)
        with self._cond:
            done = self._cond.wait_for(lambda: self._inflight == 0, timeout=timeout_s)
            failed, first = self._failed, self._first_error
            self._failed, self._first_error = 0, None
        if not done:
            raise ProduceError(f"flush: records still in flight after {timeout_s} s")
        if failed:
            raise ProduceError(f"{failed} record(s) not delivered; first error: {first}")

    def close(self, timeout_s: float | None = 60.0) -> None:
        """Flush, stop the client and its loop (idempotent); raises like :meth:`flush`."""
        if self._closed:
            return
        try:
            self.flush(timeout_s)
        finally:
            with self._cond:
                self._closed = True
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._aio.stop(), self._loop).result(timeout_s)
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- loop side ---------------------------------------------------------------------
    def _on_linger(self) -> None:
        with self._cond:
            self._timer_armed = False
            pending = self._buffered > 0
        if pending:
            self._hand_off(from_loop=True)

    def _partition(self, key: bytes | None, n: int) -> int:
        if key is None:
            return self._round_robin % n
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= _HASH_CACHE_MAX:
                self._hashes.clear()
            h = self._hashes[key] = _murmur2_positive(key)
        return h % n

    async def _deliver(self) -> None:
        """Queue the oldest hand-off's batches, then wait for their acks."""
        started = time.perf_counter()
        sends: list[tuple[asyncio.Future[Any], int]] = []
        failed = 0
        first: BaseException | None = None
        # Hand-offs queue their batches one after another, oldest first (a caller's hand-off
        # and the loop's linger hand-off may start their tasks in either order), so the
        # records of a key reach its partition in send order; only the acks overlap.
        async with self._order:
            with self._cond:
                topic, source, records = self._handoffs.popleft()
            try:
                n = self._partitions.get(topic)
                if n is None:
                    n = self._partitions[topic] = len(await self._aio.partitions_for(topic))
                self._round_robin += 1
                groups: dict[int, list[_Record]] = {}
                for rec in records:
                    groups.setdefault(self._partition(rec[0], n), []).append(rec)
                for partition, recs in groups.items():
                    batch = self._aio.create_batch()
                    for key, value, headers, ts in recs:
                        if (
                            batch.append(key=key, value=value, headers=headers, timestamp=ts)
                            is None
                        ):
                            sent = await self._aio.send_batch(batch, topic, partition=partition)
                            sends.append((sent, batch.record_count()))
                            batch = self._aio.create_batch()  # an empty batch takes any record
                            batch.append(key=key, value=value, headers=headers, timestamp=ts)
                    sent = await self._aio.send_batch(batch, topic, partition=partition)
                    sends.append((sent, batch.record_count()))
            except Exception as exc:  # metadata or queueing failed: records not queued are lost
                failed, first = len(records) - sum(k for _, k in sends), exc
        results = await asyncio.gather(*(f for f, _ in sends), return_exceptions=True)
        delivered = 0
        for (_, k), result in zip(sends, results, strict=True):
            if isinstance(result, BaseException):
                failed += k
                first = first or result
            else:
                delivered += k
        if delivered and source is not None:
            self.metrics.events_produced.labels(topic=topic, source=source).inc(delivered)
        if failed:
            self.metrics.produce_errors.labels(topic=topic).inc(failed)
            log.error("%d record(s) to %s not delivered: %r", failed, topic, first)
        self.metrics.produce_latency.observe(time.perf_counter() - started)
        with self._cond:
            self._inflight -= 1
            if failed:
                self._failed += failed
                self._first_error = self._first_error or repr(first)
            self._cond.notify_all()


def make_producer(
    cfg: KafkaConfig, bootstrap: str, *, metrics: Metrics | None = None, **overrides: Any
) -> Producer:
    """A started :class:`Producer` (acks=all, batched, uncompressed); caller closes it.

    Compression is off: on loopback it only costs CPU, and lz4/zstd/snappy need the
    ``cramjam`` package, which lumstream does not install.

    Args:
        overrides: aiokafka producer options, e.g. ``enable_idempotence=True`` for a real
            Kafka cluster (tansu 0.6.0 rejects InitProducerId from aiokafka) or
            ``compression_type="gzip"`` (lz4/zstd/snappy need the ``cramjam`` package).
    """
    return Producer(cfg, bootstrap, metrics=metrics, **overrides)
