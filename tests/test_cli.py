"""The command line as users meet it: exit codes, one-line errors, the embedded default, secrets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_tree
from tests.harness import MOI, ServerProcess, run_cli


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One MOI emulator process for the module (each test uses its own manifest and files)."""
    proc = ServerProcess(MOI.serve_command(tmp_path_factory.mktemp("moi-data")))
    yield proc
    proc.stop()


def moi_args(server: ServerProcess) -> tuple[list[str], dict[str, str]]:
    return MOI.cli(server.url)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_embedded_default_needs_no_account(tmp_path: Path) -> None:
    """`ingest run DIR` with no target sends to the local emulator, says where, and exits 0."""
    files = make_tree(tmp_path / "docs", 12)
    result = run_cli(["run", "docs"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "12 done, 0 failed" in result.stdout
    assert ".ingest/local" in result.stdout
    stored = MOI.stored_bodies(tmp_path / ".ingest/local", "1")
    assert {path: hashlib.md5(body).hexdigest() for path, body in stored.items()} == files
    again = run_cli(["run", "docs"], cwd=tmp_path)
    assert again.returncode == 0
    assert "0 done, 0 failed, 12 skipped" in again.stdout


def test_embedded_emulator_starts_only_when_a_file_is_sent(tmp_path: Path) -> None:
    """A rerun with nothing to send never starts the embedded emulator (it was a second of every no-op
    rerun); a run that needs it and cannot start it stops with one line saying why."""
    make_tree(tmp_path / "docs", 5)
    assert run_cli(["run", "docs"], cwd=tmp_path).returncode == 0
    store = tmp_path / ".ingest/local/.emulator.db"
    for leftover in store.parent.glob(".emulator.db-*"):
        leftover.unlink()
    store.write_bytes(b"not a database, so the emulator cannot start" * 100)  # its next start fails

    again = run_cli(["run", "docs", "--json"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["skipped"], json.loads(again.stdout)["sent_files"]) == (5, 0)

    (tmp_path / "docs" / "new.txt").write_text("a new file must be sent")
    needs_it = run_cli(["run", "docs"], cwd=tmp_path)
    assert needs_it.returncode == 2
    assert "the embedded local MOI emulator did not start" in one_line_error(needs_it)


def test_run_status_and_json_summary(server: ServerProcess, tmp_path: Path) -> None:
    """A run against an endpoint, then `status` counts per state, in text and JSON."""
    make_tree(tmp_path / "docs", 10)
    flags, env = moi_args(server)
    manifest = tmp_path / "run.db"
    result = run_cli(["run", "docs", *flags, "--manifest", str(manifest), "--json"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["failed"]) == (10, 0)
    status = run_cli(["status", "--manifest", str(manifest), "--json"])
    assert json.loads(status.stdout)["files"]["done"] == 10
    text = run_cli(["status", "--manifest", str(manifest)])
    assert "done" in text.stdout
    assert "10" in text.stdout


def test_wrong_key_is_exit_2_and_never_printed(server: ServerProcess, tmp_path: Path) -> None:
    """A rejected key stops the run before any upload, with a one-line hint, key not echoed."""
    make_tree(tmp_path / "docs", 3)
    flags, _ = moi_args(server)
    result = run_cli(["run", "docs", *flags, "--manifest", "m.db", "-v"], env={"MOI_KEY": "wr0ng-k3y"}, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "MOI_KEY" in line
    assert "wr0ng-k3y" not in result.stdout + result.stderr


def test_unknown_volume_is_exit_2(server: ServerProcess, tmp_path: Path) -> None:
    """A volume id that does not exist is named in the error."""
    make_tree(tmp_path / "docs", 2)
    flags, env = moi_args(server)
    flags[flags.index("--volume-id") + 1] = "999999"
    result = run_cli(["run", "docs", *flags, "--manifest", "m.db"], env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "volume 999999 does not exist" in one_line_error(result)


def test_unreachable_endpoint_is_exit_2(tmp_path: Path) -> None:
    """Nothing listening: a clear message after a few quick retries."""
    make_tree(tmp_path / "docs", 1)
    result = run_cli(
        ["run", "docs", "--target", "moi", "--endpoint", "http://127.0.0.1:9", "--volume-id", "1",
         "--request-retries", "1"],
        env={"MOI_KEY": "k"},
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "check --endpoint" in one_line_error(result)


@pytest.mark.parametrize(
    ("args", "toml", "expected"),
    [
        (["run"], None, "no source folder"),
        (["run", "missing-dir"], None, "does not exist"),
        (["run", "docs", "--concurrency", "0"], None, "engine.concurrency"),
        (["run", "docs", "--endpoint", "http://x"], None, "without --target"),
        (["run", "docs", "--target", "moi", "--endpoint", "http://x", "--volume-id", "1"], None, "MOI_KEY"),
        (["run", "--config", "bad.toml"], "[source]\npath = 'docs'\nthreads = 3\n", "source.threads: unknown setting"),
        (["run", "--config", "bad.toml"], "[engine\n", "not valid TOML"),
        (["run", "--config", "bad.toml"], "[source]\npath='docs'\n[engine]\nconcurrency='many'\n", "concurrency"),
        (["run", "docs", "--max-size", "lots"], None, "not a size"),
        (["run", "docs", "--bogus"], None, "unrecognized arguments"),
        (["status", "--manifest", "nope.db"], None, "does not exist"),
        (["retry-failed", "--manifest", "nope.db"], None, "does not exist"),
    ],
)
def test_usage_and_config_errors_are_exit_2(tmp_path: Path, args: list[str], toml: str | None, expected: str) -> None:
    """Every bad flag or setting is one line naming the field, exit code 2, no traceback."""
    (tmp_path / "docs").mkdir()
    if toml is not None:
        (tmp_path / "bad.toml").write_text(toml)
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in one_line_error(result)


def test_non_utf8_name_fails_that_file_only(server: ServerProcess, tmp_path: Path) -> None:
    """A name that is not UTF-8 is recorded failed with advice; the other files go; exit 1."""
    make_tree(tmp_path / "docs", 4)
    with open(os.path.join(os.fsencode(tmp_path / "docs"), b"caf\xe9.txt"), "wb") as f:
        f.write(b"x")
    flags, env = moi_args(server)
    result = run_cli(["run", "docs", *flags, "--manifest", "m.db"], env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "4 done, 1 failed" in result.stdout
    assert "caf\\xe9.txt: file name is not valid UTF-8" in result.stdout
    row = sqlite3.connect(tmp_path / "m.db").execute("SELECT state FROM files WHERE path = 'caf\\xe9.txt'").fetchone()
    assert row == ("failed",)


def test_unreadable_file_fails_that_file_only(server: ServerProcess, tmp_path: Path) -> None:
    """A file without read permission is recorded failed naming the fix; the rest are sent; exit 1."""
    make_tree(tmp_path / "docs", 3)
    locked = tmp_path / "docs" / "secret.txt"
    locked.write_text("no")
    locked.chmod(0)
    # Root reads anything; drop the capabilities that let it, so permissions apply as for a user.
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    flags, env = moi_args(server)
    full_env = {k: v for k, v in os.environ.items() if k != "MOI_KEY"} | env
    try:
        result = subprocess.run(
            [*prefix, sys.executable, "-m", "ingest", "run", "docs", *flags, "--manifest", "m.db"],
            cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        locked.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert result.returncode == 1, result.stderr
    assert "secret.txt: permission denied" in result.stdout
    assert "3 done, 1 failed" in result.stdout
    assert "ingest retry-failed --manifest m.db" in result.stdout

    # Fixed, it goes with retry-failed, which sends only that file (secrets supplied again by env).
    retried = run_cli(["retry-failed", "--manifest", "m.db", "--json"], env=env, cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert (json.loads(retried.stdout)["done"], json.loads(retried.stdout)["sent_files"]) == (1, 1)
    without_key = run_cli(["retry-failed", "--manifest", "m.db"], cwd=tmp_path)
    assert without_key.returncode == 2
    assert "MOI_KEY" in one_line_error(without_key)


def test_secrets_never_reach_output_manifest_or_report(server: ServerProcess, tmp_path: Path) -> None:
    """The key appears nowhere we write: stdout, stderr (even -vv), manifest, report."""
    make_tree(tmp_path / "docs", 5)
    flags, _ = moi_args(server)
    key = MOI.api_key
    result = run_cli(
        ["run", "docs", *flags, "--manifest", "m.db", "--report", "r.json", "-vv", "--json"],
        env={"MOI_KEY": key},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert key not in result.stdout + result.stderr
    assert key.encode() not in (tmp_path / "m.db").read_bytes()
    assert key not in (tmp_path / "r.json").read_text()


def test_help_teaches_the_flags() -> None:
    """`--help` documents the contract flags and the exit codes."""
    result = run_cli(["run", "--help"])
    for flag in ("--target", "--endpoint", "--volume-id", "--manifest", "--concurrency", "--include", "--exclude",
                 "--follow-symlinks", "--max-size", "--batch-files", "--batch-bytes", "--task-timeout",
                 "--max-attempts", "--report", "--quiet", "exit codes"):  # fmt: skip
        assert flag in result.stdout


def rerun_then(cwd: Path, probe: str) -> tuple[dict[str, Any], str]:
    """``python -m ingest run docs --json`` in ``cwd``, then ``probe`` (Python) in the same process, which
    looked at what the run left behind: the run's summary and the last line ``probe`` wrote to stderr."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['ingest', 'run', 'docs', '--json']\n"
        "try:\n"
        "    runpy.run_module('ingest', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n" + probe
    )
    env = {k: v for k, v in os.environ.items() if k != "INGEST_FAILPOINT"}
    rerun = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    return json.loads(rerun.stdout), rerun.stderr.strip().splitlines()[-1]


def test_a_rerun_with_nothing_to_send_imports_no_http_client(tmp_path: Path) -> None:
    """A rerun that finds every file done sends no request, so it never imports aiohttp (with its TLS
    contexts, the largest part of a no-op rerun's start-up: benchmarks/README.md, Issue 11 item 12),
    nor builds the platforms' own commands (``ingest moi …``), which it cannot be running."""
    make_tree(tmp_path / "docs", 5)
    assert run_cli(["run", "docs"], cwd=tmp_path).returncode == 0
    summary, seen = rerun_then(
        tmp_path,
        "unused = ('aiohttp', 'aiobotocore', 'yarl', 'ingest.platforms.moi.commands')\n"
        "http = sorted(m for m in unused if m in sys.modules)\n"
        "print('imported:', http, file=sys.stderr)\n",
    )
    assert summary["skipped"] == 5
    assert seen == "imported: []"


def test_a_rerun_with_nothing_to_send_builds_no_model_it_does_not_validate(tmp_path: Path) -> None:
    """Building a pydantic model's validator is most of the cost of defining it: a no-op rerun validates
    its own settings and the embedded MOI target's, so it builds neither MOI's request and reply models
    (``moi.wire``: 36 of them, a tenth of the start-up) nor the other platforms' settings; and the process entry
    moved what the imports built out of the collector's sight and collects the young generation less often
    (benchmarks/README.md, Issue 11 item 18)."""
    make_tree(tmp_path / "docs", 3)
    assert run_cli(["run", "docs"], cwd=tmp_path).returncode == 0
    summary, seen = rerun_then(
        tmp_path,
        "import gc\n"
        "from pydantic import BaseModel\n"
        "from ingest.platforms.moi import wire\n"
        "from ingest.platforms.keyue.config import KeyueTargetConfig\n"
        "from ingest.platforms.viking.config import VikingTargetConfig\n"
        "models = [m for m in vars(wire).values() if isinstance(m, type) and issubclass(m, BaseModel)\n"
        "          and m.__module__ == wire.__name__]\n"
        "models += [KeyueTargetConfig, VikingTargetConfig]\n"
        "built = sorted(m.__name__ for m in models if m.__pydantic_complete__)\n"
        "print('built:', built, len(models), gc.get_freeze_count() > 0, gc.get_threshold()[0], file=sys.stderr)\n",
    )
    assert summary["skipped"] == 3
    # DedupConfig: the MOI target module makes its one instance when it is imported.
    assert seen == "built: ['DedupConfig'] 38 True 10000"
