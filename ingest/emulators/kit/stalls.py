"""Closing the connections of clients that stall, so an emulator cannot be held open by them forever.

aiohttp's server bounds neither the time a client may take to send its headers nor a pause in the
middle of a body: a connection that sends half a request line, or announces a 2 GiB Content-Length
and stops, holds a socket (and a staged file) for as long as the client likes. ``StallGuard`` adds:

- a header timeout: from a connection's first byte (or its opening, for its first request) to the
  moment its request reaches the app, at most ``header_timeout`` seconds; then 408 and close;
- a body idle timeout: while a request's body is still outstanding and the server is reading, at most
  ``body_idle_timeout`` seconds without a byte; then 408 and close. A server that stopped reading
  (flow control: the handler is busy) is not the client's stall, so that time does not count;
- a cap on slow connections: a connection still waiting for its headers after ``SLOW_AFTER`` seconds
  counts as slow; once ``max_slow_connections`` are, further ones are closed (503) when they turn slow.
  A well-behaved client sends its headers in milliseconds and is never counted, so it still gets in
  while the cap is full.

It watches the transport (every byte received) through a thin protocol wrapper, and the requests
through the kit's middleware (``request_started``/``request_finished``): headers are complete exactly
when aiohttp hands the request to the app. One timer sweeps all connections every ``tick`` seconds,
rather than a timer per connection, because most sweeps find nothing to do.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader

__all__ = ["SLOW_AFTER", "STALL_GUARD", "StallGuard", "StallLimits"]

log = logging.getLogger(__name__)

#: Seconds a connection may take to deliver its headers before it counts against the slow cap.
SLOW_AFTER = 1.0
#: Seconds a closing connection gets to flush its short answer before it is aborted.
FLUSH_GRACE = 1.0

_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_TOO_MANY = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


@dataclass(frozen=True)
class StallLimits:
    """How long a client may stall, and how many may at once (the ``ingest serve`` connection flags)."""

    header_timeout: float
    body_idle_timeout: float
    max_slow_connections: int

    @property
    def tick(self) -> float:
        """Seconds between sweeps: a quarter of the shortest limit, so each is enforced within 25 %."""
        return max(0.02, min(self.header_timeout, self.body_idle_timeout, SLOW_AFTER) / 4)


class _Phase(enum.Enum):
    HEADERS = "waiting for headers"
    REQUEST = "in a request"
    IDLE = "idle between requests"


class _Connection(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol, noting when bytes arrive."""

    def __init__(self, inner: asyncio.Protocol, guard: StallGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.phase = _Phase.HEADERS
        #: When the current phase's clock started (headers) or the last byte arrived (body).
        self.since = 0.0
        self.slow = False
        self.body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.since = self.guard.now()
        self.guard.opened(self)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        now = self.guard.now()
        if self.phase is _Phase.IDLE:
            self.phase = _Phase.HEADERS  # the next request's first byte starts its header clock
            self.since = now
        elif self.phase is _Phase.REQUEST:
            self.since = now
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class StallGuard:
    """The stall limits of one served app (at ``app[STALL_GUARD]``); see the module docstring."""

    def __init__(self, limits: StallLimits) -> None:
        self.limits = limits
        self._connections: dict[asyncio.BaseTransport, _Connection] = {}
        self._slow = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def site(self, runner: web.BaseRunner, host: str, port: int, *, sock: socket.socket | None = None) -> web.BaseSite:
        """A TCP site whose connections this guard watches (in place of ``web.TCPSite``, or of
        ``web.SockSite`` given ``sock``); it starts and stops the guard's sweeps with itself."""
        return _GuardedSite(runner, host, port, self, sock)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.call_later(self.limits.tick, self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # The protocol and the middleware report here.

    def opened(self, conn: _Connection) -> None:
        assert conn.transport is not None
        self._connections[conn.transport] = conn

    def closed(self, conn: _Connection) -> None:
        if conn.transport is not None and self._connections.pop(conn.transport, None) is not None and conn.slow:
            self._slow -= 1

    def request_started(self, request: web.BaseRequest) -> None:
        conn = self._connections.get(request.transport) if request.transport is not None else None
        if conn is None:  # not served through this guard's site (a test client), or already gone
            return
        if conn.slow:
            conn.slow = False
            self._slow -= 1
        conn.phase = _Phase.REQUEST
        conn.body = request.content
        conn.since = self.now()

    def request_finished(self, request: web.BaseRequest) -> None:
        conn = self._connections.get(request.transport) if request.transport is not None else None
        if conn is not None:
            conn.phase = _Phase.IDLE
            conn.body = None

    def _sweep(self) -> None:
        now = self.now()
        limits = self.limits
        for conn in list(self._connections.values()):
            transport = conn.transport
            assert transport is not None
            if conn.phase is _Phase.HEADERS:
                waited = now - conn.since
                if waited >= limits.header_timeout:
                    self._close(conn, _TIMED_OUT, f"sent no complete headers in {limits.header_timeout:g} s")
                elif not conn.slow and waited >= SLOW_AFTER:
                    if self._slow >= limits.max_slow_connections:
                        self._close(conn, _TOO_MANY, f"{self._slow} slow connections already")
                    else:
                        conn.slow = True
                        self._slow += 1
            elif conn.phase is _Phase.REQUEST and conn.body is not None and not conn.body.is_eof():
                if not transport.is_reading():
                    conn.since = now  # paused by the server's own flow control: the client is not stalling
                elif now - conn.since >= limits.body_idle_timeout:
                    self._close(conn, _TIMED_OUT, f"sent no body bytes for {limits.body_idle_timeout:g} s")
        assert self._loop is not None
        self._sweeper = self._loop.call_later(limits.tick, self._sweep)

    def _close(self, conn: _Connection, answer: bytes, why: str) -> None:
        """Answer briefly and close; aiohttp's protocol then sees the connection lost as after any disconnect."""
        transport = conn.transport
        assert transport is not None
        assert self._loop is not None
        log.debug("emulator: closing a connection from %s: %s", transport.get_extra_info("peername"), why)
        self.closed(conn)
        if transport.is_closing():  # aiohttp is closing it already
            return
        transport.write(answer)
        transport.close()
        # close() waits for the answer to flush, which a client that reads nothing may never allow.
        self._loop.call_later(FLUSH_GRACE, transport.abort)


class _GuardedSite(web.BaseSite):
    """``web.TCPSite``, but each connection's protocol is wrapped for the guard."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: StallGuard, sock: socket.socket | None = None
    ) -> None:
        super().__init__(runner)
        self._host, self._port, self._guard, self._sock = host, port, guard, sock
        if sock is not None:
            self._host, self._port = sock.getsockname()[:2]

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        wrap: Callable[[], Any] = lambda: _Connection(server(), self._guard)  # noqa: E731
        self._guard.start()  # before the first connection can arrive: it reads the guard's clock
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(wrap, sock=self._sock, backlog=self._backlog)
        else:
            self._server = await loop.create_server(wrap, self._host, self._port, backlog=self._backlog)

    async def stop(self) -> None:
        self._guard.stop()
        await super().stop()


#: Where ``build_app`` keeps an app's guard, for ``server.serve_in_background``.
STALL_GUARD: web.AppKey[StallGuard] = web.AppKey("stall_guard", StallGuard)
