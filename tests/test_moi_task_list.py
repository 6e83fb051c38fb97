"""Following MOI upload tasks through ``GET /task/list`` (``ingest.platforms.moi.tasklist``).

Every upload has a task of its own (with one file per upload, every file); a page of ``/task/list``
answers for many of them at once, and ``/task/files`` is asked only for what the list cannot settle.
Each test counts the requests the emulator received (``/_emulator/stats``) around one ``MoiTarget.poll``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

import ingest
from ingest.config import EngineConfig, RunConfig, SourceConfig
from ingest.emulators.kit.server import serve_in_background
from ingest.emulators.moi.store import INJECTED_FAILURE
from ingest.models import FileItem, Receipt, RemoteState
from ingest.platforms.base import TargetContext
from ingest.platforms.moi import tasklist
from ingest.platforms.moi.client import MoiClient
from ingest.platforms.moi.target import MoiTarget, MoiTargetConfig
from ingest.platforms.moi.wire import ConnectorCreate, SourceType, TaskCreate, TaskStatus
from tests.conftest import make_tree
from tests.moi_fixtures import KEY, VOLUME, Bucket, Moi, bucket, eventually, moto_endpoint, running_moi

pytestmark = pytest.mark.anyio

__all__ = ["bucket", "moto_endpoint"]  # fixtures, imported for pytest


@asynccontextmanager
async def moi_target(tmp_path: Path, **emulator: Any) -> AsyncIterator[tuple[Moi, MoiTarget]]:
    async with running_moi(tmp_path / "moi", **emulator) as moi:
        config = MoiTargetConfig(endpoint=moi.url, api_key=SecretStr(KEY), volume_id=VOLUME)
        target = MoiTarget(config, TargetContext(connections=4))
        try:
            yield moi, target
        finally:
            await target.aclose()


async def requests(moi: Moi) -> dict[str, int]:
    async with aiohttp.ClientSession() as s, s.get(moi.url + "/_emulator/stats") as r:
        return dict((await r.json())["requests"])


async def polled(moi: Moi, target: MoiTarget, receipts: list[Receipt]) -> tuple[dict[str, Any], dict[str, int]]:
    """One poll: ``{rel_path: (state, reason)}`` and the requests it cost, by route."""
    before = await requests(moi)
    statuses = await target.poll(receipts)
    after = await requests(moi)
    cost = {route: n - before.get(route, 0) for route, n in after.items() if n != before.get(route, 0)}
    return {s.rel_path: (s.state, s.reason) for s in statuses}, cost


async def upload_one_by_one(target: MoiTarget, tmp_path: Path, names: list[str]) -> list[Receipt]:
    """Each file in its own upload request, hence its own MOI task."""
    receipts = []
    for name in names:
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"body of {name}\n".encode())
        (receipt,) = await target.submit([FileItem(name, path, path.stat().st_size, 0)], dedup=False)
        assert receipt.error is None
        receipts.append(receipt)
    return receipts


async def finished(target: MoiTarget, receipts: list[Receipt]) -> None:
    async def all_finished() -> bool:
        for r in receipts:
            assert r.task_id is not None
            if (await target.client.get_task(r.task_id)).status != TaskStatus.FINISHED:
                return False
        return True

    await eventually(all_finished)


async def finished_load(target: MoiTarget, task_id: str) -> None:
    async def failed_and_finished() -> bool:
        task = await target.client.get_task(task_id)
        return task.status == TaskStatus.FINISHED and task.failed_file_count == 1

    await eventually(failed_and_finished)


async def test_many_finished_single_file_tasks_are_settled_by_one_list_request(tmp_path: Path) -> None:
    async with moi_target(tmp_path) as (moi, target):
        receipts = await upload_one_by_one(target, tmp_path, [f"f{i}.txt" for i in range(12)])
        await finished(target, receipts)
        states, cost = await polled(moi, target, receipts)
    assert states == {r.rel_path: (RemoteState.DONE, None) for r in receipts}
    assert cost == {"GET /task/list": 1}


async def test_running_tasks_are_pending_without_asking_their_files(tmp_path: Path) -> None:
    async with moi_target(tmp_path, task_delay_ms=600_000) as (moi, target):
        receipts = await upload_one_by_one(target, tmp_path, ["a.txt", "b.txt", "c.txt"])
        states, cost = await polled(moi, target, receipts)
    assert states == {r.rel_path: (RemoteState.PENDING, None) for r in receipts}
    assert cost == {"GET /task/list": 1}


async def test_a_failed_single_file_task_gets_its_reason_from_its_files(tmp_path: Path) -> None:
    """The list says a task failed; only that task's /task/files is asked, for the reason."""
    async with moi_target(tmp_path) as (moi, target):
        good = await upload_one_by_one(target, tmp_path, ["ok1.txt", "ok2.txt"])
        moi.state.task_fail_rate = 1.0
        bad = await upload_one_by_one(target, tmp_path, ["bad.txt"])
        moi.state.task_fail_rate = 0.0
        await finished(target, good + bad)
        states, cost = await polled(moi, target, good + bad)
    assert states["ok1.txt"] == states["ok2.txt"] == (RemoteState.DONE, None)
    assert states["bad.txt"] == (RemoteState.FAILED, INJECTED_FAILURE)
    assert cost == {"GET /task/list": 1, "GET /task/files": 1}


