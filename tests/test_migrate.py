"""``ingest migrate``: a moto bucket behind an S3 connector, loaded into a MOI volume by load tasks,
resumably: killed with SIGKILL or interrupted midway, the same command finishes the job and every
object lands in the volume exactly once, with no load task created twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from ingest.platforms.moi.loadtasks import MigrateConfig, migrate
from ingest.platforms.moi.wire import ConnectorCreate, IntervalType, SourceType
from tests.harness import ServerProcess, run_cli
from tests.moi_fixtures import KEY, VOLUME, Bucket, Moi, bucket, eventually, moi, moto_endpoint, running_moi

__all__ = ["bucket", "moi", "moto_endpoint"]  # fixtures, imported for pytest


def config(moi_url: str, connector_id: int, manifest: Path, **changes: Any) -> MigrateConfig:
    settings: dict[str, Any] = {
        "endpoint": moi_url,
        "api_key": SecretStr(KEY),
        "connector_id": connector_id,
        "volume_id": VOLUME,
        "manifest": manifest,
        "uris_per_task": 7,
        "poll_initial": 0.02,
        "poll_max": 0.1,
        "quiet": True,
        "progress": False,
    }
    settings.update(changes)
    return MigrateConfig(**settings)


async def s3_connector(moi: Moi, bucket: Bucket) -> int:
    async with moi.client() as client:
        created = await client.create_connector(
            ConnectorCreate(name="bucket", source_type=SourceType.S3, config=bucket.s3_config())
        )
    return created.id


def manifest_states(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT path, state FROM files").fetchall())


# ----- in process --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_migrate_loads_the_bucket_once_and_a_rerun_skips_it(moi: Moi, bucket: Bucket, tmp_path: Path) -> None:
    """Every object is loaded by tasks of uris_per_task uris; a rerun creates nothing and skips all."""
    made = bucket.fill(40)
    bucket.put("docs/folder/", b"")  # a folder marker is never loaded
    connector = await s3_connector(moi, bucket)
    manifest = tmp_path / "m.db"
    summary = await migrate(config(moi.url, connector, manifest))
    assert (summary.done, summary.failed, summary.tasks_created) == (40, 0, 6)
    stored = await moi.stored()
    assert summary.sent_bytes == sum(f["size"] for f in stored.values())
    assert {k: (v["md5"], v["uploads"]) for k, v in stored.items()} == {k: (m, 1) for k, m in made.items()}
    assert set(manifest_states(manifest).values()) == {"done"}
    again = await migrate(config(moi.url, connector, manifest))
    assert (again.done, again.skipped, again.tasks_created) == (0, 40, 0)
    assert "loaded" in "\n".join(summary.lines())


@pytest.mark.anyio
async def test_file_types_limit_what_is_loaded(moi: Moi, bucket: Bucket, tmp_path: Path) -> None:
    """--file-types passes the filter to /connectors/files/list: only those files are loaded."""
    made = bucket.fill(9)
    connector = await s3_connector(moi, bucket)
    summary = await migrate(config(moi.url, connector, tmp_path / "m.db", file_types=(2,)))
    assert summary.done == 3
    assert set(await moi.stored()) == {k for k in made if k.endswith(".pdf")}


@pytest.mark.anyio
async def test_failed_files_are_retried_then_recorded_and_a_rerun_loads_them(bucket: Bucket, tmp_path: Path) -> None:
    """Files that keep failing are retried through /task/retry up to max_attempts, then recorded as failed
    with MOI's reason; once the platform works again, a rerun loads exactly those."""
    made = bucket.fill(6)
    manifest = tmp_path / "m.db"
    async with running_moi(tmp_path / "moi", task_fail_rate=1.0) as emulator:
        connector = await s3_connector(emulator, bucket)
        summary = await migrate(config(emulator.url, connector, manifest, max_attempts=2))
        assert (summary.done, summary.failed, summary.exit_code) == (0, 6, 1)
        assert all("injected fault" in reason for _, reason in summary.failures)
        with sqlite3.connect(manifest) as conn:
            assert {row[0] for row in conn.execute("SELECT attempts FROM files")} == {2}
        emulator.state.task_fail_rate = 0.0
        again = await migrate(config(emulator.url, connector, manifest))
        assert (again.done, again.failed) == (6, 0)
        assert {k: v["uploads"] for k, v in (await emulator.stored()).items()} == dict.fromkeys(made, 1)


@pytest.mark.anyio
async def test_flaky_loads_succeed_within_max_attempts(bucket: Bucket, tmp_path: Path) -> None:
    """With half of the loads failing, retries through /task/retry get every file loaded."""
    made = bucket.fill(12)
    async with running_moi(tmp_path / "moi", task_fail_rate=0.5, seed=3) as emulator:
        connector = await s3_connector(emulator, bucket)
        summary = await migrate(config(emulator.url, connector, tmp_path / "m.db", max_attempts=20))
        assert (summary.done, summary.failed) == (12, 0)
        assert set(await emulator.stored()) == set(made)


@pytest.mark.anyio
async def test_schedule_creates_periodic_tasks_that_keep_loading(bucket: Bucket, tmp_path: Path) -> None:
    """--schedule hour creates hourly tasks; the platform re-runs them (clock sped up) and picks up changes."""
    made = bucket.fill(4)
    async with running_moi(tmp_path / "moi", clock_speed=3600) as emulator:
        connector = await s3_connector(emulator, bucket)
        summary = await migrate(config(emulator.url, connector, tmp_path / "m.db", schedule="hour", uris_per_task=2))
        assert (summary.done, summary.tasks_created, len(summary.periodic_tasks)) == (4, 2, 2)
        async with emulator.client() as client:
            tasks = [await client.get_task(task_id) for task_id in summary.periodic_tasks]
        assert {t.interval_type for t in tasks} == {IntervalType.HOUR}
        key = sorted(made)[0]
        new_md5 = bucket.put(key, b"changed after the migration")
        await eventually(lambda: reloaded(emulator, key, new_md5))
        assert any("periodic task(s) keep loading" in line for line in summary.lines())


