"""The embedded default's MOI emulator, in a process of its own: ``python -m ingest.emulators.moi.child``.

``ingest run DIR`` without ``--target`` starts this so the emulator's CPU (multipart parsing, hashing,
its SQLite commits) runs on another core instead of sharing the client's event loop.

The protocol is two JSON lines and one end-of-file:

- the parent writes the settings on stdin, one line (the API key travels here, never in ``argv``, where
  any user of the machine could read it): ``{"data_dir": …, "api_key": …, "volumes": […], "task_delay_ms": …}``;
  and, optionally, ``"listen_fd"``: a loopback socket the parent bound, listens on and handed down, so the
  parent knows the address before the child has started (connections wait in its backlog meanwhile);
- the child serves on that socket (or binds a free loopback port) and answers on stdout, one line:
  ``{"url": "http://127.0.0.1:…"}`` (or ``{"error": "…"}`` and exit status 2 when it cannot start);
- it serves until its stdin reaches end-of-file: the parent closed it when the run ended, or the parent
  died (the kernel closes the pipe), so an emulator never outlives its run.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from pathlib import Path
from typing import Any

import anyio

from ingest.emulators.kit.server import serve_in_background
from ingest.emulators.moi.app import create_moi_app
from ingest.emulators.moi.config import MoiEmulatorConfig

__all__ = ["main"]


def _config(settings: dict[str, Any]) -> MoiEmulatorConfig:
    return MoiEmulatorConfig(
        data_dir=Path(settings["data_dir"]),
        api_key=str(settings["api_key"]),
        volumes=tuple(str(v) for v in settings.get("volumes", ())),
        task_delay_ms=int(settings.get("task_delay_ms", 20)),
    )


def _listener(fd: object) -> socket.socket | None:
    """The listening socket the parent handed down, checked to be a loopback TCP socket."""
    if fd is None:
        return None
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise ValueError(f"listen_fd must be a descriptor number, not {fd!r}")
    sock = socket.socket(fileno=fd)
    host = sock.getsockname()[0] if sock.family in (socket.AF_INET, socket.AF_INET6) else ""
    if sock.type != socket.SOCK_STREAM or not ipaddress.ip_address(host).is_loopback:
        sock.close()
        raise ValueError("listen_fd is not a listening loopback TCP socket")
    return sock


def _answer(message: dict[str, str]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _serve(config: MoiEmulatorConfig, listener: socket.socket | None) -> None:
    async with serve_in_background(create_moi_app(config), sock=listener) as url:
        _answer({"url": url})
        # Blocks in a worker thread until the parent closes the pipe (or dies); then the server stops.
        await anyio.to_thread.run_sync(sys.stdin.buffer.read)


def main() -> int:
    try:
        settings = json.loads(sys.stdin.buffer.readline())
        config = _config(settings)
        problems = config.problems()
        if problems:
            raise ValueError("; ".join(problems))
        listener = _listener(settings.get("listen_fd"))
    except (ValueError, KeyError, TypeError, OSError) as exc:
        _answer({"error": f"bad settings from the parent: {exc}"})
        return 2
    try:
        anyio.run(_serve, config, listener)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        _answer({"error": f"cannot start the embedded emulator{where}: {exc.strerror or exc}"})
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
