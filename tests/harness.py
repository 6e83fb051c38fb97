"""Per-target test harnesses: how to start each platform's emulator and read back what it stored.

The conformance suite (``test_conformance.py``) and the crash tests run against every harness listed
in ``HARNESSES``; a new target joins them by adding its harness here, in the manner of rclone's
``fstests``. A harness speaks in platform-neutral terms: faults, stored files, flags for the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from pydantic import SecretStr

from ingest.targets.moi import MoiTargetConfig


@dataclass(frozen=True)
class Faults:
    latency_ms: int = 0
    error_rate: float = 0.0
    rate_limit: float | None = None
    reset_rate: float = 0.0
    task_fail_rate: float = 0.0
    task_delay_ms: int = 30


@dataclass(frozen=True)
class StoredFile:
    path: str
    size: int
    md5: str
    uploads: int


class Deployment(Protocol):
    """A running emulator, seen from a test."""

    url: str
    target_config: Any
    #: Flags for ``ingest run`` (besides the source) and environment holding the secrets.
    cli_flags: list[str]
    env: dict[str, str]

    async def stored(self) -> dict[str, StoredFile]: ...
    async def request_counts(self) -> dict[str, int]: ...
    def set_faults(self, **changes: Any) -> None: ...


@dataclass
class MoiDeployment:
    url: str
    app: Any
    volume_id: str
    api_key: str
    data_dir: Path
    target_config: MoiTargetConfig = field(init=False)
    cli_flags: list[str] = field(init=False)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.target_config = MoiTargetConfig(
            endpoint=self.url, api_key=SecretStr(self.api_key), volume_id=self.volume_id
        )
        self.cli_flags = ["--target", "moi", "--endpoint", self.url, "--volume-id", self.volume_id]
        self.env = {"MOI_KEY": self.api_key}

    async def _get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as s, s.get(self.url + path) as r:
            r.raise_for_status()
            return await r.json()

    async def stored(self) -> dict[str, StoredFile]:
        return {
            f["path"]: StoredFile(f["path"], f["size"], f["md5"], f["uploads"])
            for f in await self._get("/_emulator/files")
            if str(f["volume_id"]) == self.volume_id
        }

    async def request_counts(self) -> dict[str, int]:
        return dict((await self._get("/_emulator/stats"))["requests"])

    def set_faults(self, **changes: Any) -> None:
        from ingest.emulators.moi import MOI_STATE

        state = self.app[MOI_STATE]
        for key, value in changes.items():
            if key in ("task_fail_rate", "task_delay_ms"):
                setattr(state, key, value)
            else:
                setattr(state.faults.settings, key, value)


class MoiHarness:
    name = "moi"
    api_key = "test-key"
    volume_id = "1001"

    @asynccontextmanager
    async def start(
        self, data_dir: Path, faults: Faults = Faults(), *, seed: int | None = 7
    ) -> AsyncIterator[MoiDeployment]:
        from ingest.emulators._server import serve_in_background
        from ingest.emulators.moi import MoiEmulatorConfig, create_moi_app

        app = create_moi_app(
            MoiEmulatorConfig(
                data_dir=data_dir,
                api_key=self.api_key,
                volumes=(self.volume_id,),
                task_delay_ms=faults.task_delay_ms,
                latency_ms=faults.latency_ms,
                error_rate=faults.error_rate,
                rate_limit=faults.rate_limit,
                reset_rate=faults.reset_rate,
                task_fail_rate=faults.task_fail_rate,
                seed=seed,
            )
        )
        async with serve_in_background(app) as url:
            yield MoiDeployment(url, app, self.volume_id, self.api_key, data_dir)

    def serve_command(self, data_dir: Path, faults: Faults = Faults()) -> list[str]:
        """``ingest serve`` on a free port, for tests that kill the client process."""
        return [
            sys.executable, "-m", "ingest", "serve", "moi", "--port", "0", "--data-dir", str(data_dir),
            "--api-key", self.api_key, "--volume", self.volume_id, "--task-delay-ms", str(faults.task_delay_ms),
            "--latency-ms", str(faults.latency_ms),
        ]  # fmt: skip

    def cli(self, url: str) -> tuple[list[str], dict[str, str]]:
        return ["--target", "moi", "--endpoint", url, "--volume-id", self.volume_id], {"MOI_KEY": self.api_key}


MOI = MoiHarness()
HARNESSES = [MOI]


class ServerProcess:
    """An emulator in its own process (``ingest serve``), read back through its test hooks."""

    def __init__(self, command: list[str], *, env: dict[str, str] | None = None) -> None:
        # stderr goes to a file: an undrained pipe would block the server once it filled up.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env={**os.environ, **(env or {})}
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.stop()
            raise RuntimeError(f"emulator did not start: {line!r} {self.stderr()}")
        self.url = line[line.index("http://") :].split()[0]

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def run_cli(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m ingest ARGS`` in a subprocess, with a clean environment plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MOI_KEY", "INGEST_FAILPOINT")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout
    )
