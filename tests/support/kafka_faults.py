"""A real tansu broker behind a proxy that loses chosen Produce requests or their answers.

tansu advertises the proxy's port, so every client connection (bootstrap and broker)
goes through it. The proxy numbers the Produce requests it sees (from 0, all connections
together) and, for the chosen ones, either never forwards the request (``swallow``: the
client times out and retries; nothing was written) or forwards it and drops the answer,
closing the connection (``drop_answer``: written, the client retries: a duplicate).

Example:
    >>> with ProxiedBroker(swallow={3}) as broker:  # doctest: +SKIP
    ...     producer = make_producer(cfg, broker.bootstrap)
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics
from streams.config import BrokerConfig
from streams.kafka.broker import BrokerError, EmbeddedBroker, free_port, probe_metadata

_PRODUCE = 0  # Kafka API key


def _read(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        got = sock.recv(n - len(out))
        if not got:
            raise EOFError
        out += got
    return out


class FaultProxy:
    """Forwards Kafka frames between clients and ``upstream``, losing the chosen Produces."""

    def __init__(self, swallow: set[int], drop_answer: set[int]) -> None:
        self.swallow, self.drop_answer = swallow, drop_answer
        self.upstream: int | None = None
        self.produces = 0  # Produce requests seen
        self.lost: list[tuple[str, int]] = []  # (what, produce number)
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        for s in [self._server, *self._socks]:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._server.accept()
                assert self.upstream is not None
                server = socket.create_connection(("127.0.0.1", self.upstream))
                self._socks += [client, server]
                doomed: set[int] = set()  # correlation ids whose answer is dropped
                threading.Thread(
                    target=self._requests, args=(client, server, doomed), daemon=True
                ).start()
                threading.Thread(
                    target=self._answers, args=(server, client, doomed), daemon=True
                ).start()

    def _requests(self, client: socket.socket, server: socket.socket, doomed: set[int]) -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                size = struct.unpack(">i", _read(client, 4))[0]
                body = _read(client, size)
                api, _version, corr = struct.unpack(">hhi", body[:8])
                if api == _PRODUCE:
                    with self._lock:
                        n, self.produces = self.produces, self.produces + 1
                    if n in self.swallow:
                        self.lost.append(("swallowed", n))
                        continue
                    if n in self.drop_answer:
                        doomed.add(corr)
                server.sendall(struct.pack(">i", size) + body)
        for s in (client, server):
            with contextlib.suppress(OSError):
                s.close()

    def _answers(self, server: socket.socket, client: socket.socket, doomed: set[int]) -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                size = struct.unpack(">i", _read(server, 4))[0]
                body = _read(server, size)
                if struct.unpack(">i", body[:4])[0] in doomed:
                    self.lost.append(("answer dropped", self.produces))
                    break  # and close the connection: the client retries on a new one
                client.sendall(struct.pack(">i", size) + body)
        for s in (client, server):
            with contextlib.suppress(OSError):
                s.close()


class ProxiedBroker(EmbeddedBroker):
    """An :class:`EmbeddedBroker` that advertises a :class:`FaultProxy` in front of it;
    ``bootstrap`` is the proxy's address."""

    def __init__(
        self,
        swallow: set[int] | None = None,
        drop_answer: set[int] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        super().__init__(BrokerConfig(), Metrics(CollectorRegistry()), log_dir)
        self.proxy = FaultProxy(swallow or set(), drop_answer or set())

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def stop(self) -> None:
        super().stop()
        self.proxy.close()

    def _launch(self, binary: Path, port: int, last: bool) -> bool:
        port = free_port("127.0.0.1")
        argv = [
            str(binary),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.proxy.port}",
            "--storage-engine",
            "memory://tansu/",
        ]
        assert self.log_path is not None
        with self.log_path.open("ab") as log_fh:
            self._child.start(argv, log_fh)
        self.port = self.proxy.upstream = port
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if probe_metadata("127.0.0.1", port, 0.5):
                    return True
            time.sleep(0.02)
        raise BrokerError(f"tansu behind the proxy did not answer on {port}")
