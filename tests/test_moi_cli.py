"""`ingest moi connectors …` and `ingest moi tasks …` as users meet them: tables, --json, exit codes,
secrets taken from the environment and never printed in full."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ingest.cli.main import main
from tests.harness import ServerProcess
from tests.moi_fixtures import ACCESS_KEY, KEY, SECRET, VOLUME, Bucket, bucket, moto_endpoint

__all__ = ["bucket", "moto_endpoint"]  # fixtures, imported for pytest


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("moi")
    proc = ServerProcess(
        [sys.executable, "-m", "ingest", "serve", "moi", "--port", "0", "--data-dir", str(data_dir),
         "--api-key", KEY, "--volume", VOLUME, "--task-delay-ms", "0"]
    )  # fmt: skip
    yield proc
    proc.stop()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``ingest ARGS`` in this process (fast), with a clean environment plus ``env``; stdout/stderr captured."""

    def run(args: list[str], env: dict[str, str] | None = None) -> Result:
        capsys.readouterr()
        with monkeypatch.context() as m:
            for name in ("MOI_KEY", "MOI_ENDPOINT", "MOI_CONNECTOR_SECRET"):
                m.delenv(name, raising=False)
            for name, value in (env or {}).items():
                m.setenv(name, value)
            code = main(args)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture
def moi(cli: Any, served: ServerProcess) -> Any:
    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        return cli(["moi", *args, "--endpoint", served.url], {"MOI_KEY": KEY, **(env or {})})  # type: ignore[no-any-return]

    return run


def as_json(result: Result) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_finished(moi: Any, task_id: str) -> None:
    deadline = time.monotonic() + 10
    while as_json(moi("tasks", "get", task_id, "--json"))["status"] != 4:  # the CLI polls, as a script would
        assert time.monotonic() < deadline, f"task {task_id} did not finish"
        time.sleep(0.02)


def s3_flags(bucket: Bucket, *, name: str) -> list[str]:
    return [
        "--name", name, "--type", "s3", "--set", f"endpoint={bucket.endpoint}",
        "--set", f"access_key_id={ACCESS_KEY}", "--set", f"bucket_name={bucket.name}",
        "--set", "region=us-east-1", "--set", "path_style=true",
    ]  # fmt: skip


def test_connectors_from_create_to_delete(moi: Any, bucket: Bucket) -> None:
    """create (secret from MOI_CONNECTOR_SECRET), list, validate, files, summary, update and delete; the
    secret appears in no output, masked everywhere."""
    made = bucket.fill(3)
    created = as_json(
        moi("connectors", "create", *s3_flags(bucket, name="cli-src"), "--json",
            env={"MOI_CONNECTOR_SECRET": SECRET})
    )  # fmt: skip
    cid = str(created["id"])
    assert created["s3"]["access_key_secret"] == "****" + SECRET[-2:]
    table = moi("connectors", "list", "--keyword", "cli-src")
    assert table.returncode == 0
    assert "cli-src" in table.stdout
    assert "access_key_secret=****" in table.stdout
    assert (moi("connectors", "validate", "--connector", cid).stdout.strip()) == "valid"
    files = as_json(moi("connectors", "files", cid, "--file-types", "pdf,txt", "--json"))
    assert {f["uri"] for f in files["files"]} == {k for k in made if not k.endswith(".md")}
    assert as_json(moi("connectors", "summary", "--json"))["total"] >= 1
    updated = moi("connectors", "update", cid, "--set", "bucket_name=missing-bucket")
    assert updated.returncode == 0, updated.stderr
    invalid = moi("connectors", "validate", "--connector", cid)
    assert invalid.returncode == 1
    assert invalid.stdout.startswith("not valid:")
    assert "does not exist" in invalid.stdout
    assert moi("connectors", "delete", cid).returncode == 0
    everything = " ".join(r.stdout + r.stderr for r in (table, invalid))
    assert SECRET not in everything


