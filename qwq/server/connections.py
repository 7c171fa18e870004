"""Connections: a cap on how many are open, and a deadline for a request's headers, so slow or
silent clients (slowloris) cannot hold the server. uvicorn has neither (it times out only idle
keep-alive connections, and any byte restarts that), so qwq serves HTTP with uvicorn's h11
protocol plus these. The body's deadline is the BodyLimit middleware's (qwq.server.guard).

    uvicorn.Config(app, http=limited_protocol(ConnectionLimits(max_connections=512)))
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from qwq.server.errors import RETRY_AFTER_S, error_bytes


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1024  # open at once; beyond that, 503 with Retry-After
    header_timeout: float = 10.0  # seconds from connection (or a request's first byte) to
    # its last header line; then 408 and the connection is closed


def _timeout_response(seconds: float) -> bytes:
    body = error_bytes(408, f"the request's headers did not arrive within {seconds:g} s",
                       "request_timeout")
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
            + body)


async def _over_capacity(scope: dict, receive: Any, send: Any) -> None:
    """The app a connection past max_connections gets: 503, then the connection closes."""
    body = error_bytes(503, "the server has too many open connections; retry later",
                       "too_many_connections")
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(RETRY_AFTER_S).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a header deadline. The deadline runs
    from the moment the connection opens, or from the first byte that arrives while no request
    is in progress, until that request's headers are complete."""

    limits = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        if len(self.connections) > self.limits.max_connections:
            self.app = _over_capacity
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._between_requests():
            self._arm()
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request's headers are in
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.limits.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.write(_timeout_response(self.limits.header_timeout))
            self.transport.close()


def limited_protocol(limits: ConnectionLimits) -> type[LimitedH11Protocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {"limits": limits})
