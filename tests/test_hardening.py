"""Issue 13 (hardening), the client, engine and CLI half: a broken disk, a careless user, stale state and
the messages around them. Each test reproduced its problem before the fix. The hostile-tree cases
(symlinks swapped in, control characters in names, the tool's own state under ``--hidden``) run for every
target in ``tests/test_hostile.py``."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_tree
from tests.harness import MOI, ServerProcess, run_cli


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One MOI emulator process for the module (each test uses its own manifest and files)."""
    proc = ServerProcess(MOI.serve_command(tmp_path_factory.mktemp("moi-data")))
    yield proc
    proc.stop()


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "unexpected error" not in result.stderr
    return lines[0]


# ----- 5. a 0-byte manifest ---------------------------------------------------------------------------


def test_empty_manifest_file_is_refused_not_reinitialised(server: ServerProcess, tmp_path: Path) -> None:
    """A manifest file that exists but holds no schema (truncated, or a wrong file) is refused, exit 2."""
    make_tree(tmp_path / "docs", 3)
    flags, env = MOI.cli(server.url)
    manifest = tmp_path / "m.db"
    manifest.touch()
    os.utime(manifest, (1, 1))  # not a manifest another process is creating this very moment
    result = run_cli(["run", "docs", *flags, "--manifest", "m.db"], env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "m.db is empty" in one_line_error(result)
    assert manifest.stat().st_size == 0
    status = run_cli(["status", "--manifest", "m.db"], cwd=tmp_path)
    assert status.returncode == 2
    assert "is empty" in one_line_error(status)


def test_sqlite_file_of_something_else_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    make_tree(tmp_path / "docs", 1)
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE songs (title TEXT)")
    other.commit()
    other.close()
    flags, env = MOI.cli(server.url)
    result = run_cli(["run", "docs", *flags, "--manifest", "other.db"], env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "not an ingest manifest" in one_line_error(result)
    tables = sqlite3.connect(tmp_path / "other.db").execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("songs",)]


# ----- 7. a failed preflight binds nothing -------------------------------------------------------------


def test_failed_preflight_leaves_the_manifest_free(server: ServerProcess, tmp_path: Path) -> None:
    """A run refused for an unknown volume or a refused connection does not bind the manifest to it."""
    make_tree(tmp_path / "docs", 2)
    flags, env = MOI.cli(server.url)
    wrong = list(flags)
    wrong[wrong.index("--volume-id") + 1] = "999999"
    assert run_cli(["run", "docs", *wrong, "--manifest", "m.db"], env=env, cwd=tmp_path).returncode == 2
    refused = list(flags)
    refused[refused.index("--endpoint") + 1] = "http://127.0.0.1:9"
    result = run_cli(["run", "docs", *refused, "--manifest", "m.db", "--request-retries", "0"], env=env, cwd=tmp_path)
    assert result.returncode == 2
    fixed = run_cli(["run", "docs", *flags, "--manifest", "m.db"], env=env, cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert "2 done" in fixed.stdout


# ----- 10. environment errors: one line, exit 2 --------------------------------------------------------

_NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []


def _run_as_user(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if _NO_DAC and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    full_env = {k: v for k, v in os.environ.items() if k != "MOI_KEY"} | env
    return subprocess.run(
        [*_NO_DAC, sys.executable, "-m", "ingest", *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_read_only_manifest_is_one_line(server: ServerProcess, tmp_path: Path) -> None:
    make_tree(tmp_path / "docs", 2)
    flags, env = MOI.cli(server.url)
    assert run_cli(["run", "docs", *flags, "--manifest", "m.db"], env=env, cwd=tmp_path).returncode == 0
    (tmp_path / "docs" / "new.txt").write_text("new")
    (tmp_path / "m.db").chmod(0o444)
    try:
        result = _run_as_user(["run", "docs", *flags, "--manifest", "m.db"], cwd=tmp_path, env=env)
    finally:
        (tmp_path / "m.db").chmod(0o644)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "read-only" in one_line_error(result)


def test_manifest_folder_that_cannot_be_created_says_why(server: ServerProcess, tmp_path: Path) -> None:
    make_tree(tmp_path / "docs", 1)
    (tmp_path / "afile").write_text("x")
    flags, env = MOI.cli(server.url)
    result = run_cli(["run", "docs", *flags, "--manifest", "afile/m.db"], env=env, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "cannot create the folder" in line
    assert "afile" in line


def test_full_disk_while_writing_the_manifest(server: ServerProcess, tmp_path: Path) -> None:
    """ENOSPC under the manifest: one line, exit 2; the manifest stays a readable, consistent database."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to mount a tiny tmpfs")
    make_tree(tmp_path / "docs", 400, size=10)
    for i in range(400):
        (tmp_path / "docs" / f"{'x' * 150}-{i:04d}.txt").write_text("x")  # long paths fill the manifest
    small = tmp_path / "small"
    small.mkdir()
    flags, env = MOI.cli(server.url)
    full_env = {k: v for k, v in os.environ.items() if k != "MOI_KEY"} | env
    script = (
        f"mount -t tmpfs -o size=96k tmpfs {small} && "
        f"{sys.executable} -m ingest run docs {' '.join(flags)} --manifest {small}/m.db --concurrency 2; "
        f"rc=$?; cp {small}/m.db* {tmp_path}/ 2>/dev/null; exit $rc"
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=300
    )
    if "mount" in result.stderr and "permission denied" in result.stderr.lower():
        pytest.skip("cannot mount a tmpfs here")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no space left" in one_line_error(result).lower()
    conn = sqlite3.connect(tmp_path / "m.db")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_report_pointing_at_a_folder_is_refused_before_the_run(server: ServerProcess, tmp_path: Path) -> None:
    make_tree(tmp_path / "docs", 2)
    (tmp_path / "out").mkdir()
    flags, env = MOI.cli(server.url)
    result = run_cli(["run", "docs", *flags, "--manifest", "m.db", "--report", "out"], env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "--report out is a folder" in one_line_error(result)
    assert not (tmp_path / "m.db").exists()  # refused before anything was sent or recorded


def test_secret_with_a_newline_is_one_line(server: ServerProcess, tmp_path: Path) -> None:
    make_tree(tmp_path / "docs", 1)
    flags, _ = MOI.cli(server.url)
    result = run_cli(["run", "docs", *flags, "--manifest", "m.db"], env={"MOI_KEY": "abc\ndef"}, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "api_key contains a line break" in line
    assert "abc" not in line


SERVE = ["--api-key", "k", "--volume", "1001"]


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_port_out_of_range(tmp_path: Path, port: str) -> None:
    result = run_cli(["serve", "moi", *SERVE, "--port", port, "--data-dir", str(tmp_path / "d")])
    assert result.returncode == 2
    assert "port" in one_line_error(result)


def test_serve_port_in_use_and_data_dir_a_file(server: ServerProcess, tmp_path: Path) -> None:
    port = server.url.rsplit(":", 1)[1].split("/")[0]
    in_use = run_cli(["serve", "moi", *SERVE, "--port", port, "--data-dir", str(tmp_path / "d")], timeout=30)
    assert in_use.returncode == 2
    assert "cannot listen" in one_line_error(in_use)
    (tmp_path / "afile").write_text("x")
    as_file = run_cli(["serve", "moi", *SERVE, "--port", "0", "--data-dir", str(tmp_path / "afile")], timeout=30)
    assert as_file.returncode == 2
    assert "--data-dir" in one_line_error(as_file)


def test_status_into_a_closed_pipe_exits_quietly(server: ServerProcess, tmp_path: Path) -> None:
    make_tree(tmp_path / "docs", 2)
    flags, env = MOI.cli(server.url)
    assert run_cli(["run", "docs", *flags, "--manifest", "m.db"], env=env, cwd=tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / "m.db") as conn:  # more failures than a pipe buffers
        conn.executemany(
            "INSERT INTO files (path, state, last_error, created_at, updated_at) VALUES (?, 'failed', 'x', 0, 0)",
            [(f"gone/{i:05d}.txt",) for i in range(5000)],
        )
    script = f"{sys.executable} -m ingest status --manifest m.db --failed --json | head -c 1 >/dev/null"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert "Traceback" not in result.stderr
    assert "unexpected" not in result.stderr
    assert result.stderr.strip() == ""


# ----- 11. messages ------------------------------------------------------------------------------------


def test_unknown_toml_section_is_named(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "c.toml").write_text("[sourc]\npath = 'docs'\n")
    result = run_cli(["run", "--config", "c.toml"], cwd=tmp_path)
    assert result.returncode == 2
    assert "[sourc]" in one_line_error(result)
    (tmp_path / "c.toml").write_text("[source]\npath = 'docs'\n[engin]\nconcurrency = 2\n")
    result = run_cli(["run", "--config", "c.toml"], cwd=tmp_path)
    assert result.returncode == 2
    assert "[engin]" in one_line_error(result)


def test_dangling_symlink_with_follow_is_named_so(server: ServerProcess, tmp_path: Path) -> None:
    make_tree(tmp_path / "docs", 1)
    (tmp_path / "docs" / "dangling").symlink_to(tmp_path / "nowhere")
    flags, env = MOI.cli(server.url)
    result = run_cli(["run", "docs", *flags, "--manifest", "m.db", "--follow-symlinks"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "dangling symlinks" in result.stdout
    assert "use --follow-symlinks" not in result.stdout
    plain = run_cli(["run", "docs", *flags, "--manifest", "m2.db"], env=env, cwd=tmp_path)
    assert "symlinks (use --follow-symlinks)" in plain.stdout


def test_verbose_logs_retries_once_prefixed(server: ServerProcess, tmp_path: Path) -> None:
    """``-v`` shows retries (not only ``-vv``), each line with one prefix."""
    make_tree(tmp_path / "docs", 1)
    flags, env = MOI.cli(server.url)
    refused = list(flags)
    refused[refused.index("--endpoint") + 1] = "http://127.0.0.1:9"
    result = run_cli(["run", "docs", *refused, "--request-retries", "1", "-v"], env=env, cwd=tmp_path)
    retries = [line for line in result.stderr.splitlines() if "retry 1/1" in line]
    assert retries, result.stderr
    assert all(line.count("connection to") == 1 and line.count("connecting:") == 1 for line in retries), retries


def test_report_records_the_md5_computed_while_streaming(server: ServerProcess, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "docs", 5)
    flags, env = MOI.cli(server.url)
    result = run_cli(["run", "docs", *flags, "--manifest", "m.db", "--report", "r.json"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "r.json").read_text()
    records = (
        [json.loads(line) for line in text.splitlines()] if not text.lstrip().startswith("[") else json.loads(text)
    )
    if isinstance(records, dict):
        records = records["files"]
    by_path = {r["path"]: r for r in records}
    assert {p: by_path[p]["md5"] for p in files} == files


# ----- 9. a server that accepts and never answers -------------------------------------------------------


class GoesSilent:
    """A TCP proxy in front of an emulator that, once ``silent`` is set, accepts connections and reads
    requests but never answers (on new and on pooled connections alike)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.silent = False
        self.url = ""

    async def __aenter__(self) -> GoesSilent:
        import asyncio

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answers: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if answers and self.silent:
                        continue  # swallowed: the client waits for an answer that never comes
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass

        async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            self._writers.add(client_w)
            try:
                if self.silent:
                    while await client_r.read(65536):
                        pass
                    return
                up_r, up_w = await asyncio.open_connection(*self.upstream)
                try:
                    await asyncio.gather(pump(client_r, up_w, False), pump(up_r, client_w, True))
                finally:
                    up_w.close()
            finally:
                client_w.close()
                self._writers.discard(client_w)

        self._writers: set[asyncio.StreamWriter] = set()
        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Server.close() stops listening but leaves the connections it accepted open (Python 3.11):
        # close them too, or a client's pooled connection is left to the garbage collector.
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()


@pytest.mark.anyio
async def test_silent_server_trips_the_breaker_and_leaves_files_unsent(tmp_path: Path) -> None:
    """The platform answers the preflight, then goes silent: the run stops with "platform unreachable
    since T; rerun to resume", exit code 1, no file failed; the rerun sends every file."""
    from ingest.config import EngineConfig
    from ingest.engine.run import Job, run_job
    from ingest.manifest import SqliteManifest
    from ingest.sources.local import LocalSource, WalkOptions

    files = make_tree(tmp_path / "src", 12)

    class SilenceAfterWalkStarts(LocalSource):
        async def entries(self):  # type: ignore[no-untyped-def]
            async for entry in super().entries():
                proxy.silent = True
                yield entry

    engine = EngineConfig(concurrency=2, request_timeout=0.2, unreachable_after=0.5, request_retries=50,
                          poll_initial=0.02, poll_max=0.1)  # fmt: skip
    async with MOI.start(tmp_path / "data") as dep, GoesSilent(dep.url) as proxy:
        target = dep.target_config.model_copy(update={"endpoint": proxy.url})
        source = SilenceAfterWalkStarts(tmp_path / "src", WalkOptions())
        summary = await run_job(
            Job(source=source, target=target, engine=engine, manifest=tmp_path / "m.db", quiet=True), command="run"
        )
        assert summary.stopped_reason is not None
        assert "platform unreachable since" in summary.stopped_reason
        assert summary.stopped_reason.endswith("rerun to resume")
        assert (summary.failed, summary.exit_code) == (0, 1)
        with SqliteManifest(tmp_path / "m.db") as manifest:
            assert manifest.counts()["failed"] == 0
        proxy.silent = False
        again = await run_job(
            Job(source=LocalSource(tmp_path / "src", WalkOptions()), target=target, engine=engine,
                manifest=tmp_path / "m.db", quiet=True),
            command="run",
        )  # fmt: skip
        stored = await dep.stored()
    assert (again.failed, again.exit_code) == (0, 0)
    assert {p: f.md5 for p, f in stored.items()} == files


def test_request_timeout_flags_reach_the_engine(tmp_path: Path) -> None:
    from ingest.cli.main import build_parser, config_from_args

    (tmp_path / "docs").mkdir()
    args = build_parser(with_emulators=False).parse_args(
        ["run", str(tmp_path / "docs"), "--request-timeout", "7", "--unreachable-after", "60"]
    )
    config = config_from_args(args)
    assert (config.engine.request_timeout, config.engine.unreachable_after) == (7.0, 60.0)
