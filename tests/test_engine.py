"""Engine behaviours that need a real platform behind them: batching, backpressure, files that
change or vanish under the engine's feet, requests the platform refuses, resumed polling.

Run against the MOI emulator on loopback (the engine itself knows no platform)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

import ingest
from ingest.config import EngineConfig, RunConfig, SourceConfig
from ingest.engine.pipeline import run_engine
from ingest.engine.state import Completion
from ingest.manifest import SqliteManifest as Manifest
from ingest.models import FileItem
from ingest.platforms.base import TargetContext
from ingest.platforms.moi.target import MoiTarget
from ingest.progress import Progress
from ingest.report import RunSummary
from ingest.sources.base import Rejected
from ingest.sources.local import LocalSource, WalkOptions
from tests.conftest import make_tree
from tests.harness import MOI, Faults

pytestmark = pytest.mark.anyio


def uploads(counts: dict[str, int]) -> int:
    return sum(n for route, n in counts.items() if "/connectors/upload" in route)


def config(dep: Any, src: Path, manifest: Path, **engine: Any) -> RunConfig:
    return RunConfig(
        source=SourceConfig(path=src),
        target=dep.target_config,
        engine=EngineConfig(**{"concurrency": 4, "poll_initial": 0.02, "poll_max": 0.2, **engine}),
        manifest=manifest,
        quiet=True,
    )


async def test_small_files_are_batched_and_large_ones_go_alone(tmp_path: Path) -> None:
    """Small files share upload requests (up to --batch-files); a file over the batch size goes alone."""
    make_tree(tmp_path / "src", 60, size=1000)
    (tmp_path / "src" / "large.bin").write_bytes(b"x" * (5 * 1024 * 1024))
    async with MOI.start(tmp_path / "data") as dep:
        summary = await ingest.run(config(dep, tmp_path / "src", tmp_path / "m.db", batch_files=10))
        requests = uploads(await dep.request_counts())
    assert summary.done == 61
    assert 7 <= requests <= 20  # 60 small files in batches of <= 10, plus the large file alone


async def test_batching_can_be_turned_off(tmp_path: Path) -> None:
    """--batch-files 1 sends one file per request."""
    make_tree(tmp_path / "src", 12)
    async with MOI.start(tmp_path / "data") as dep:
        await ingest.run(config(dep, tmp_path / "src", tmp_path / "m.db", batch_files=1))
        assert uploads(await dep.request_counts()) == 12


async def test_tiny_in_flight_limit_still_completes(tmp_path: Path) -> None:
    """Backpressure: with room for 2 files in flight, a 40-file tree still goes through."""
    make_tree(tmp_path / "src", 40)
    async with MOI.start(tmp_path / "data") as dep:
        summary = await ingest.run(config(dep, tmp_path / "src", tmp_path / "m.db", max_in_flight=2))
    assert (summary.done, summary.failed) == (40, 0)


def watching_uploads(on_upload: Callable[[], contextlib.AbstractAsyncContextManager[None]]) -> Any:
    """A middleware that answers each upload request inside ``on_upload()``, entered as it arrives."""

    @web.middleware
    async def watch(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.endswith("/connectors/upload"):
            async with on_upload():
                return await handler(request)
        return await handler(request)

    return watch


async def test_concurrency_bounds_the_uploads_in_flight_and_every_slot_is_used(tmp_path: Path) -> None:
    """--concurrency N: the platform never sees more than N uploads at once, and does see N."""
    make_tree(tmp_path / "src", 12)
    now = peak = 0

    @contextlib.asynccontextmanager
    async def count() -> AsyncIterator[None]:
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        try:
            await anyio.sleep(0.02)  # long enough for every free slot to fill
            yield
        finally:
            now -= 1

    async with MOI.start(tmp_path / "data", Faults(task_delay_ms=0), watch=watching_uploads(count)) as dep:
        summary = await ingest.run(config(dep, tmp_path / "src", tmp_path / "m.db", concurrency=3, batch_files=1))
    assert summary.done == 12
    assert peak == 3


class MeddlingSource(LocalSource):
    """The local folder, with something done to one file right after the walk yields it."""

    def __init__(self, root: Path, name: str, meddle: Callable[[Path], object]) -> None:
        super().__init__(root, WalkOptions())
        self.name, self.meddle = name, meddle

    async def entries(self) -> AsyncIterator[FileItem | Rejected]:  # type: ignore[override]
        async for entry in super().entries():
            if isinstance(entry, FileItem) and entry.rel_path == self.name:
                self.meddle(entry.abs_path)
            yield entry


class TricklingSource(LocalSource):
    """Files in two batches, the second only once the first is stored: as a shared-job worker's claims,
    which come only when the files this worker already holds are finished (by it or by others)."""

    def __init__(self, root: Path, dep: Any, first: int) -> None:
        super().__init__(root, WalkOptions())
        self.dep, self.first = dep, first

    async def entry_batches(self) -> AsyncIterator[list[FileItem | Rejected]]:
        walked = [entry async for entry in super().entries()]
        yield walked[: self.first]
        with anyio.fail_after(20):  # bounded: a planner that holds the first batch back never sends it
            while len(await self.dep.stored()) < self.first:  # noqa: ASYNC110 - the emulator is asked over HTTP
                await anyio.sleep(0.05)
        yield walked[self.first :]

    async def entries(self) -> AsyncIterator[FileItem | Rejected]:  # type: ignore[override]
        async for batch in self.entry_batches():
            for entry in batch:
                yield entry


async def test_a_batched_source_has_each_batch_sent_before_the_next_arrives(tmp_path: Path) -> None:
    """The planner decides walked files in chunks (one manifest query each), but never holds back a
    batch a source says is complete: a worker's claimed files are its alone, so waiting for a fuller
    chunk would stall the whole job (four ``--processes`` workers each holding a few files, forever)."""
    make_tree(tmp_path / "src", 10)
    async with MOI.start(tmp_path / "data", Faults(task_delay_ms=10)) as dep:
        summary = await run_with_source(dep, tmp_path, TricklingSource(tmp_path / "src", dep, first=3))
    assert (summary.done, summary.failed) == (10, 0)


async def run_with_source(dep: Any, tmp_path: Path, source: LocalSource) -> RunSummary:
    target = MoiTarget(dep.target_config, TargetContext())
    stats = RunSummary(destination="test", manifest=tmp_path / "m.db")
    with Manifest(tmp_path / "m.db") as manifest:
        async with manifest.writer():
            await run_engine(
                target=target,
                manifest=manifest,
                run_id=manifest.start_run("test"),
                source=source,
                config=EngineConfig(concurrency=2, poll_initial=0.02, poll_max=0.1),
                progress=Progress(False),
                summary=stats,
            )
    await target.aclose()
    return stats


class CountingSource(LocalSource):
    """The local folder, counting the ``FileItem``s the planner has it build from walked rows."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, WalkOptions())
        self.built: list[str] = []

    def item(self, row: Any) -> FileItem:
        built = super().item(row)
        self.built.append(built.rel_path)
        return built