def test_secrets_on_the_command_line_and_missing_settings_are_refused(
    moi: Any, cli: Any, served: ServerProcess, bucket: Bucket
) -> None:
    """--set access_key_secret=… is refused (exit 2, one line, secret not echoed); a missing secret says where
    to put it; a missing key or endpoint is a one-line usage error."""
    leak = moi("connectors", "create", *s3_flags(bucket, name="x"), "--set", "access_key_secret=hunter2hunter2")
    assert leak.returncode == 2
    assert "MOI_CONNECTOR_SECRET" in leak.stderr
    assert "hunter2" not in leak.stderr
    assert len(leak.stderr.strip().splitlines()) == 1
    missing = moi("connectors", "create", *s3_flags(bucket, name="x"))
    assert missing.returncode == 2
    assert "access_key_secret" in missing.stderr
    assert "MOI_CONNECTOR_SECRET" in missing.stderr
    unknown = moi("connectors", "create", "--name", "x", "--type", "mo", "--set", "colour=red")
    assert unknown.returncode == 2
    assert "'colour' is not a MO setting" in unknown.stderr
    no_key = cli(["moi", "tasks", "list", "--endpoint", served.url])
    assert (no_key.returncode, no_key.stderr.strip()) == (
        2,
        "ingest: error: no MOI API key: set MOI_KEY (or pass --api-key)",
    )
    no_endpoint = cli(["moi", "tasks", "list"], {"MOI_KEY": KEY})
    assert no_endpoint.returncode == 2
    assert "--endpoint" in no_endpoint.stderr
    wrong_key = cli(["moi", "tasks", "list", "--endpoint", served.url], {"MOI_KEY": "wr0ng-k3y"})
    assert wrong_key.returncode == 2
    assert "wr0ng-k3y" not in wrong_key.stderr


def test_tasks_from_create_to_delete(moi: Any, bucket: Bucket, tmp_path: Path) -> None:
    """tasks create (uris from a file), get, files, list, update, pause, resume, retry and delete."""
    made = sorted(bucket.fill(4))
    cid = str(as_json(moi("connectors", "create", *s3_flags(bucket, name="tasks-src"), "--json",
                          env={"MOI_CONNECTOR_SECRET": SECRET}))["id"])  # fmt: skip
    uris = tmp_path / "uris.txt"
    uris.write_text("\n".join([*made[:3], "missing.txt"]) + "\n")
    task = as_json(moi("tasks", "create", "--connector", cid, "--volume-id", VOLUME, "--uris-file",
                       str(uris), "--json"))  # fmt: skip
    task_id = task["id"]
    assert task["source_config"]["common_file_task_config"]["uris"] == [*made[:3], "missing.txt"]
    shown = moi("tasks", "get", task_id)
    assert shown.returncode == 0
    assert f"id:         {task_id}" in shown.stdout
    wait_finished(moi, task_id)
    files = as_json(moi("tasks", "files", task_id, "--all", "--json"))
    assert files["total"] == 4
    listed = as_json(moi("tasks", "list", "--schedule", "once", "--all", "--json"))
    assert task_id in [t["id"] for t in listed["tasks"]]
    table = moi("tasks", "files", task_id, "--status", "failed")
    assert "missing.txt" in table.stdout
    assert "not found" in table.stdout
    retried = as_json(moi("tasks", "retry", task_id, "--json"))
    assert len(retried["retried"]) == 1
    assert moi("tasks", "update", task_id, "--uri", made[3], "--schedule", "day").returncode == 0
    assert as_json(moi("tasks", "get", task_id, "--json"))["source_config"]["common_file_task_config"]["uris"] == [
        made[3]
    ]
    for verb in ("pause", "resume", "delete"):
        result = moi("tasks", verb, task_id)
        assert result.returncode == 0, result.stderr
    gone = moi("tasks", "get", task_id)
    assert gone.returncode == 1
    assert "does not know task" in gone.stderr
