"""Running an emulator app on a real socket: in the background for tests, or until cancelled for the CLI."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from aiohttp import web

from ingest.emulators.kit.stalls import STALL_GUARD

__all__ = ["serve_forever", "serve_in_background"]

#: Seconds a shutdown waits for in-flight requests. Emulator requests are short; don't hang a test run.
SHUTDOWN_TIMEOUT = 2.0


def _base_url(bound: tuple[Any, ...]) -> str:
    """The URL for a socket bound at ``bound`` (from ``getsockname``); wildcards mean "this machine".

    Built from the bound address rather than the requested host: a name such as ``localhost`` may bind
    one socket per address family, each on its own free port, and the URL must name one of them exactly.
    """
    host, port = str(bound[0]), int(bound[1])
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"http://[{address}]:{port}" if address.version == 6 else f"http://{address}:{port}"


@asynccontextmanager
async def serve_in_background(
    app: web.Application, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
) -> AsyncIterator[str]:
    """Start ``app`` on ``host:port`` and yield its base URL, e.g. ``http://127.0.0.1:40123``.

    ``port=0`` binds a free port, read back from the bound socket, so parallel tests never collide.
    The server is shut down (and the app's cleanup hooks run) when the block exits, even on cancel.
    An app made by ``build_app`` has its stall limits enforced on every connection. ``sock``: serve on
    this listening socket instead (one a parent process bound and handed down), ignoring host and port.
    """
    guard = app.get(STALL_GUARD)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        if guard is not None:
            site = guard.site(runner, host, port, sock=sock)
        elif sock is not None:
            site = web.SockSite(runner, sock)
        else:
            site = web.TCPSite(runner, host, port)
        await site.start()
        yield _base_url(runner.addresses[0])
    finally:
        # Shielded: cleanup must finish even when the surrounding scope is being cancelled.
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


async def serve_forever(app: web.Application, host: str, port: int, *, on_ready: Callable[[str], None]) -> None:
    """Serve ``app`` until cancelled (Ctrl-C in ``ingest serve``); ``on_ready`` gets the base URL."""
    async with serve_in_background(app, host, port) as url:
        on_ready(url)
        await anyio.sleep_forever()
