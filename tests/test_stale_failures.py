"""Issue 13 item 8: a failed file that left the source stops being a failure.

Files fail on a real MOI emulator (every task file ends failed), then leave the source. A full run that
finds them gone records them as "no longer in the source" (issue 9's words) instead of failed, and
``retry-failed`` neither sends them nor counts them, on both manifest backends. A failed file still in
the source stays failed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ingest.cli.main import main
from ingest.config import EngineConfig, RunConfig, SourceConfig
from tests.conftest import ManifestUnderTest, manifest_under_test
from tests.harness import MOI, Faults

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
def manifest(request: pytest.FixtureRequest, tmp_path: Path) -> ManifestUnderTest:
    return manifest_under_test(request.param, request, tmp_path)  # type: ignore[no-any-return]


def config(dep: Any, src: Path, manifest: ManifestUnderTest) -> RunConfig:
    return RunConfig(
        source=SourceConfig(path=src),
        target=dep.target_config,
        engine=EngineConfig(concurrency=4, poll_initial=0.02, poll_max=0.2, max_attempts=1),
        manifest=manifest.location,
        quiet=True,
    )


def tree(src: Path, *names: str) -> None:
    src.mkdir(parents=True)
    for name in names:
        (src / name).write_text(f"content of {name}")


def status(manifest: ManifestUnderTest, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["status", "--manifest", manifest.location, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


async def test_a_deleted_failed_file_is_gone_not_failed_after_a_full_run(
    manifest: ManifestUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    tree(src, "a.txt", "b.txt", "c.txt")
    async with MOI.start(tmp_path / "data", Faults(task_fail_rate=1.0)) as dep:
        first = await dep.run(config(dep, src, manifest))
        assert first.failed == 3
        (src / "b.txt").unlink()
        dep.set_faults(task_fail_rate=0.0)
        full = await dep.run(config(dep, src, manifest))
        retry = await dep.retry_failed(config(dep, src, manifest))
        uploads = {path: f.uploads for path, f in (await dep.stored()).items()}
    assert (full.exit_code, full.done, full.failed, full.gone_failures) == (0, 2, 0, 1)
    assert (retry.exit_code, retry.sent_files, retry.failed) == (0, 0, 0)
    assert manifest.states() == {"a.txt": "done", "c.txt": "done"}
    assert uploads.get("b.txt", 0) <= 1  # sent by the first run only (its failed document may be cleaned up)
    shown = status(manifest, capsys)
    assert (shown["files"]["failed"], shown["failed_no_longer_in_source"]) == (0, 1)


async def test_retry_failed_right_after_the_delete_sends_nothing_and_exits_0(
    manifest: ManifestUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    tree(src, "a.txt", "b.txt")
    async with MOI.start(tmp_path / "data", Faults(task_fail_rate=1.0)) as dep:
        await dep.run(config(dep, src, manifest))
        for name in ("a.txt", "b.txt"):
            (src / name).unlink()
        before = {path: f.uploads for path, f in (await dep.stored()).items()}
        retry = await dep.retry_failed(config(dep, src, manifest))
        after = {path: f.uploads for path, f in (await dep.stored()).items()}
    assert (retry.exit_code, retry.sent_files, retry.failed, retry.gone_failures) == (0, 0, 0, 2)
    assert all(after.get(path, 0) <= n for path, n in before.items())  # nothing sent again
    said = [line for line in retry.lines() if "no longer in the source" in line]
    assert len(said) == 1, retry.lines()
    assert manifest.states() == {}
    assert status(manifest, capsys)["failed_no_longer_in_source"] == 2


async def test_a_renamed_failed_file_is_gone_under_its_old_name_and_done_under_the_new(
    manifest: ManifestUnderTest, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    tree(src, "old.txt", "other.txt")
    async with MOI.start(tmp_path / "data", Faults(task_fail_rate=1.0)) as dep:
        await dep.run(config(dep, src, manifest))
        (src / "old.txt").rename(src / "new.txt")
        dep.set_faults(task_fail_rate=0.0)
        full = await dep.run(config(dep, src, manifest))
        retry = await dep.retry_failed(config(dep, src, manifest))
    assert (full.exit_code, full.gone_failures, retry.exit_code) == (0, 1, 0)
    assert manifest.states() == {"new.txt": "done", "other.txt": "done"}


async def test_a_failed_file_still_in_the_source_stays_failed(manifest: ManifestUnderTest, tmp_path: Path) -> None:
    src = tmp_path / "src"
    tree(src, "gone.txt", "stays.txt")
    async with MOI.start(tmp_path / "data", Faults(task_fail_rate=1.0)) as dep:
        await dep.run(config(dep, src, manifest))
        (src / "gone.txt").unlink()
        full = await dep.run(config(dep, src, manifest))
        retry = await dep.retry_failed(config(dep, src, manifest))
    assert (full.exit_code, full.failed, full.gone_failures) == (1, 1, 1)
    assert (retry.exit_code, retry.failed) == (1, 1)
    assert manifest.states() == {"stays.txt": "failed"}
