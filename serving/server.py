"""Running the application: in a background thread of this process (tests, benchmarks,
embedding), or as the service's worker processes (serving/process.py).

Example:
    >>> with BackgroundServer(make_app(service, cfg, metrics), "127.0.0.1") as srv:
    ...     RankClient(srv.url).ready()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """Serve ``app`` on ``host:port`` (0 = a free port) from a thread with its own loop.

    Args:
        shutdown_timeout_s: on :meth:`stop`, how long in-flight requests get to finish.
    """

    def __init__(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        self.app, self.host, self.port = app, host, port
        self.shutdown_timeout_s = shutdown_timeout_s
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="serving-http", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, shutdown_timeout=self.shutdown_timeout_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets: Any = getattr(server, "sockets", None)
        self.port = int(sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Stop listening, let in-flight requests finish, run the app's cleanup."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(
                timeout=self.shutdown_timeout_s + 30
            )
            self._runner = None
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