async def test_without_the_5_0_counts_each_finished_task_is_asked_for_its_files(tmp_path: Path) -> None:
    """The seed's task form has no file counts: a finished task cannot say success, so /task/files does."""
    async with moi_target(tmp_path, task_counts=False) as (moi, target):
        receipts = await upload_one_by_one(target, tmp_path, ["a.txt", "b.txt", "c.txt"])
        await finished(target, receipts)
        states, cost = await polled(moi, target, receipts)
    assert states == {r.rel_path: (RemoteState.DONE, None) for r in receipts}
    assert cost == {"GET /task/list": 1, "GET /task/files": 3}


async def test_tasks_beyond_the_pages_read_are_asked_the_old_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer's newer tasks push ours out of the window: not failed, asked through /task/files."""
    monkeypatch.setattr(tasklist, "LIST_PAGE", 2)
    monkeypatch.setattr(tasklist, "LIST_MAX_PAGES", 2)
    async with moi_target(tmp_path) as (moi, target):
        ours = await upload_one_by_one(target, tmp_path, ["ours1.txt", "ours2.txt"])
        theirs = await upload_one_by_one(target, tmp_path, [f"theirs{i}.txt" for i in range(5)])
        await finished(target, ours + theirs)
        states, cost = await polled(moi, target, ours)
    assert states == {r.rel_path: (RemoteState.DONE, None) for r in ours}
    assert cost == {"GET /task/list": 2, "GET /task/files": 2}


async def test_pages_are_read_until_every_task_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasklist, "LIST_PAGE", 2)
    async with moi_target(tmp_path) as (moi, target):
        ours = await upload_one_by_one(target, tmp_path, [f"f{i}.txt" for i in range(5)])
        newer = await upload_one_by_one(target, tmp_path, ["newer.txt"])
        await finished(target, ours + newer)
        states, cost = await polled(moi, target, ours)
    assert states == {r.rel_path: (RemoteState.DONE, None) for r in ours}
    assert cost == {"GET /task/list": 3}  # 6 tasks, 2 a page: all of ours are seen by the third page


