"""Scale-out: one job worked by several processes through one manifest (SQLite on one machine, a real
PostgreSQL for many), with workers killed, paused and the planner killed mid-walk. The emulator runs
in its own process and tells how many times each file was stored: every file must be stored exactly
once and the manifest must end all done.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ingest.manifest import open_manifest, parse_location
from tests.conftest import make_tree
from tests.harness import MOI, Faults, ServerProcess, run_cli
from tests.test_crash import emulator_files

LEASE = "2"


def start_worker(
    args: list[str], env: dict[str, str], cwd: Path, failpoint: str | None = None
) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if k != "INGEST_FAILPOINT"} | env
    if failpoint:
        full["INGEST_FAILPOINT"] = failpoint
    return subprocess.Popen(
        [sys.executable, "-m", "ingest", *args], cwd=cwd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def counts(location: str) -> dict[str, int]:
    m = open_manifest(parse_location(location))
    try:
        return m.counts()
    finally:
        m.close()


def wait_until(check: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_exactly_once(url: str, expected: dict[str, str]) -> None:
    stored = emulator_files(url)
    assert {p: f["md5"] for p, f in stored.items()} == expected
    assert {p: f["uploads"] for p, f in stored.items()} == dict.fromkeys(expected, 1)


def test_four_workers_on_postgres_with_kills_store_every_file_once(pg: Any, tmp_path: Path) -> None:
    """4 workers share one PostgreSQL job. One is killed mid-send, one mid-poll, and the first planner
    mid-walk: the survivors take over their leases and continue the walk; every file is stored once."""
    expected = make_tree(tmp_path / "docs", 400, size=200)
    location = pg.url(f"four-{uuid.uuid4().hex[:8]}")
    server = ServerProcess(MOI.serve_command(tmp_path / "data", Faults(task_delay_ms=200, latency_ms=30)))
    try:
        flags, env = MOI.cli(server.url)
        args = ["run", "docs", *flags, "--manifest", location, "--lease", LEASE, "--concurrency", "4",
                "--batch-files", "1", "--json", "-q", "--poll-initial", "0.05", "--poll-max", "0.2"]  # fmt: skip
        # The first process starts alone, so it is the planner; it dies after recording part of the walk.
        planner = start_worker(args, env, tmp_path, failpoint="walk-recorded:2")
        wait_until(lambda: planner.poll() is not None or _planner(location) is not None, "the first planner")
        mid_send = start_worker(args, env, tmp_path, failpoint="mid-body:5")
        mid_poll = start_worker(args, env, tmp_path, failpoint="after-receipt:6")
        assert finish(planner) == -signal.SIGKILL
        survivors = [start_worker(args, env, tmp_path) for _ in range(2)]
        assert finish(mid_send) == -signal.SIGKILL
        assert finish(mid_poll) == -signal.SIGKILL
        for proc in survivors:
            _out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        stored_once = emulator_files(server.url)
    finally:
        server.stop()
    assert {p: f["uploads"] for p, f in stored_once.items()} == dict.fromkeys(expected, 1)
    assert {p: f["md5"] for p, f in stored_once.items()} == expected
    assert counts(location) == {"pending": 0, "uploading": 0, "processing": 0, "done": 400, "failed": 0}
    m = open_manifest(parse_location(location))
    try:
        assert m.walk_state().done
        assert sum(w.takeovers for w in m.workers()) > 0  # the dead workers' files were taken over
    finally:
        m.close()


def test_a_paused_worker_cannot_overwrite_the_one_that_took_over(pg: Any, tmp_path: Path) -> None:
    """SIGSTOP a worker right after it recorded its intent, past its lease; another takes its files and
    finishes them; SIGCONT: its late writes are refused, nothing is stored twice, nothing regresses."""
    expected = make_tree(tmp_path / "docs", 40)
    location = pg.url(f"fence-{uuid.uuid4().hex[:8]}")
    server = ServerProcess(MOI.serve_command(tmp_path / "data", Faults(task_delay_ms=100, latency_ms=10)))
    try:
        flags, env = MOI.cli(server.url)
        args = ["run", "docs", *flags, "--manifest", location, "--lease", LEASE, "--concurrency", "2",
                "--batch-files", "1", "--json", "-q", "--poll-initial", "0.05"]  # fmt: skip
        paused = start_worker(args, env, tmp_path, failpoint="after-intent-stop:3")
        wait_until(lambda: _stopped(paused.pid), "the worker to stop itself")
        other = start_worker(args, env, tmp_path)
        _out, err = other.communicate(timeout=120)
        assert other.returncode == 0, err
        assert counts(location)["done"] == 40
        os.kill(paused.pid, signal.SIGCONT)
        _out, err = paused.communicate(timeout=60)
        assert paused.returncode == 0, err
        stored = emulator_files(server.url)
    finally:
        server.stop()
    assert {p: f["uploads"] for p, f in stored.items()} == dict.fromkeys(expected, 1)
    assert counts(location)["done"] == 40  # no state regression from the late writer
    m = open_manifest(parse_location(location))
    try:
        assert sum(w.lost for w in m.workers()) > 0  # the paused worker's late writes were refused
    finally:
        m.close()


def finish(proc: subprocess.Popen[str]) -> int:
    proc.communicate(timeout=90)
    return proc.returncode


def _planner(location: str) -> str | None:
    try:
        m = open_manifest(parse_location(location))
    except Exception:
        return None
    try:
        return m.walk_state().planner
    finally:
        m.close()


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def two_processes_store_every_file_once(
    tmp_path: Path, source: list[str], source_env: dict[str, str], expected: dict[str, str]
) -> None:
    """``ingest run SOURCE --processes 2`` on a SQLite manifest: each file stored once, all done, the work
    shared by two workers."""
    server = ServerProcess(MOI.serve_command(tmp_path / "data", Faults(task_delay_ms=50, latency_ms=20)))
    try:
        flags, env = MOI.cli(server.url)
        args = ["run", *source, *flags, "--manifest", "m.db", "--processes", "2", "--concurrency", "4", "-q"]
        result = run_cli(args, env={**env, **source_env}, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert_exactly_once(server.url, expected)
    finally:
        server.stop()
    assert counts(str(tmp_path / "m.db"))["done"] == len(expected)
    m = open_manifest(tmp_path / "m.db")
    try:
        assert len(m.workers()) == 2
        assert sum(w.done for w in m.workers()) == len(expected)
    finally:
        m.close()


def test_processes_2_with_sqlite_store_every_file_once(tmp_path: Path) -> None:
    """``--processes 2`` on one SQLite manifest: the same exactly-once result as one process, one summary."""
    expected = make_tree(tmp_path / "docs", 120)
    two_processes_store_every_file_once(tmp_path, ["docs"], {}, expected)


@pytest.mark.anyio
async def test_retry_failed_with_a_postgres_manifest(pg: Any, tmp_path: Path) -> None:
    """``ingest retry-failed --manifest postgresql://…?job=NAME`` re-sends the job's failed files with the
    settings its run recorded (the URL as given: the stored one has no password); a URL naming no job
    is refused with one line."""
    import anyio

    expected = make_tree(tmp_path / "docs", 6)
    location = pg.url(f"retry-{uuid.uuid4().hex[:8]}")
    async with MOI.start(tmp_path / "data", Faults(task_fail_rate=1.0)) as dep:
        flags, env = MOI.cli(dep.url)
        args = ["run", "docs", *flags, "--manifest", location, "--max-attempts", "1", "--json", "-q"]
        first = await anyio.to_thread.run_sync(lambda: run_cli(args, env=env, cwd=tmp_path))
        assert first.returncode == 1, first.stderr
        assert counts(location)["failed"] == 6
        dep.set_faults(task_fail_rate=0.0)
        retry = ["retry-failed", "--manifest", location, "--json"]
        retried = await anyio.to_thread.run_sync(lambda: run_cli(retry, env=env, cwd=tmp_path))
        assert retried.returncode == 0, retried.stderr
        no_job = ["retry-failed", "--manifest", location.split("?")[0]]
        refused = await anyio.to_thread.run_sync(lambda: run_cli(no_job, env=env, cwd=tmp_path))
        stored = await dep.stored()
    assert '"done": 6' in retried.stdout
    assert counts(location)["done"] == 6
    assert {p: f.md5 for p, f in stored.items()} == expected
    assert refused.returncode != 0
    assert refused.stderr.strip().count("\n") == 0
    assert "names no job" in refused.stderr


# ----- bucket sources: workers read objects straight from the bucket, no shared file system ----------


def bucket_objects(n: int) -> dict[str, bytes]:
    """``n`` objects with the keys that are no plain file names: ``//``, a leading ``/``, non-ASCII."""
    names = ["a//f{:03d}.txt", "/lead{:03d}.txt", "é文/空{:03d}.txt", "d/e/f{:03d}.txt"]
    return {names[i % 4].format(i): f"object {i} ".encode() * (i % 5 + 1) for i in range(n)}


