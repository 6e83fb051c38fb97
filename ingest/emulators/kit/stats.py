"""Request counting behind every emulator's ``GET /_emulator/stats`` test hook.

A test proves a run made no calls at all (or exactly the calls it should) by reading the counts. Like
``FaultInjector``, one object holds the counts; the kit's app middleware calls ``count``.
"""

from __future__ import annotations

import collections
import time

from aiohttp import web

from ingest.emulators.kit.common import json_response

__all__ = ["RequestCounter"]


class RequestCounter:
    """Counts API requests per ``"<METHOD> <route>"`` into ``counts`` (the emulator state's own counter).

    ``count`` runs first, so a request is counted before anything (auth, an injected fault, a 404) can
    reject it. The caller leaves the test hooks themselves uncounted. ``rate_limited`` counts the
    requests refused for ``--rate-limit`` (429), and the times of the first and last request give the
    span a client's request rate can be measured over (``benchmarks/bench_rate.py``).
    """

    def __init__(self, counts: collections.Counter[str]) -> None:
        self.counts = counts
        self.rate_limited = 0
        self._first: float | None = None
        self._last = 0.0

    def count(self, request: web.Request) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        self.counts[f"{request.method} {route}"] += 1
        self._last = time.monotonic()
        if self._first is None:
            self._first = self._last

    def count_rate_limited(self) -> None:
        self.rate_limited += 1

    async def stats(self, request: web.Request) -> web.Response:
        """``GET /_emulator/stats``: ``{"requests": {route: count}, "rate_limited": n, "span_s": s}`` (not
        enveloped); ``span_s``: seconds from the first counted request to the last."""
        span = 0.0 if self._first is None else self._last - self._first
        return json_response(
            {"requests": dict(sorted(self.counts.items())), "rate_limited": self.rate_limited, "span_s": round(span, 3)}
        )