async def test_reading_stops_at_tasks_older_than_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task MOI no longer lists is not looked for through the whole account: past our oldest task
    (ids are snowflakes) the pages end, and /task/files answers for it."""
    monkeypatch.setattr(tasklist, "LIST_PAGE", 2)
    async with moi_target(tmp_path) as (moi, target):
        await upload_one_by_one(target, tmp_path, [f"old{i}.txt" for i in range(6)])
        ours = await upload_one_by_one(target, tmp_path, ["a.txt", "b.txt"])
        await finished(target, ours)
        assert ours[0].task_id is not None
        gone = Receipt("gone.txt", remote_id="1", task_id=str(int(ours[0].task_id) - 1), extra={"task_files": "1"})
        states, cost = await polled(moi, target, [*ours, gone])
    assert states["a.txt"] == states["b.txt"] == (RemoteState.DONE, None)
    assert states["gone.txt"][0] is RemoteState.FAILED  # /task/files: MOI does not know that task
    assert cost == {"GET /task/list": 2, "GET /task/files": 1}


async def test_other_kinds_of_task_in_the_list_are_passed_over(tmp_path: Path, bucket: Bucket) -> None:
    """A connector load task (here one that failed) between our upload tasks changes nothing for them."""
    bucket.fill(2)
    async with moi_target(tmp_path) as (moi, target):
        first = await upload_one_by_one(target, tmp_path, ["a.txt"])
        connector = await target.client.create_connector(
            ConnectorCreate(name="src", source_type=SourceType.S3, config=bucket.s3_config())
        )
        load = await target.client.create_task(
            TaskCreate(source_connector_id=connector.id, volume_id=VOLUME, uris=["docs/missing.pdf"])
        )
        assert load is not None
        await finished_load(target, load.id)
        last = await upload_one_by_one(target, tmp_path, ["b.txt"])
        await finished(target, first + last)
        states, cost = await polled(moi, target, first + last)
    assert states == {r.rel_path: (RemoteState.DONE, None) for r in first + last}
    assert cost == {"GET /task/list": 1}


async def upload_batches(target: MoiTarget, tmp_path: Path, batches: list[list[str]]) -> list[Receipt]:
    """Each list of names in one upload request, hence one MOI task of that many files."""
    receipts = []
    for names in batches:
        items = []
        for name in names:
            path = tmp_path / "src" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"body of {name}\n".encode())
            items.append(FileItem(name, path, path.stat().st_size, 0))
        got = await target.submit(items, dedup=False)
        assert all(r.error is None for r in got)
        receipts.extend(got)
    return receipts


async def test_finished_batched_tasks_are_settled_by_one_list_request(tmp_path: Path) -> None:
    """A batched task whose every file succeeded settles all of them: no /task/files per task (25
    requests a poll for 500 batched files before)."""
    async with moi_target(tmp_path) as (moi, target):
        receipts = await upload_batches(target, tmp_path, [["a.txt", "b.txt"], ["c.txt", "d.txt", "e.txt"]])
        await finished(target, receipts)
        states, cost = await polled(moi, target, receipts)
    assert states == {r.rel_path: (RemoteState.DONE, None) for r in receipts}
    assert cost == {"GET /task/list": 1}


async def test_running_batched_tasks_leave_all_their_files_pending(tmp_path: Path) -> None:
    async with moi_target(tmp_path, task_delay_ms=600_000) as (moi, target):
        receipts = await upload_batches(target, tmp_path, [["a.txt", "b.txt"], ["c.txt", "d.txt"]])
        states, cost = await polled(moi, target, receipts)
    assert states == {r.rel_path: (RemoteState.PENDING, None) for r in receipts}
    assert cost == {"GET /task/list": 1}


async def test_a_batched_task_with_a_failed_file_is_asked_through_its_files(tmp_path: Path) -> None:
    async with moi_target(tmp_path) as (moi, target):
        good = await upload_batches(target, tmp_path, [["ok1.txt", "ok2.txt"]])
        moi.state.task_fail_rate = 1.0
        bad = await upload_batches(target, tmp_path, [["bad1.txt", "bad2.txt"]])
        moi.state.task_fail_rate = 0.0
        await finished(target, good + bad)
        states, cost = await polled(moi, target, good + bad)
    assert states["ok1.txt"] == states["ok2.txt"] == (RemoteState.DONE, None)
    assert states["bad1.txt"] == states["bad2.txt"] == (RemoteState.FAILED, INJECTED_FAILURE)
    assert cost == {"GET /task/list": 1, "GET /task/files": 1}


async def test_a_task_counting_fewer_successes_than_its_upload_carried_is_asked_its_files(tmp_path: Path) -> None:
    """A receipt saying its upload carried more files than the task counts in success (one refused at
    upload, say) is not settled by the count: the task's /task/files answers."""
    async with moi_target(tmp_path) as (moi, target):
        receipts = await upload_batches(target, tmp_path, [["a.txt", "b.txt"], ["c.txt", "d.txt"]])
        await finished(target, receipts)
        said_three = [
            Receipt(r.rel_path, r.remote_id, r.task_id, extra={**r.extra, "task_files": "3"}) for r in receipts[2:]
        ]
        states, cost = await polled(moi, target, [*receipts[:2], *said_three])
    assert states == {r.rel_path: (RemoteState.DONE, None) for r in receipts}
    assert cost == {"GET /task/list": 1, "GET /task/files": 1}


