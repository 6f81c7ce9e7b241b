"""The served-impressions log: every ranked list the service returns becomes impression
events on lum.events, off the latency path, and none is lost when the service is killed.

The request path does one thing: :meth:`ServedLog.log` appends the list as one JSON line
to a local *spool* file (one ``write`` of a few hundred bytes into the page cache, no
fsync: what the kernel has survives a SIGKILL of the process). A background thread ships
the spool to Kafka: it reads whole lines from the last acknowledged position, expands
each list into impression events of the event contract, produces them with
:class:`streams.kafka.producer.Producer`, waits for Kafka's acknowledgement and only then
records the new position durably (``shipped.json``, written atomically). After a restart it
resumes from that position, so a list is produced at least once; its events have
deterministic ids (``<request_id>:<position>``), so the worker drops any re-sent one as a
duplicate and the effect is exactly once.

Bounds: the spool holds at most ``spool_max_bytes`` not yet acknowledged (a list beyond it
is dropped and counted, ``served_log_lists{outcome="dropped_spool_full"}``), a shipping
round reads at most ``ship_batch_bytes``, and nothing is queued in memory. If Kafka is
down, ``log`` keeps accepting (into the spool), the failed rounds are counted
(``served_log_ship_failures``), ``served_log_kafka_up`` is 0 and the backlog gauges grow.

An impression event of position ``p`` of a list (see docs/serving.md, "Closing the loop")::

    {"event_id": "<request_id>:<p>", "user_id": ..., "item_id": items[p],
     "action": "impression", "condition": ..., "ts": <served ms>,
     "features": {"request_id": ..., "position": p, "randomized": false,
                  "ranker_version": "r12", "backbone_version": "v3", "category": ...}}

Example:
    >>> log = ServedLog(ServedLogConfig(), Path("spool"), KafkaConfig(), "127.0.0.1:9092",
    ...                 EventConfig())  # doctest: +SKIP
    >>> log.log(ServedList("req-1", "7", "Comedy", ["42", "17"], ranker_version="r3"))
    ... # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson

from core.durable import write_json_atomic
from monitoring.metrics import Metrics
from serving.loop_config import ServedLogConfig
from streams.config import EventConfig, KafkaConfig
from streams.contracts.events import (
    BACKBONE_VERSION,
    POSITION,
    RANDOMIZED,
    RANKER_VERSION,
    REQUEST_ID,
    EventError,
    encode,
    event_key,
    validate,
)
from streams.kafka.producer import ProduceError, Producer

log = logging.getLogger(__name__)

_SEGMENT = re.compile(r"^spool-(?P<n>[0-9]{12})\.jsonl$")
SHIPPED = "shipped.json"
LOCK = "LOCK"


class ServedLogError(RuntimeError):
    """The spool cannot be used (held by another process, unreadable position file)."""


class ServedList(msgspec.Struct, frozen=True, omit_defaults=True):
    """One ranked list as the service returned it (one spool line).

    Args:
        request_id: the request's id (client-given or made by the service); event ids are
            ``<request_id>:<position>``, so it must be unique per served list.
        user_id / condition: as in the request (the condition the list was scored for).
        items: item ids in the order shown (position 0 first).
        categories: the items' categories (same length), or None.
        ranker_version / backbone_version: what scored the list ("" when unknown).
        randomized: the order was randomised (exploration), not the ranker's.
        ts_ms: when it was served (ms since the epoch).
    """

    request_id: str
    user_id: str
    condition: str
    items: list[str]
    categories: list[str | None] | None = None
    ranker_version: str = ""
    backbone_version: str = ""
    randomized: bool = False
    ts_ms: int = 0


_ENCODE = msgspec.json.Encoder().encode
_DUMPS, _SORT = orjson.dumps, orjson.OPT_SORT_KEYS
_DECODE = msgspec.json.Decoder(ServedList).decode


def event_id(request_id: str, position: int) -> str:
    """The deterministic id of the impression at ``position`` of a served list."""
    return f"{request_id}:{position}"


def impressions(served: ServedList, action: str = "impression") -> list[dict[str, Any]]:
    """The impression events of a served list (plain dicts of the event contract)."""
    out = []
    for pos, item in enumerate(served.items):
        features: dict[str, Any] = {
            REQUEST_ID: served.request_id,
            POSITION: pos,
            RANDOMIZED: served.randomized,
        }
        if served.ranker_version:
            features[RANKER_VERSION] = served.ranker_version
        if served.backbone_version:
            features[BACKBONE_VERSION] = served.backbone_version
        if served.categories is not None and served.categories[pos] is not None:
            features["category"] = served.categories[pos]
        out.append(
            {
                "event_id": event_id(served.request_id, pos),
                "user_id": served.user_id,
                "item_id": item,
                "action": action,
                "condition": served.condition,
                "ts": served.ts_ms,
                "features": features,
            }
        )
    return out


def spool_path(cfg: ServedLogConfig, data_dir: Path, worker: int = 0) -> Path:
    """This serving process's spool: ``served_log.spool_dir`` (default
    ``<paths.data_dir>/served-spool``) / ``<host>-w<worker>``. Keep ``worker`` stable across
    restarts (the process index, not a pid) so a restarted process ships its
    predecessor's backlog; the host name keeps replicas that share a data volume apart."""
    root = Path(cfg.spool_dir) if cfg.spool_dir else Path(data_dir) / "served-spool"
    return root / f"{socket.gethostname()}-w{worker}"


