"""Fault injection shared by every emulator: latency, 5xx, 429 with ``Retry-After``, connection resets.

One ``FaultInjector``, parameterised by the platform's way of saying "server error" and "slow down",
so each emulator keeps its own wire format while the faults behave the same everywhere; the kit's app
middleware (``kit.app``) asks it about every API request. The settings are
a mutable object on purpose: tests turn faults on and off on a running app.

Faults never touch the emulator's own test hooks (``/_emulator/...``), so a test can always inspect the
state of an emulator that is busy failing on purpose.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
from aiohttp import web

__all__ = ["ErrorBuilder", "Fault", "FaultFields", "FaultInjector", "FaultSettings", "fault_settings", "is_test_hook"]

log = logging.getLogger(__name__)

#: The prefix of the emulators' unauthenticated, fault-free test hooks.
TEST_HOOK_PREFIX = "/_emulator/"


class Fault(enum.Enum):
    """The injected failures a platform has to word in its own envelope."""

    SERVER_ERROR = "server_error"
    RATE_LIMITED = "rate_limited"


#: Builds the platform's error response for an injected fault. The middleware adds ``Retry-After`` itself.
ErrorBuilder = Callable[[web.Request, Fault], web.StreamResponse]


@dataclass
class FaultSettings:
    """What to inject. Mutable so a test can change it on a running app."""

    #: Added to every request, in milliseconds.
    latency_ms: int = 0
    #: Fraction of requests answered with a server error.
    error_rate: float = 0.0
    #: Requests per second allowed (token bucket, burst of one second); ``None`` = unlimited.
    rate_limit: float | None = None
    #: Fraction of resettable requests (uploads) whose connection is dropped mid-body.
    reset_rate: float = 0.0


class FaultFields(Protocol):
    """Where the settings come from: every emulator config names its fault fields alike."""

    @property
    def latency_ms(self) -> int: ...
    @property
    def error_rate(self) -> float: ...
    @property
    def rate_limit(self) -> float | None: ...
    @property
    def reset_rate(self) -> float: ...


def fault_settings(source: FaultFields) -> FaultSettings:
    """Fresh settings from ``source``: a running app changes its own copy, never the frozen config."""
    return FaultSettings(
        latency_ms=source.latency_ms,
        error_rate=source.error_rate,
        rate_limit=source.rate_limit,
        reset_rate=source.reset_rate,
    )


def is_test_hook(request: web.Request) -> bool:
    return request.path.startswith(TEST_HOOK_PREFIX)


def _never(request: web.Request) -> bool:
    return False


class _TokenBucket:
    """Classic token bucket. Reads the rate on every call so a changed setting applies at once."""

    def __init__(self) -> None:
        self._tokens: float | None = None
        self._last = time.monotonic()

    def wait_time(self, rate: float) -> float:
        """Take one token: 0.0 when allowed, else the seconds until a token will be available."""
        capacity = max(1.0, rate)
        now = time.monotonic()
        tokens = capacity if self._tokens is None else self._tokens
        tokens = min(capacity, tokens + (now - self._last) * rate)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / rate


class FaultInjector:
    """Holds the settings, the seeded RNG and the rate bucket; ``inject`` is asked about each request.

    ``build_error`` words a fault in the platform's envelope. ``resettable`` says which requests may
    have their connection dropped: only requests with a body worth interrupting, i.e. uploads.
    """

    def __init__(
        self,
        settings: FaultSettings,
        build_error: ErrorBuilder,
        *,
        seed: int | None = None,
        resettable: Callable[[web.Request], bool] = _never,
    ) -> None:
        self.settings = settings
        self._build_error = build_error
        self._resettable = resettable
        self._rng = random.Random(seed)
        self._bucket = _TokenBucket()

    async def inject(self, request: web.Request) -> web.StreamResponse | None:
        """The fault answer for this request, or ``None`` to let it through (after any added latency).

        The caller decides which requests are exempt (the test hooks); every other one comes here.
        """
        settings = self.settings
        if settings.latency_ms > 0:
            await anyio.sleep(settings.latency_ms / 1000)
        if settings.rate_limit is not None:
            wait = self._bucket.wait_time(settings.rate_limit)
            if wait > 0:
                return self._rate_limited(request, wait)
        if self._chance(settings.error_rate):
            return self._build_error(request, Fault.SERVER_ERROR)
        if self._resettable(request) and self._chance(settings.reset_rate):
            return await _reset_connection(request)
        return None

    def _chance(self, rate: float) -> bool:
        # Draw only when the fault is on, so enabling one fault does not shift another's sequence.
        return rate > 0 and self._rng.random() < rate

    def _rate_limited(self, request: web.Request, wait: float) -> web.StreamResponse:
        response = self._build_error(request, Fault.RATE_LIMITED)
        # Retry-After is whole seconds (RFC 9110); round up and never say 0, which invites a hot loop.
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response


async def _reset_connection(request: web.Request) -> web.StreamResponse:
    """Read a little of the body, then drop the TCP connection with a RST, as a flaky network would.

    The handler never runs, so nothing is stored or recorded. The returned response is never sent: the
    transport is gone, and aiohttp treats the failed write as a client disconnect (no error logged).
    """
    await request.content.readany()
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0 turns close() into a RST, so the client sees "connection reset", not a clean EOF.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    log.debug("injected connection reset on %s %s", request.method, request.path)
    return web.Response(status=500)