async def reloaded(emulator: Moi, key: str, md5: str) -> bool:
    return (await emulator.stored())[key]["md5"] == md5


# ----- as a command, killed and interrupted ------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProcess]:
    """The MOI emulator in its own process, so that it outlives the killed client as a platform would."""
    command = [
        sys.executable, "-m", "ingest", "serve", "moi", "--port", "0", "--data-dir", str(tmp_path / "moi"),
        "--api-key", KEY, "--volume", VOLUME, "--task-delay-ms", "2", "--load-concurrency", "8",
    ]  # fmt: skip
    proc = ServerProcess(command)
    yield proc
    proc.stop()


def create_connector_cli(url: str, bucket: Bucket) -> int:
    result = run_cli(
        ["moi", "connectors", "create", "--endpoint", url, "--name", "bucket", "--type", "s3", "--json",
         "--set", f"endpoint={bucket.endpoint}", "--set", "access_key_id=AKIDEXAMPLE",
         "--set", f"bucket_name={bucket.name}", "--set", "region=us-east-1", "--set", "path_style=true"],
        env={"MOI_KEY": KEY, "MOI_CONNECTOR_SECRET": "s3cr3t-Example-Key"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["id"])


def get(url: str, path: str) -> Any:
    request = urllib.request.Request(url + path, headers={"moi-key": KEY})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)


def migrate_args(url: str, connector: int, manifest: Path) -> list[str]:
    return [
        "migrate", "--endpoint", url, "--connector", str(connector), "--volume-id", VOLUME,
        "--uris-per-task", "20", "--manifest", str(manifest), "--json",
    ]  # fmt: skip


def wait_for_done(manifest: Path, proc: subprocess.Popen[Any], count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if list(manifest_states(manifest).values()).count("done") >= count:
                return
        except sqlite3.Error:
            pass  # not created yet
        time.sleep(0.01)
    raise AssertionError("the migration finished or stalled before the kill")


@pytest.mark.parametrize("kill_at", ["after-intent:4", "after-submit:3", "timer"])
def test_sigkill_midway_then_rerun_loads_every_object_once(
    served: ServerProcess, bucket: Bucket, tmp_path: Path, kill_at: str
) -> None:
    """A few hundred objects (240); the client is killed -9 midway (before a task is created, after MOI created
    one but before the manifest knew its id, or at any instant); the rerun loads every object exactly once
    and creates no task twice."""
    made = bucket.fill(240)
    connector = create_connector_cli(served.url, bucket)
    manifest = tmp_path / "m.db"
    args = migrate_args(served.url, connector, manifest)
    env = {**{k: v for k, v in os.environ.items() if k != "INGEST_FAILPOINT"}, "MOI_KEY": KEY}
    if kill_at == "timer":
        proc = subprocess.Popen([sys.executable, "-m", "ingest", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for_done(manifest, proc, 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    else:
        killed = subprocess.run(
            [sys.executable, "-m", "ingest", *args], env={**env, "INGEST_FAILPOINT": kill_at},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = run_cli(args, env={"MOI_KEY": KEY})
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["failed"] == 0
    assert summary["done"] + summary["skipped"] == 240
    stored = {f["path"]: f for f in get(served.url, "/_emulator/files")}
    assert {k: (f["md5"], f["uploads"]) for k, f in stored.items()} == {k: (m, 1) for k, m in made.items()}
    tasks = get(served.url, "/task/list?page_size=1000")["data"]
    assert tasks["total"] == 12  # 240 uris / 20 per task: no task was created twice
    uris = [u for t in tasks["tasks"] for u in t["source_config"]["common_file_task_config"]["uris"]]
    assert sorted(uris) == sorted(made)
    assert set(manifest_states(manifest).values()) == {"done"}


def test_sigint_exits_130_and_the_rerun_finishes(served: ServerProcess, bucket: Bucket, tmp_path: Path) -> None:
    """Ctrl-C stops the migration with exit 130 and a one-line hint; the same command then finishes it."""
    made = bucket.fill(100)
    connector = create_connector_cli(served.url, bucket)
    manifest = tmp_path / "m.db"
    args = migrate_args(served.url, connector, manifest)
    env = {**{k: v for k, v in os.environ.items() if k != "INGEST_FAILPOINT"}, "MOI_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "ingest", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_done(manifest, proc, 20)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    rerun = run_cli(args, env={"MOI_KEY": KEY})
    assert rerun.returncode == 0, rerun.stderr
    stored = {f["path"]: f["uploads"] for f in get(served.url, "/_emulator/files")}
    assert stored == dict.fromkeys(made, 1)


def test_unknown_connector_or_volume_is_a_one_line_usage_error(
    served: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown connector or volume stops before anything is created, with exit 2 and one line."""
    from ingest.cli.main import main

    manifest = tmp_path / "m.db"
    monkeypatch.setenv("MOI_KEY", KEY)
    assert main(migrate_args(served.url, 4242, manifest)) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "ingest: error: MOI has no connector 4242; see `ingest moi connectors list`"
    ]
    args = migrate_args(served.url, 4242, manifest)
    args[args.index("--volume-id") + 1] = "nope"
    assert main(args) == 2
    assert "volume nope does not exist" in capsys.readouterr().err
    monkeypatch.delenv("MOI_KEY")
    assert main(migrate_args(served.url, 4242, manifest)) == 2
    assert "MOI_KEY" in capsys.readouterr().err