def _segment_path(root: Path, number: int) -> Path:
    return root / f"spool-{number:012d}.jsonl"


def _segments(root: Path) -> list[int]:
    return sorted(int(m["n"]) for p in root.iterdir() if (m := _SEGMENT.match(p.name)))


class ServedLog:
    """Spool served lists locally, ship them to lum.events in a background thread.

    Args:
        cfg: spool bounds and shipping cadence.
        spool_dir: this process's spool (locked: one process per directory).
        kafka: topic names and client settings (``topic_events`` receives the events).
        bootstrap: the cluster.
        events: the event contract the impressions are checked against.
        metrics: where counts go.
        producer_factory: makes the producer (default: :class:`Producer` on ``bootstrap``);
            called again after a failure.
        clock_ms: served time of a list that has none.

    Example:
        >>> with ServedLog(ServedLogConfig(), Path("spool"), KafkaConfig(), "127.0.0.1:9092",
        ...                EventConfig()) as served:  # doctest: +SKIP
        ...     served.log(ServedList("req-1", "7", "Comedy", ["42", "17"]))
    """

    def __init__(
        self,
        cfg: ServedLogConfig,
        spool_dir: Path,
        kafka: KafkaConfig,
        bootstrap: str,
        events: EventConfig,
        *,
        metrics: Metrics | None = None,
        producer_factory: Callable[[], Producer] | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        if metrics is None:
            from monitoring.metrics import default_metrics

            metrics = default_metrics()
        self.cfg, self.root, self.kafka, self.events = cfg, Path(spool_dir), kafka, events
        self.metrics = metrics
        self.clock_ms = clock_ms
        self._factory = producer_factory or (lambda: Producer(kafka, bootstrap, metrics=metrics))
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ServedLogError(f"{self.root} is in use by another process") from None
        self._lock = threading.Lock()  # the writer's segment, the backlog counts
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        try:
            self._shipped = self._recover()
            existing = _segments(self.root)
            self._seg = (existing[-1] + 1) if existing else max(self._shipped[0], 0)
            self._fd = os.open(
                _segment_path(self.root, self._seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
            )
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._seg_size = 0
        self._producer: Producer | None = None
        self._up = True  # the last shipping round was acknowledged
        self.metrics.served_kafka_up.set(1)
        self._publish_backlog()
        self._thread = threading.Thread(target=self._ship_loop, name="served-log", daemon=True)
        self._thread.start()

    # -- recovery --------------------------------------------------------------------------
    def _recover(self) -> tuple[int, int]:
        """Read the shipped position, cut torn tails, count the backlog; returns it."""
        pos_file = self.root / SHIPPED
        segment, offset = 0, 0
        if pos_file.exists():
            try:
                saved = orjson.loads(pos_file.read_bytes())
                segment, offset = int(saved["segment"]), int(saved["offset"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ServedLogError(f"{pos_file}: unreadable shipped position: {exc}") from exc
        self._backlog_bytes = 0
        self._backlog_lists = 0
        for number in _segments(self.root):
            path = _segment_path(self.root, number)
            if number < segment:  # shipped before the crash, not yet deleted
                path.unlink()
                continue
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # a write cut short by a crash of the machine
                log.warning("%s: dropping a torn tail of %d bytes", path, len(data) - end)
                os.truncate(path, end)
            start = offset if number == segment else 0
            self._backlog_bytes += max(end - start, 0)
            self._backlog_lists += data.count(b"\n", start, end)
        return segment, offset

    # -- the request path ------------------------------------------------------------------
    def log(self, served: ServedList) -> bool:
        """Spool one served list; False when it was dropped (spool full, disk error).

        Cheap: one JSON encode and one ``write``; never waits for Kafka.

        Raises:
            ValueError: ``categories`` does not match ``items`` (a caller's bug).
            ServedLogError: the log is closed.
        """
        if served.categories is not None and len(served.categories) != len(served.items):
            raise ValueError(
                f"served list {served.request_id!r}: {len(served.categories)} categories "
                f"for {len(served.items)} items"
            )
        if not served.ts_ms:
            served = msgspec.structs.replace(served, ts_ms=self.clock_ms())
        line = _ENCODE(served) + b"\n"
        with self._lock:
            if self._closed:
                raise ServedLogError("log on a closed ServedLog")
            if self._backlog_bytes + len(line) > self.cfg.spool_max_bytes:
                self.metrics.served_lists.labels(outcome="dropped_spool_full").inc()
                return False
            try:
                if self._seg_size >= self.cfg.segment_bytes:
                    self._roll()
                written = os.write(self._fd, line)
                while written < len(line):  # a short write (a signal): finish the line
                    written += os.write(self._fd, line[written:])
            except OSError as exc:
                log.error("served log: cannot write the spool: %s", exc)
                self.metrics.served_lists.labels(outcome="dropped_write_error").inc()
                return False
            self._seg_size += len(line)
            self._backlog_bytes += len(line)
            self._backlog_lists += 1
        self.metrics.served_lists.labels(outcome="spooled").inc()
        self._wake.set()
        return True

    def _roll(self) -> None:
        """Start the next segment (lock held)."""
        os.close(self._fd)
        self._seg += 1
        self._fd = os.open(
            _segment_path(self.root, self._seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )
        self._seg_size = 0

    # -- shipping --------------------------------------------------------------------------
    @property
    def backlog(self) -> tuple[int, int]:
        """(lists, bytes) spooled and not yet acknowledged by Kafka."""
        with self._lock:
            return self._backlog_lists, self._backlog_bytes

    def _publish_backlog(self) -> None:
        self.metrics.served_backlog_bytes.set(self._backlog_bytes)
        self.metrics.served_backlog_lists.set(self._backlog_lists)

    def _read_chunk(self) -> tuple[int, int, bytes] | None:
        """The next whole lines after the shipped position: (segment, offset, data), or None
        when everything written is shipped. Deletes segments shipped to their end."""
        while True:
            segment, offset = self._shipped
            with self._lock:
                current = self._seg
            path = _segment_path(self.root, segment)
            data = b""
            if path.exists():
                with path.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read(self.cfg.ship_batch_bytes)
                    while data and b"\n" not in data:  # one line longer than a round
                        more = fh.read(self.cfg.ship_batch_bytes)
                        if not more:
                            break
                        data += more
            end = data.rfind(b"\n") + 1
            if end:
                return segment, offset, data[:end]
            if segment >= current:
                return None  # caught up with the writer
            # the writer moved on: this segment is complete and shipped to its end
            self._save(segment + 1, 0)
            path.unlink(missing_ok=True)

    def _save(self, segment: int, offset: int) -> None:
        write_json_atomic(self.root / SHIPPED, {"segment": segment, "offset": offset})
        self._shipped = (segment, offset)

    def _expand(self, data: bytes) -> tuple[list[tuple[bytes | None, bytes]], int]:
        """Spool lines -> (key, value) records of the valid impressions, and the lists."""
        pairs: list[tuple[bytes | None, bytes]] = []
        lines = data.splitlines()
        for line in lines:
            try:
                served = _DECODE(line)
            except msgspec.DecodeError as exc:
                log.error("served log: skipping an unreadable spool line: %s", exc)
                self.metrics.served_events_invalid.inc()
                continue
            objs = impressions(served)
            if self._list_valid(served, objs):
                # what encode(validate(obj)) gives, without validating every impression
                key = served.user_id.encode()
                pairs.extend((key, _DUMPS(obj, option=_SORT)) for obj in objs)
                continue
            for obj in objs:  # the precise path: each impression on its own
                try:
                    ev = validate(obj, self.events)
                except EventError as exc:
                    self.metrics.served_events_invalid.inc()
                    log.warning("served log: impression %s dropped: %s", obj["event_id"], exc)
                    continue
                pairs.append((event_key(ev), encode(ev)))
        return pairs, len(lines)

    def _list_valid(self, served: ServedList, objs: list[dict[str, Any]]) -> bool:
        """Whether every impression of the list passes the contract as built: the fields
        all impressions share are checked once through the contract (on the last one, whose
        event id is the longest), the item ids and categories with the contract's limits."""
        if not objs:
            return True
        try:
            last = validate(objs[-1], self.events)
        except EventError:
            return False
        if last.user_id != served.user_id or last.condition != served.condition:
            return False  # normalised (an odd id): take the precise path
        limit = self.events.max_id_chars
        texts = list(served.items)
        if served.categories is not None:
            if len(served.categories) != len(served.items):
                return False
            texts += [c for c in served.categories if c is not None]
        return all(0 < len(t) <= limit and not t.isspace() and t.isascii() for t in texts)

    def _ship(self, pairs: list[tuple[bytes | None, bytes]]) -> None:
        """Produce and wait for the acknowledgement; raises ProduceError."""
        if self._producer is None:
            self._producer = self._factory()
        self._producer.send_many(self.kafka.topic_events, pairs, source="served")
        self._producer.flush(self.cfg.ack_timeout_s)

    def _drop_producer(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(ProduceError):
                producer.close(timeout_s=0.5)  # purges what is still queued

    def _round(self) -> bool:
        """Ship one chunk; True when there was something to ship."""
        chunk = self._read_chunk()
        if chunk is None:
            return False
        segment, offset, data = chunk
        pairs, lists = self._expand(data)
        try:
            if pairs:
                self._ship(pairs)
        except ProduceError as exc:
            self.metrics.served_ship_failures.inc()
            self.metrics.served_kafka_up.set(0)
            self._up = False
            log.warning("served log: %d lists not shipped yet: %s", lists, exc)
            self._drop_producer()
            self._stop.wait(self.cfg.retry_s)
            return True
        self._save(segment, offset + len(data))
        self.metrics.served_events_shipped.inc(len(pairs))
        self.metrics.served_kafka_up.set(1)
        self._up = True
        with self._lock:
            self._backlog_bytes -= len(data)
            self._backlog_lists -= lists
            self._publish_backlog()
        return True

    def _ship_loop(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                busy = self._round()
            except Exception:  # never let the thread die: the spool keeps everything
                log.exception("served log: shipping round failed")
                self.metrics.served_ship_failures.inc()
                self._stop.wait(self.cfg.retry_s)
                busy = True
            with self._lock:
                self._publish_backlog()
            if stopping:
                # drain while Kafka answers; a failing round would only wait out the clock
                if not busy or not self._up or time.monotonic() > self._drain_deadline:
                    return
                continue
            if not busy:
                self._wake.wait(self.cfg.ship_interval_s)
                self._wake.clear()

    def wait_shipped(self, timeout_s: float) -> bool:
        """Wait until every spooled list is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.backlog[0]:
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(0.01)
        return True

    # -- lifecycle -------------------------------------------------------------------------
    _drain_deadline = 0.0

    def close(self) -> None:
        """Stop accepting, keep shipping for up to ``drain_s``, then stop (idempotent).
        What is still spooled ships after the next start."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._drain_deadline = time.monotonic() + self.cfg.drain_s
        self._stop.set()
        self._wake.set()
        # a round may be stuck connecting to an unreachable cluster (up to the Kafka
        # request timeout): do not hold a shutdown for it; the spool keeps everything
        limit = self.cfg.drain_s + self.cfg.ack_timeout_s + 1.0
        self._thread.join(timeout=limit)
        os.close(self._fd)
        if self._thread.is_alive():
            log.warning(
                "served log: shipper still busy after %.1f s; %d lists stay spooled for the "
                "next start",
                limit,
                self._backlog_lists,
            )
            return  # the spool stays locked until this process exits
        self._drop_producer()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)

    def __enter__(self) -> ServedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