async def test_a_rerun_builds_an_item_only_for_the_files_it_sends(tmp_path: Path) -> None:
    """A done, unchanged file is skipped off its walked row: no ``FileItem`` (with its pin and path) is
    built for it, which on a no-op rerun of 100,000 files was a third of the time; a changed file is
    built, pinned and sent as before."""
    make_tree(tmp_path / "src", 20)
    async with MOI.start(tmp_path / "data") as dep:
        first = await run_with_source(dep, tmp_path, CountingSource(tmp_path / "src"))
        changed = sorted((tmp_path / "src").rglob("*.*"))[7]
        changed.write_bytes(b"a new version, longer than before")
        source = CountingSource(tmp_path / "src")
        rerun = await run_with_source(dep, tmp_path, source)
    assert (first.done, rerun.done, rerun.skipped) == (20, 1, 19)
    assert source.built == [changed.relative_to(tmp_path / "src").as_posix()]


async def test_file_deleted_between_walk_and_upload_fails_alone(tmp_path: Path) -> None:
    """A file removed after the walk saw it is recorded failed with that reason; the rest are sent."""
    make_tree(tmp_path / "src", 6)

    walk_then_delete = MeddlingSource(tmp_path / "src", "f0002.txt", Path.unlink)
    async with MOI.start(tmp_path / "data") as dep:
        stats = await run_with_source(dep, tmp_path, walk_then_delete)
        stored = await dep.stored()
    assert (stats.done, stats.failed) == (5, 1)
    assert stats.failures == [("f0002.txt", "file disappeared between the walk and the upload")]
    assert "f0002.txt" not in stored


