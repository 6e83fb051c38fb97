"""Crash safety: a client killed with SIGKILL at any point, then rerun, leaves every file stored
exactly once with the right content, and a manifest in which every file is done.

The kill points are failpoints (``INGEST_FAILPOINT=name:N``, see ``ingest/_failpoints.py``) at each
step of a file's life: after the intent is durable, mid-body, after the platform accepted the files
but before the receipt is recorded, after the receipt, after done. A timed kill adds an arbitrary
instant. The emulator runs in its own process, so it outlives the client as a real platform would.

Every kill point runs on both manifest backends: SQLite for every harness, PostgreSQL (a job of its
own on the session's private server, ``--lease 2`` so the rerun takes the killed run's claims over in
seconds) for the MOI harness; the backends share the engine above the manifest contract, so one target
over PostgreSQL covers its side without doubling the suite's time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.bucket_harness import BUCKET_HARNESSES
from tests.conftest import ManifestUnderTest, make_tree, manifest_under_test
from tests.harness import ENGINE_HARNESSES, MOI, Faults, ServerProcess, run_cli

KILL_POINTS = ["after-intent:4", "mid-body:6", "after-submit:3", "after-receipt:3", "after-done:2", "timer"]
#: (harness, manifest backend): every harness on SQLite, MOI on PostgreSQL too.
CASES = [pytest.param(h, "sqlite", id=h.name) for h in ENGINE_HARNESSES] + [
    pytest.param(MOI, "postgres", id="moi-postgres")
]
#: The kill points are also checked with each target reading a bucket (``tests/bucket_harness.py``).
KILL_CASES = CASES + [pytest.param(h, "sqlite", id=h.name) for h in BUCKET_HARNESSES]


def emulator_files(url: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(url + "/_emulator/files", timeout=10) as reply:
        return {f["path"]: f for f in json.load(reply)}


def manifest_states(path: Path) -> dict[str, str]:
    """``{path: state}`` of a SQLite manifest file."""
    return ManifestUnderTest("sqlite", str(path), []).states()


def wait_for_progress(manifest: ManifestUnderTest, proc: subprocess.Popen[Any], done: int = 8) -> None:
    """Return once a few files are done (mid-run, whatever the machine's speed)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if list(manifest.states().values()).count("done") >= done:
                return
        except Exception:
            pass  # not created yet, or mid-creation
        time.sleep(0.02)
    if proc.poll() is None:
        raise AssertionError("the run stalled before the kill")
    _, err = proc.communicate()  # it exited: say why, and close its pipes
    raise AssertionError(f"the run exited {proc.returncode} before the kill: {(err or '').strip()[-500:]}")


@pytest.mark.parametrize(("harness", "backend"), KILL_CASES)
@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_sigkill_at_any_point_then_rerun_stores_every_file_once(
    harness: Any, backend: str, kill_at: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Kill -9 mid-run, rerun the same command: nothing duplicated, nothing missing, all done."""
    if kill_at.startswith("mid-body") and not harness.streams_bodies:
        pytest.skip(f"not applicable to {harness.name}: the platform reads the files itself, no body is sent")
    manifest = manifest_under_test(backend, request, tmp_path)
    expected = make_tree(tmp_path / "docs", 60)
    expected.update(
        {f"big/{k}": v for k, v in make_tree(tmp_path / "docs" / "big", 4, size=300_000, nested=False).items()}
    )
    server = ServerProcess(harness.serve_command(tmp_path / "data", Faults(task_delay_ms=150, latency_ms=5)))
    try:
        args, env = harness.run_args(
            server.url, tmp_path, "docs", manifest.flags[1], concurrency=4, read_chunk_size="64KiB"
        )
        args += manifest.flags[2:]
        if kill_at == "timer":
            full_env = {k: v for k, v in os.environ.items() if k != "INGEST_FAILPOINT"} | env
            proc = subprocess.Popen([sys.executable, "-m", "ingest", *args], cwd=tmp_path, env=full_env)
            wait_for_progress(manifest, proc)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
        else:
            killed = run_cli(args, env={**env, "INGEST_FAILPOINT": kill_at}, cwd=tmp_path)
            assert killed.returncode == -signal.SIGKILL, killed.stderr
        states = manifest.states()
        assert set(states.values()) <= {"pending", "uploading", "processing", "done", "failed"}
        if backend == "sqlite":
            assert "pending" not in states.values()  # one process records a file when it starts it
        assert "failed" not in states.values()

        rerun = run_cli(args, env=env, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        stored = emulator_files(server.url)
    finally:
        server.stop()
    assert {path: f["md5"] for path, f in stored.items()} == expected
    assert {path: f["uploads"] for path, f in stored.items()} == dict.fromkeys(expected, 1)
    assert set(manifest.states().values()) == {"done"}


@pytest.mark.parametrize(("harness", "backend"), CASES)
def test_sigint_exits_130_with_a_consistent_manifest(
    harness: Any, backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Ctrl-C stops promptly with exit 130; the manifest records the run as interrupted; rerun completes."""
    manifest = manifest_under_test(backend, request, tmp_path)
    expected = make_tree(tmp_path / "docs", 80)
    server = ServerProcess(harness.serve_command(tmp_path / "data", Faults(task_delay_ms=400, latency_ms=60)))
    try:
        args, env = harness.run_args(server.url, tmp_path, "docs", manifest.flags[1], concurrency=2, batch_files=1)
        args += manifest.flags[2:]
        full_env = {k: v for k, v in os.environ.items() if k != "INGEST_FAILPOINT"} | env
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest", *args], cwd=tmp_path, env=full_env, stderr=subprocess.PIPE, text=True
        )
        wait_for_progress(manifest, proc, done=2)  # mid-run whatever the machine's load
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "interrupted" in err
        assert "Traceback" not in err
        assert manifest.last_run_status() == "interrupted"
        states = manifest.states()
        assert 0 < list(states.values()).count("done") < 80
        if backend == "sqlite":
            assert len(states) < 80  # stopped mid-walk too (a shared job's planner records the walk up front)
        rerun = run_cli(args, env=env, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr
        stored = emulator_files(server.url)
    finally:
        server.stop()
    assert {path: f["uploads"] for path, f in stored.items()} == dict.fromkeys(expected, 1)
