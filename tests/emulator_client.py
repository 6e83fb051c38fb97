"""What the MOI and Keyue emulator tests share: an emulator app served on 127.0.0.1, and a session to it.

Each test module subclasses ``ServedEmulator`` with its platform's typed ``state`` and request helpers.
(The VikingDB tests sign every request and keep their own client.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from ingest.emulators.kit.server import serve_in_background


@dataclass
class ServedEmulator:
    url: str
    app: web.Application
    #: Carries the platform's credentials; paths are relative to ``url``.
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """The HTTP status and the decoded JSON body."""
        async with self.http.request(method, path, **kwargs) as response:
            return response.status, await response.json()


_Served = TypeVar("_Served", bound=ServedEmulator)


@asynccontextmanager
async def serving(app: web.Application, client: type[_Served], headers: Mapping[str, str]) -> AsyncIterator[_Served]:
    """Serve ``app`` on a free port and yield ``client`` over a session that sends ``headers``."""
    async with (
        serve_in_background(app) as url,
        aiohttp.ClientSession(base_url=url, headers=headers) as http,
    ):
        yield client(url, app, http)