async def test_a_single_task_is_asked_through_its_files(tmp_path: Path) -> None:
    async with moi_target(tmp_path) as (moi, target):
        receipts = await upload_batches(target, tmp_path, [["a.txt", "b.txt"]])
        await finished(target, receipts)
        states, cost = await polled(moi, target, receipts)
    assert set(states.values()) == {(RemoteState.DONE, None)}
    assert cost == {"GET /task/files": 1}  # one task: no list page pays off


async def test_a_run_of_single_file_uploads_polls_them_together(tmp_path: Path) -> None:
    """``--batch-files 1``: the poller spaces its rounds by poll_initial, so files submitted meanwhile are
    followed by a shared list page rather than a /task/files each."""
    make_tree(tmp_path / "src", 20)
    async with running_moi(tmp_path / "moi", task_delay_ms=10) as moi:
        config = RunConfig(
            source=SourceConfig(path=tmp_path / "src"),
            target=MoiTargetConfig(endpoint=moi.url, api_key=SecretStr(KEY), volume_id=VOLUME),
            engine=EngineConfig(concurrency=4, batch_files=1, poll_initial=2.0, poll_max=2.0),
            manifest=tmp_path / "m.db",
            quiet=True,
        )
        summary = await ingest.run(config)
        cost = await requests(moi)
    assert (summary.done, summary.failed) == (20, 0)
    assert cost["POST /connectors/upload"] == 20
    polls = cost.get("GET /task/list", 0) + cost.get("GET /task/files", 0)
    assert polls <= 5  # one list page a round (2 s apart); 20 before, one /task/files a file


async def test_a_failing_list_leaves_the_tasks_to_the_next_poll(tmp_path: Path) -> None:
    """A server error on /task/list (and then on /task/files) is no news, not a failure: the files are
    left out of the answer and settled by a later poll."""
    async with moi_target(tmp_path) as (moi, target):
        receipts = await upload_one_by_one(target, tmp_path, ["a.txt", "b.txt"])
        await finished(target, receipts)
        moi.state.faults.settings.error_rate = 1.0
        states, cost = await polled(moi, target, receipts)
        assert states == {}
        assert cost == {"GET /task/list": 1, "GET /task/files": 2}  # the list failed: asked the old way
        moi.state.faults.settings.error_rate = 0.0
        states, cost = await polled(moi, target, receipts)
    assert states == {r.rel_path: (RemoteState.DONE, None) for r in receipts}
    assert cost == {"GET /task/list": 1}