async def test_file_changed_after_the_walk_is_sent_as_it_is_now(tmp_path: Path) -> None:
    """The worker re-reads size and mtime just before sending: the current content arrives whole."""
    make_tree(tmp_path / "src", 3)

    def grow(path: Path) -> None:
        path.write_bytes(b"now much longer than when the walk saw it")

    walk_then_grow = MeddlingSource(tmp_path / "src", "f0002.txt", grow)
    async with MOI.start(tmp_path / "data") as dep:
        stats = await run_with_source(dep, tmp_path, walk_then_grow)
        stored = await dep.stored()
    assert stats.done == 3
    assert stored["f0002.txt"].size == len(b"now much longer than when the walk saw it")


async def test_a_file_the_platform_refuses_does_not_sink_its_batch(tmp_path: Path) -> None:
    """When the platform rejects a batched request, each file is sent alone to isolate the bad one."""
    make_tree(tmp_path / "src", 8, nested=False)
    (tmp_path / "src" / "back\\slash.txt").write_text("MOI refuses backslashes in names")
    async with MOI.start(tmp_path / "data") as dep:
        summary = await ingest.run(config(dep, tmp_path / "src", tmp_path / "m.db", concurrency=1))
    assert (summary.done, summary.failed) == (8, 1)
    path, reason = summary.failures[0]
    assert path == "back\\slash.txt"
    assert "ErrParamInvalid" in reason


async def test_rerun_after_interruption_polls_accepted_files_instead_of_resending(tmp_path: Path) -> None:
    """Files the platform accepted before a stop are only polled on the next run, not uploaded again."""
    make_tree(tmp_path / "src", 10)
    # Tasks keep the delay they were created with: 2 s leaves time to stop while all are processing.
    async with MOI.start(tmp_path / "data", Faults(task_delay_ms=2_000)) as dep:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ingest.run, config(dep, tmp_path / "src", tmp_path / "m.db"))
            with anyio.fail_after(30):
                while processing(tmp_path / "m.db") < 10:  # noqa: ASYNC110 - another task's SQLite writes
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()  # what SIGINT does, minus the exit code
        assert processing(tmp_path / "m.db") == 10
        before = uploads(await dep.request_counts())
        second = await ingest.run(config(dep, tmp_path / "src", tmp_path / "m.db"))
        after = uploads(await dep.request_counts())
    assert (second.done, second.resumed) == (10, 10)
    assert after == before


async def test_files_stuck_on_the_platform_time_out_as_failed(tmp_path: Path) -> None:
    """--task-timeout bounds the wait; the file is recorded failed saying so, and a rerun sends it again."""
    make_tree(tmp_path / "src", 3)
    async with MOI.start(tmp_path / "data", Faults(task_delay_ms=60_000)) as dep:
        first = await ingest.run(config(dep, tmp_path / "src", tmp_path / "m.db", task_timeout=0.3))
        dep.set_faults(task_delay_ms=0)
        second = await ingest.run(config(dep, tmp_path / "src", tmp_path / "m.db"))
    assert first.failed == 3
    assert all("not finished by the platform within 0.3s" in reason for _, reason in first.failures)
    assert second.done == 3


def processing(manifest: Path) -> int:
    with contextlib.closing(sqlite3.connect(manifest)) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM files WHERE state = 'processing'").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # not created yet


async def test_a_file_under_the_in_flight_limit_is_admitted_without_yielding() -> None:
    """Admission costs no loop round while under ``max_in_flight``; at the limit it waits for a finish."""
    completion = Completion(max_in_flight=1)
    order: list[str] = []

    async def note(name: str) -> None:
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(note, "another task")
        await completion.admit()
        order.append("admitted")

        async def admit_second() -> None:
            await completion.admit()
            order.append("second admitted")

        tg.start_soon(admit_second)
        await anyio.sleep(0.05)
        order.append("first finished")
        completion.finish()
    assert order == ["admitted", "another task", "first finished", "second admitted"]
