"""Soaks: many files under every fault at once, and repeated crashes. Marked ``soak``; sized by
``INGEST_SOAK_SCALE``: 0.1 by default (what CI and a plain `pytest` run), 1 = full size."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import ingest
from ingest.config import EngineConfig, RunConfig, SourceConfig
from tests.harness import HARNESSES, Faults, ServerProcess, run_cli
from tests.test_crash import emulator_files, manifest_states

SCALE = float(os.environ.get("INGEST_SOAK_SCALE", "0.1"))


def many_files(root: Path, count: int, seed: int = 1) -> dict[str, int]:
    rng = random.Random(seed)
    sizes: dict[str, int] = {}
    for i in range(count):
        rel = f"d{i % 37}/e{i % 11}/file{i:06d}.txt"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        size = rng.choice((0, 1, 100, 4096, 20_000))
        path.write_bytes(rng.randbytes(size))
        sizes[rel] = size
    return sizes


@pytest.mark.soak
@pytest.mark.timeout(3600)  # full scale takes minutes on 2 cores; CI's reduced scale takes seconds
@pytest.mark.anyio
@pytest.mark.parametrize("harness", HARNESSES, ids=lambda h: h.name)
async def test_every_fault_at_once(harness: Any, tmp_path: Path) -> None:
    """Thousands of files through 5xx, resets, task failures and latency: all done, each stored once."""
    count = min(max(200, int(20_000 * SCALE)), getattr(harness, "max_documents", 20_000))
    sizes = many_files(tmp_path / "src", count)
    faults = Faults(latency_ms=2, error_rate=0.05, reset_rate=0.05, task_fail_rate=0.1, task_delay_ms=50)
    async with harness.start(tmp_path / "data", faults) as dep:
        summary = await ingest.run(
            RunConfig(
                source=SourceConfig(path=tmp_path / "src"),
                target=dep.target_config,
                engine=EngineConfig(concurrency=32, max_attempts=10, request_retries=20, poll_max=0.5),
                manifest=tmp_path / "m.db",
                quiet=True,
            )
        )
        dep.set_faults(error_rate=0.0, reset_rate=0.0, latency_ms=0)
        stored = await dep.stored()
    assert (summary.done, summary.failed) == (count, 0)
    assert {p: f.size for p, f in stored.items()} == sizes
    assert all(f.uploads == 1 for f in stored.values())


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("harness", HARNESSES, ids=lambda h: h.name)
def test_repeated_crashes_converge(harness: Any, tmp_path: Path) -> None:
    """Killed again and again at random instants, reruns still end with every file stored once."""
    count = max(150, int(3000 * SCALE))
    sizes = many_files(tmp_path / "docs", count, seed=2)
    server = ServerProcess(harness.serve_command(tmp_path / "data", Faults(task_delay_ms=100, latency_ms=2)))
    rng = random.Random(3)
    try:
        flags, env = harness.cli(server.url)
        args = ["run", "docs", *flags, "--manifest", "m.db", "--concurrency", "8", "-q"]
        full_env = {k: v for k, v in os.environ.items() if k != "INGEST_FAILPOINT"} | env
        for _ in range(5):
            proc = subprocess.Popen([sys.executable, "-m", "ingest", *args], cwd=tmp_path, env=full_env)
            time.sleep(rng.uniform(0.6, 2.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        final = run_cli(args, env=env, cwd=tmp_path, timeout=600)
        assert final.returncode == 0, final.stdout + final.stderr
        stored = emulator_files(server.url)
    finally:
        server.stop()
    assert {p: f["size"] for p, f in stored.items()} == sizes
    assert {p: f["uploads"] for p, f in stored.items()} == dict.fromkeys(sizes, 1)
    assert set(manifest_states(tmp_path / "m.db").values()) == {"done"}