@asynccontextmanager
async def canned_task_list(tasks: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A server on 127.0.0.1 that answers ``GET /task/list`` with ``tasks``: for a task in a form the strict
    emulator never writes (another MOI version, another writer)."""

    async def task_list(request: web.Request) -> web.Response:
        return web.json_response({"code": "OK", "msg": "OK", "data": {"tasks": tasks, "total": len(tasks)}})

    app = web.Application()
    app.router.add_get("/task/list", task_list)
    async with serve_in_background(app) as url:
        yield url


async def test_only_the_tasks_asked_about_are_read_field_by_field() -> None:
    """A poll validates only the tasks it follows (most of a page is other tasks: validating each cost
    more than the request): another writer's task in a form we cannot read does not stop the page from
    settling ours, and ours are read as strictly as before."""
    ours = {"id": 900, "status": "4", "success_file_count": 1, "failed_file_count": 0}
    theirs = {"id": 800, "status": "half done", "source_config": "not an object"}
    async with canned_task_list([ours, theirs]) as url, MoiClient(url, KEY, retries=None) as client:
        listed = await tasklist.listed_tasks(client, ["900"])
        assert listed is not None
        assert tasklist.verdict(listed.get("900")) is tasklist.Verdict.DONE
    async with canned_task_list([{**ours, "status": "half done"}]) as url, MoiClient(url, KEY, retries=None) as client:
        assert await tasklist.listed_tasks(client, ["900"]) == {}  # ours unreadable: asked the old way


def page_sizes(target: MoiTarget) -> list[int | None]:
    """The ``page_size`` of each ``/task/list`` request the target makes from now on (the requests still go
    to the emulator)."""
    sizes: list[int | None] = []
    list_task_states = target.client.list_task_states

    async def recording(query: Any, wanted: Any) -> Any:
        sizes.append(query.page_size)
        return await list_task_states(query, wanted)

    target.client.list_task_states = recording  # type: ignore[method-assign]
    return sizes


async def test_a_poll_reads_a_page_as_deep_as_its_oldest_task(tmp_path: Path) -> None:
    """The list is newest first: a poll needs the tasks made since the oldest one it awaits, and half as
    many again for other writers' (at least ``LIST_PAGE_MIN``), not ``LIST_PAGE`` (~42 KB) every time."""
    async with moi_target(tmp_path) as (moi, target):
        receipts = await upload_one_by_one(target, tmp_path, [f"f{i}.txt" for i in range(30)])
        await finished(target, receipts)
        sizes = page_sizes(target)
        newest, cost_newest = await polled(moi, target, receipts[-10:])
        rest, cost_rest = await polled(moi, target, receipts[:-10])
    assert sizes == [tasklist.LIST_PAGE_MIN, 45]  # 10 tasks deep: the minimum; 30 deep: 30 + 15
    assert set(newest.values()) == set(rest.values()) == {(RemoteState.DONE, None)}
    assert cost_newest == cost_rest == {"GET /task/list": 1}


async def test_tasks_this_process_did_not_make_are_looked_for_in_a_full_page(tmp_path: Path) -> None:
    """Followed from an earlier run's manifest, a task could sit anywhere in the list."""
    async with moi_target(tmp_path) as (moi, earlier):
        receipts = await upload_one_by_one(earlier, tmp_path, [f"f{i}.txt" for i in range(3)])
        await finished(earlier, receipts)
        config = MoiTargetConfig(endpoint=moi.url, api_key=SecretStr(KEY), volume_id=VOLUME)
        later = MoiTarget(config, TargetContext(connections=4))
        try:
            sizes = page_sizes(later)
            states, cost = await polled(moi, later, receipts)
        finally:
            await later.aclose()
    assert sizes == [tasklist.LIST_PAGE]
    assert set(states.values()) == {(RemoteState.DONE, None)}
    assert cost == {"GET /task/list": 1}


async def test_a_task_is_followed_until_its_files_are_settled(tmp_path: Path) -> None:
    """What the target remembers of its tasks' order stays as small as what it still awaits."""
    async with moi_target(tmp_path, task_delay_ms=600_000) as (moi, target):
        running = await upload_one_by_one(target, tmp_path, ["a.txt", "b.txt"])
        await polled(moi, target, running)
        assert len(target._task_order) == 2  # still running: still followed
    async with moi_target(tmp_path / "quick") as (moi, target):
        done = await upload_one_by_one(target, tmp_path, ["c.txt", "d.txt"])
        await finished(target, done)
        await polled(moi, target, done)
        assert len(target._task_order) == 0
