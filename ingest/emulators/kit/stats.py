"""Request counting behind every emulator's ``GET /_emulator/stats`` test hook.

A test proves a run made no calls at all (or exactly the calls it should) by reading the counts. Like
``FaultInjector``, one object holds the counts and provides both the middleware and the handler.
"""

from __future__ import annotations

import collections

from aiohttp import web
from aiohttp.typedefs import Handler

from ingest.emulators.kit.common import json_response
from ingest.emulators.kit.faults import is_test_hook

__all__ = ["RequestCounter"]


class RequestCounter:
    """Counts API requests per ``"<METHOD> <route>"`` into ``counts`` (the emulator state's own counter).

    ``middleware`` must come first in the app's list, so a request is counted before anything (auth,
    an injected fault, a 404) can reject it. The test hooks themselves are not counted.
    """

    def __init__(self, counts: collections.Counter[str]) -> None:
        self.counts = counts

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_test_hook(request):
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else request.path
            self.counts[f"{request.method} {route}"] += 1
        return await handler(request)

    async def stats(self, request: web.Request) -> web.Response:
        """``GET /_emulator/stats``: ``{"requests": {route: count}}`` (not enveloped)."""
        return json_response({"requests": dict(sorted(self.counts.items()))})
