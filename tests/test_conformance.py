"""The contract every target must honour, run against each target's emulator over real HTTP.

Written once against the platform-neutral harness (``tests/harness.py``); a new target joins by
registering a harness there. Each test states one behaviour a user relies on.

Every behaviour also runs on the PostgreSQL manifest (a job of its own on the session's private server),
for the MOI harness: the backends sit under one manifest contract and one engine, so one target over
PostgreSQL covers its side; every harness runs on SQLite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import ingest
from ingest.config import EngineConfig, RunConfig, SourceConfig
from tests.bucket_harness import BUCKET_HARNESSES
from tests.conftest import ManifestUnderTest, make_tree, manifest_under_test
from tests.harness import ENGINE_HARNESSES, MOI, Faults

pytestmark = pytest.mark.anyio

#: (harness, manifest backend): every harness on SQLite, from a folder and (``+bucket``) from a bucket
#: holding the same tree; MOI on PostgreSQL too.
CASES = [pytest.param((h, "sqlite"), id=h.name) for h in [*ENGINE_HARNESSES, *BUCKET_HARNESSES]] + [
    pytest.param((MOI, "postgres"), id="moi-postgres")
]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[Any, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def harness(case: tuple[Any, str]) -> Any:
    return case[0]


@pytest.fixture
def manifest(case: tuple[Any, str], request: pytest.FixtureRequest, tmp_path: Path) -> ManifestUnderTest:
    return manifest_under_test(case[1], request, tmp_path)  # type: ignore[no-any-return]


def config_for(deployment: Any, src: Path, manifest: ManifestUnderTest, **engine: Any) -> RunConfig:
    return RunConfig(
        source=SourceConfig(path=src),
        target=deployment.target_config,
        engine=EngineConfig(**{"concurrency": 8, "poll_initial": 0.02, "poll_max": 0.2, **engine}),
        manifest=manifest.location,
        quiet=True,
    )


async def test_sends_every_file_exactly_once(harness: Any, manifest: ManifestUnderTest, tmp_path: Path) -> None:
    """A tree with nested folders, an empty file and non-ASCII names arrives whole, once, intact."""
    files = make_tree(tmp_path / "src", 40)
    async with harness.start(tmp_path / "data") as dep:
        summary = await dep.run(config_for(dep, tmp_path / "src", manifest))
        stored = await dep.stored()
    assert summary.exit_code == 0
    assert (summary.done, summary.failed) == (40, 0)
    assert {p: f.md5 for p, f in stored.items()} == files
    assert all(f.uploads == 1 for f in stored.values())
    with manifest.open() as m:
        assert m.counts()["done"] == 40


async def test_rerun_skips_unchanged_files_without_network_calls(
    harness: Any, manifest: ManifestUnderTest, tmp_path: Path
) -> None:
    """A second run of an unchanged tree sends nothing: no upload request at all."""
    make_tree(tmp_path / "src", 20)
    async with harness.start(tmp_path / "data") as dep:
        await dep.run(config_for(dep, tmp_path / "src", manifest))
        before = await dep.request_counts()
        summary = await dep.run(config_for(dep, tmp_path / "src", manifest))
        after = await dep.request_counts()
    assert (summary.skipped, summary.sent_files) == (20, 0)
    uploads = {k: after.get(k, 0) - before.get(k, 0) for k in after if "upload" in k or "add" in k or "import" in k}
    assert sum(uploads.values()) == 0


async def test_changed_file_is_sent_again(harness: Any, manifest: ManifestUnderTest, tmp_path: Path) -> None:
    """Editing a file after a run makes the next run send the new version, and only it."""
    make_tree(tmp_path / "src", 10)
    async with harness.start(tmp_path / "data") as dep:
        await dep.run(config_for(dep, tmp_path / "src", manifest))
        (tmp_path / "src" / "f0002.txt").write_bytes(b"a new version")
        summary = await dep.run(config_for(dep, tmp_path / "src", manifest))
        stored = await dep.stored()
    assert (summary.done, summary.skipped) == (1, 9)
    assert stored["f0002.txt"].size == len(b"a new version")


async def test_platform_failures_are_retried_until_done(
    harness: Any, manifest: ManifestUnderTest, tmp_path: Path
) -> None:
    """Files the platform fails to process are retried (server-side where possible) until done."""
    make_tree(tmp_path / "src", 20)
    async with harness.start(tmp_path / "data", Faults(task_fail_rate=0.4)) as dep:
        summary = await dep.run(config_for(dep, tmp_path / "src", manifest, max_attempts=25))
    assert (summary.done, summary.failed) == (20, 0)


async def test_files_failing_every_attempt_are_recorded_failed(
    harness: Any, manifest: ManifestUnderTest, tmp_path: Path
) -> None:
    """When every attempt fails, the run ends with exit code 1 and the platform's reason per file."""
    make_tree(tmp_path / "src", 5)
    async with harness.start(tmp_path / "data", Faults(task_fail_rate=1.0)) as dep:
        summary = await dep.run(config_for(dep, tmp_path / "src", manifest, max_attempts=2))
    assert summary.exit_code == 1
    assert summary.failed == 5
    with manifest.open() as m:
        records = list(m.iter_files())
    assert all(r.state.value == "failed" and r.last_error and "after 2 attempts" in r.last_error for r in records)


