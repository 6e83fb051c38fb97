"""The embedded default: with no ``--target``, ``ingest run DIR`` sends to a local MOI emulator running
in a child process on a free loopback port, storing files under ``./.ingest/local``.

So a fresh machine with no account anywhere can run the whole pipeline, and a rerun resumes against
the same stored state (the emulator persists it in its data dir). The runner sees only the neutral
``EmbeddedDestination`` this yields.

The emulator runs in its own process (``ingest.emulators.moi.child``), not on the client's event loop:
its CPU (multipart parsing, hashing, commits) then runs on another core, which more than doubles what
the embedded default sends per second on a machine with two cores (``benchmarks/bench_embedded.py``).
This module never imports the emulator: it talks to it over two pipes, see the child's protocol.

The child is started only when the run first talks to it (``EmbeddedDestination.start``, through
``ingest.engine.deferred``): a rerun that finds every file unchanged never starts it, which was about a
second of every such run. The address is known before: this process binds and listens on the loopback
socket and hands it to the child.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import anyio
from pydantic import SecretStr

from ingest.errors import ConfigError
from ingest.platforms.moi.config import MoiTargetConfig
from ingest.platforms.registry import EmbeddedDestination

__all__ = ["EMBEDDED_VOLUME", "embedded_moi"]

EMBEDDED_VOLUME = "1"
#: Seconds the child may take to import, open its store and bind a port.
START_TIMEOUT = 60.0
#: Seconds the child gets to finish in-flight requests and close its store once told to stop.
STOP_TIMEOUT = 10.0
#: Lines of the child's stderr kept for an error message (it is drained all along so it never blocks).
STDERR_LINES = 20
#: Connections that may wait for the child to start serving (the engine opens at most ``concurrency + 8``).
LISTEN_BACKLOG = 1024
#: glibc's allocator settings for the child, read from its environment when it starts (other C libraries
#: ignore them; a value already in the environment wins). Without them the child's memory grew with every
#: file stored, about 50 B a file (110 MiB after a million), while its live heap stayed flat: glibc raises
#: its mmap threshold each time a large block (a request's in-memory parts, up to 1 MiB) is freed, so later
#: large blocks come from the heap, between small long-lived ones, and the freed space can never be given
#: back. A fixed threshold keeps large blocks in their own mappings, a low trim threshold returns the top
#: of the heap, and two arenas stop each worker thread from keeping a heap of its own.
#: ``benchmarks/README.md``, "Issue 11", item 16: 200,000 files, child growth after the first minute
#: 5.8 % -> 0 %.
CHILD_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "131072",
    "MALLOC_ARENA_MAX": "2",
}


@asynccontextmanager
async def embedded_moi(data_dir: Path) -> AsyncIterator[EmbeddedDestination]:
    """Run the MOI emulator for the duration of the block; yield where it is and how to reach it."""
    data_dir = data_dir.resolve()  # noqa: ASYNC240 - once per run, before any work starts
    data_dir.mkdir(parents=True, exist_ok=True)
    # A key derived from the data dir: stable, local, and not a secret anyone else holds.
    key = hashlib.sha256(str(data_dir).encode()).hexdigest()[:32]
    settings = {"data_dir": str(data_dir), "api_key": key, "volumes": [EMBEDDED_VOLUME], "task_delay_ms": 20}
    launcher = _Launcher(settings)
    try:
        yield EmbeddedDestination(
            config=MoiTargetConfig(endpoint=launcher.url, api_key=SecretStr(key), volume_id=EMBEDDED_VOLUME),
            description="the embedded local MOI emulator",
            identity=f"embedded-moi:{data_dir}",
            stored_at=data_dir,  # files of up to 64 KiB live in its database there, bigger ones under 1/
            start=launcher.start,
        )
    finally:
        with anyio.CancelScope(shield=True):
            await launcher.stop()


class _Launcher:
    """The child, started on the first ``start()``; its listening socket is bound from the outset."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=LISTEN_BACKLOG)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._settings = settings
        self._child: _Child | None = None
        self._lock = anyio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self._child is not None:
                return
            if self._listener.fileno() < 0:
                raise ConfigError("the embedded local MOI emulator could not be started; run again")
            listener = self._listener
            try:
                self._child = await anyio.to_thread.run_sync(_start, self._settings, listener)
            finally:
                # The child holds its own copy: with this one closed, a child that dies resets the waiting
                # connections at once instead of leaving them to time out.
                listener.close()

    async def stop(self) -> None:
        self._listener.close()
        if self._child is not None:
            await anyio.to_thread.run_sync(self._child.stop)


class _Child:
    """The running emulator process, its address, and the tail of what it wrote to stderr."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.url = ""
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        assert process.stderr is not None
        self._drain = threading.Thread(target=self._drain_stderr, args=(process.stderr,), daemon=True)
        self._drain.start()

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.stderr_tail.append(raw.decode("utf-8", "replace").rstrip())

    def stop(self) -> None:
        """Close its stdin (the signal to stop), give it ``STOP_TIMEOUT`` to close its store, then kill."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:
            pass  # it is gone already
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._drain.join(1.0)
        if self.process.stderr is not None and not self._drain.is_alive():
            self.process.stderr.close()  # read to its end by the drain; a drain still reading keeps it

    def failure(self, what: str) -> ConfigError:
        last = next((line for line in reversed(self.stderr_tail) if line.strip()), "")
        detail = f" ({last.strip()[:200]})" if last else ""
        return ConfigError(f"the embedded local MOI emulator {what}{detail}; run with --target to use a real platform")


def _start(settings: dict[str, Any], listener: socket.socket) -> _Child:
    """Start the child, hand it its settings and ``listener``, and wait for its answer (blocking: run in
    a thread)."""
    settings = {**settings, "listen_fd": listener.fileno()}
    process = subprocess.Popen(
        [sys.executable, "-m", "ingest.emulators.moi.child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
        # Its own session: Ctrl-C in the terminal reaches only the run, which then stops the child
        # in order (after its last requests), instead of killing the emulator under in-flight uploads.
        start_new_session=True,
        pass_fds=(listener.fileno(),),
    )
    child = _Child(process)
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        process.stdin.write(json.dumps(settings).encode() + b"\n")
        process.stdin.flush()
    except OSError:
        child.stop()
        raise child.failure("did not start") from None
    answer = _read_answer(process.stdout)
    if answer is None or "url" not in answer:
        child.stop()
        if answer is not None and "error" in answer:
            raise ConfigError(str(answer["error"])[:300])
        raise child.failure("did not start")
    child.url = str(answer["url"])
    return child


def _read_answer(stdout: IO[bytes]) -> dict[str, Any] | None:
    """The child's one-line answer, or ``None`` when it exits (or stays silent for ``START_TIMEOUT``)."""
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT)
    if not line or not line[0]:
        return None
    try:
        answer = json.loads(line[0])
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _child_env() -> dict[str, str]:
    env = {**CHILD_MALLOC_ENV, **os.environ}
    # The child imports this very package, from wherever the parent imported it (a checkout, a venv).
    package_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env
