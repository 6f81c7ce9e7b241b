"""A small typed client of the ranking API (standard library HTTP, msgspec types).

Example:
    >>> client = RankClient("http://127.0.0.1:8470")  # doctest: +SKIP
    >>> resp = client.rank(RankRequest(user_id="7", candidates=[Candidate("3")]))  # doctest: +SKIP
    >>> resp.items[0].item_id, resp.ranker_version  # doctest: +SKIP
"""

from __future__ import annotations

import http.client
import urllib.parse
from typing import Any

import msgspec

from serving.api import ENCODER, ErrorBody, Health, ModelsResponse, RankRequest, RankResponse

__all__ = ["RankClient", "RankError"]


class RankError(RuntimeError):
    """The service answered with an error status; ``status``, ``error``, ``detail``."""

    def __init__(self, status: int, error: str, detail: str, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status} {error}: {detail}")
        self.status, self.error, self.detail, self.retry_after = status, error, detail, retry_after


class RankClient:
    """One keep-alive connection to the service (not thread-safe: one per thread).

    Args:
        base_url: ``http://host:port``.
        timeout_s: socket timeout of each call.
    """

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None:
            raise ValueError(f"{base_url!r}: expected http://host:port")
        self.host, self.port = url.hostname, url.port or 80
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def _call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, Any]:
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout_s
                )
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                return resp.status, resp.read(), resp.headers
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def raw(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Any call, as (status, body bytes)."""
        status, data, _ = self._call(method, path, body)
        return status, data

    def rank(self, request: RankRequest) -> RankResponse:
        """Raises :class:`RankError` on any status but 200."""
        status, data, headers = self._call("POST", "/v1/rank", ENCODER.encode(request))
        if status != 200:
            try:
                err = msgspec.json.decode(data, type=ErrorBody)
            except msgspec.MsgspecError:
                err = ErrorBody("error", data[:200].decode("utf-8", "replace"))
            raise RankError(status, err.error, err.detail, headers.get("Retry-After"))
        return msgspec.json.decode(data, type=RankResponse)

    def models(self) -> ModelsResponse:
        status, data, _ = self._call("GET", "/v1/models")
        if status != 200:
            raise RankError(status, "error", data[:200].decode("utf-8", "replace"), None)
        return msgspec.json.decode(data, type=ModelsResponse)

    def ready(self) -> Health:
        """The /readyz answer (``status`` ``ready`` or ``not_ready`` with the reason)."""
        _, data, _ = self._call("GET", "/readyz")
        return msgspec.json.decode(data, type=Health)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> RankClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