def fill_bucket(objects: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    """A new bucket holding ``objects`` and a folder marker; the expected ``{path: md5}``."""
    import hashlib

    from ingest.sources.bucket import path_of
    from tests.bucket_harness import new_bucket, s3_client

    bucket = new_bucket()
    s3 = s3_client()
    for key, data in {**objects, "d/": b""}.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    return bucket, {path_of(k): hashlib.md5(v).hexdigest() for k, v in objects.items()}


def test_processes_2_on_a_bucket_store_every_object_once(tmp_path: Path) -> None:
    """``ingest run s3://… --processes 2`` with a SQLite manifest: the planner lists, both workers read
    their claimed objects from the bucket by manifest path; every object is stored once."""
    from tests.bucket_harness import BUCKET_ENV, source_flags

    bucket, expected = fill_bucket(bucket_objects(120))
    two_processes_store_every_file_once(tmp_path, source_flags(bucket), BUCKET_ENV, expected)


def test_bucket_workers_on_postgres_store_every_object_once_and_refuse_another_source(pg: Any, tmp_path: Path) -> None:
    """Workers of one PostgreSQL job on a bucket; the planner is killed mid-walk. A worker started on
    another prefix, or on the same prefix with other filters (another listing), is refused with one
    line, exit 2; the others finish the walk and store every object once."""
    from tests.bucket_harness import BUCKET_ENV, source_flags

    bucket, expected = fill_bucket(bucket_objects(250))
    location = pg.url(f"bucket-{uuid.uuid4().hex[:8]}")
    server = ServerProcess(MOI.serve_command(tmp_path / "data", Faults(task_delay_ms=50, latency_ms=10)))
    try:
        flags, env = MOI.cli(server.url)
        env = {**env, **BUCKET_ENV}
        tail = [*flags, "--manifest", location, "--lease", LEASE, "--concurrency", "4", "--json", "-q",
                "--poll-initial", "0.05", "--poll-max", "0.2"]  # fmt: skip
        args = ["run", *source_flags(bucket), *tail]
        # The first worker plans alone and dies once it recorded the first stretch of the walk.
        planner = start_worker(args, env, tmp_path, failpoint="walk-recorded:1")
        assert finish(planner) == -signal.SIGKILL
        elsewhere = ["run", f"s3://{bucket}/d/", *source_flags(bucket)[1:], *tail]
        filtered = [*args, "--exclude", "a"]
        refusals = [run_cli(a, env=env, cwd=tmp_path) for a in (elsewhere, filtered)]
        workers = [start_worker(args, env, tmp_path) for _ in range(2)]
        for proc in workers:
            _out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
        assert_exactly_once(server.url, expected)
    finally:
        server.stop()
    for refused, says in zip(refusals, ("records", "differs from the one the planner"), strict=True):
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert says in lines[0]
        assert BUCKET_ENV["AWS_SECRET_ACCESS_KEY"] not in refused.stderr
    assert "bucket and prefix" in refusals[1].stderr
    assert counts(location) == {"pending": 0, "uploading": 0, "processing": 0, "done": 250, "failed": 0}
