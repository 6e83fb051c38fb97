"""Request counting behind every emulator's ``GET /_emulator/stats`` test hook.

A test proves a run made no calls at all (or exactly the calls it should) by reading the counts. Like
``FaultInjector``, one object holds the counts; the kit's app middleware calls ``count``.
"""

from __future__ import annotations

import collections

from aiohttp import web

from ingest.emulators.kit.common import json_response

__all__ = ["RequestCounter"]


class RequestCounter:
    """Counts API requests per ``"<METHOD> <route>"`` into ``counts`` (the emulator state's own counter).

    ``count`` runs first, so a request is counted before anything (auth, an injected fault, a 404) can
    reject it. The caller leaves the test hooks themselves uncounted.
    """

    def __init__(self, counts: collections.Counter[str]) -> None:
        self.counts = counts

    def count(self, request: web.Request) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        self.counts[f"{request.method} {route}"] += 1

    async def stats(self, request: web.Request) -> web.Response:
        """``GET /_emulator/stats``: ``{"requests": {route: count}}`` (not enveloped)."""
        return json_response({"requests": dict(sorted(self.counts.items()))})