async def test_server_errors_are_retried(harness: Any, manifest: ManifestUnderTest, tmp_path: Path) -> None:
    """5xx answers are retried with backoff; nothing is lost or doubled."""
    files = make_tree(tmp_path / "src", 20)
    async with harness.start(tmp_path / "data", Faults(error_rate=0.3)) as dep:
        summary = await dep.run(config_for(dep, tmp_path / "src", manifest, request_retries=30))
        dep.set_faults(error_rate=0.0)
        stored = await dep.stored()
    assert (summary.done, summary.failed) == (20, 0)
    assert {p: f.md5 for p, f in stored.items()} == files


async def test_rate_limits_are_honoured(harness: Any, manifest: ManifestUnderTest, tmp_path: Path) -> None:
    """429 with Retry-After slows the client down instead of failing files."""
    make_tree(tmp_path / "src", 12)
    async with harness.start(tmp_path / "data", Faults(rate_limit=20)) as dep:
        summary = await dep.run(config_for(dep, tmp_path / "src", manifest, request_retries=30, batch_files=1))
    assert (summary.done, summary.failed) == (12, 0)


async def test_connection_resets_mid_body_are_retried(
    harness: Any, manifest: ManifestUnderTest, tmp_path: Path
) -> None:
    """A connection dropped mid-upload is retried with a re-opened file; no partial file remains."""
    if not harness.streams_bodies:
        pytest.skip(f"not applicable to {harness.name}: the platform reads the files itself, no body is sent")
    files = make_tree(tmp_path / "src", 12, size=200_000)
    async with harness.start(tmp_path / "data", Faults(reset_rate=0.3)) as dep:
        summary = await dep.run(config_for(dep, tmp_path / "src", manifest, request_retries=30))
        stored = await dep.stored()
    assert (summary.done, summary.failed) == (12, 0)
    assert {p: f.md5 for p, f in stored.items()} == files


async def test_wrong_credentials_stop_the_run_with_a_clear_error(
    harness: Any, manifest: ManifestUnderTest, tmp_path: Path
) -> None:
    """A rejected key is a configuration error naming what to fix, and it is never echoed."""
    make_tree(tmp_path / "src", 3)
    async with harness.start(tmp_path / "data") as dep:
        bad = dep.with_wrong_credentials("wrong-secret-123")
        config = config_for(dep, tmp_path / "src", manifest).model_copy(update={"target": bad})
        with pytest.raises(ingest.AuthError) as err:
            await dep.run(config)
    assert "wrong-secret-123" not in str(err.value)
    assert "\n" not in str(err.value)


async def test_retry_failed_resends_only_failed_files(
    harness: Any, manifest: ManifestUnderTest, tmp_path: Path
) -> None:
    """After a run with failures, retry-failed sends those files and nothing else."""
    make_tree(tmp_path / "src", 8)
    async with harness.start(tmp_path / "data", Faults(task_fail_rate=1.0)) as dep:
        first = await dep.run(config_for(dep, tmp_path / "src", manifest, max_attempts=1))
        assert first.failed == 8
        dep.set_faults(task_fail_rate=0.0)
        second = await dep.retry_failed(config_for(dep, tmp_path / "src", manifest))
        third = await dep.run(config_for(dep, tmp_path / "src", manifest))
    assert (second.done, second.failed) == (8, 0)
    assert (third.skipped, third.sent_files) == (8, 0)


async def test_manifest_records_ids_and_the_report_lists_every_file(
    harness: Any, manifest: ManifestUnderTest, tmp_path: Path
) -> None:
    """Every done file has the platform's ids; --report writes one record per file."""
    make_tree(tmp_path / "src", 6)
    report = tmp_path / "report.json"
    async with harness.start(tmp_path / "data") as dep:
        config = config_for(dep, tmp_path / "src", manifest).model_copy(update={"report": report})
        await dep.run(config)
    import json

    records = json.loads(report.read_text())
    assert len(records) == 6
    assert all(r["state"] == "done" and r["remote_id"] and r["this_run"] for r in records)
