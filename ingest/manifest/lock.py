"""One run per local manifest: an exclusive lock on ``M.lock`` next to the manifest file.

The lock is an ``fcntl.flock`` on an open file: the kernel releases it when its process dies, however it
dies (SIGKILL included), so a lock left by a killed run is taken over by the next run without a prompt.
The file holds who took it (pid, host, time) for the message a second run prints:
``manifest M is in use by ingest pid N on host H since T; wait for it or stop it`` (exit 2).

Within one process the lock is re-entrant (a scheduled run holds it across its runs, and each run takes
it again). Shared jobs (``--shared``, ``--processes``, PostgreSQL) never take it: their processes join
one job under leases (``ingest.manifest.jobs``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ingest.errors import ConfigError

__all__ = ["ManifestInUse", "hold", "lock_path"]


class ManifestInUse(ConfigError):
    """Another ingest process runs on this manifest (exit 2)."""


_held: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth)


def lock_path(manifest: Path) -> Path:
    return manifest.with_name(manifest.name + ".lock")


def _holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(data["since"])))
        return f"ingest pid {data['pid']} on host {data['host']} since {since}"
    except (ValueError, KeyError, OSError, TypeError):
        return "another ingest process"


@contextmanager
def hold(manifest: Path) -> Iterator[None]:
    """Hold the manifest's lock for the block; ``ManifestInUse`` at once when another process holds it."""
    path = lock_path(manifest)
    key = str(path.resolve())
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot lock manifest {manifest}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise ManifestInUse(f"manifest {manifest} is in use by {holder}; wait for it or stop it") from None
    try:
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _held[key] = (fd, 1)
        yield
    finally:
        del _held[key]
        os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock
