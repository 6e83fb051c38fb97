"""MOI emulator: the task API (``GET /task/get|files|list``, ``POST /task/retry|pause|resume``).

Each call answers for connector load tasks (``loadtasks``, asked first) and for the tasks of local
uploads alike; an upload task's progress is computed from its files' timestamps, as seen now.

A task (``/task/get``, ``/task/list``) carries MOI 5.0's ``success_file_count`` and ``failed_file_count``
(API-NOTES, "Tasks": 5.0 adds them to the task object) unless the emulator runs with ``--no-task-counts``,
which answers in the seed document's form (no counts), for clients that must cope with both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import anyio
from aiohttp import web

from ingest.emulators.kit.common import ApiError, now_ms, read_json_object
from ingest.emulators.moi.filetypes import file_type
from ingest.emulators.moi.loadtasks import LOADS, LoadTask, files_view, load_task_json, retry_ids
from ingest.emulators.moi.state import state_of
from ingest.emulators.moi.store import MoiStore, Task, TaskFile, file_status
from ingest.emulators.moi.wire import (
    PARAM_INVALID,
    SERVER_ERROR,
    FileStatus,
    TaskStatus,
    bad,
    check_keys,
    ok,
    query_bool,
    query_id,
    query_int,
    query_paging,
    required_id,
)

__all__ = ["get_task", "list_tasks", "pause_task", "resume_task", "retry_task", "task_files"]

#: The user every task and file is attributed to (the seed's examples say "admin").
EMULATOR_USER = "admin"
#: A local upload has no source connector; the document defines no value for it, so 0 ("unknown").
LOCAL_UPLOAD_CONNECTOR_TYPE = 0
#: ``load_interval_type`` 4: load once. Every upload task is a one-shot load.
LOAD_ONCE = 4
_TASK_ORDER_FIELDS = ("created_at", "updated_at", "start_at", "end_at", "id", "status")


# --- computed progress ------------------------------------------------------------------------------------


def _file_updated_ms(f: TaskFile, now: int, paused_at: int | None) -> int:
    """When the file last changed state, as seen at ``now``."""
    if paused_at is not None and f.done_ms > paused_at:
        return paused_at
    for moment in (f.done_ms, f.uploading_ms):
        if moment <= now:
            return moment
    return f.started_ms


def _task_status(task: Task, now: int) -> TaskStatus:
    if task.paused_at_ms is not None and any(f.done_ms > task.paused_at_ms for f in task.files):
        return TaskStatus.PAUSED
    if any(f.done_ms > now for f in task.files):
        return TaskStatus.RUNNING
    return TaskStatus.FINISHED


def _seconds(ms: int) -> int:
    return ms // 1000


def _with_counts(view: dict[str, Any], statuses: Iterable[int], request: web.Request) -> dict[str, Any]:
    """``view`` with MOI 5.0's file counts (files finished successfully, files failed), unless the
    emulator answers in the seed's form."""
    if state_of(request).config.task_counts:
        # Two plain counts, not a Counter: a list page builds this for each of its (often 100) tasks.
        counted = [int(s) for s in statuses]
        view["success_file_count"] = counted.count(FileStatus.SUCCESS)
        view["failed_file_count"] = counted.count(FileStatus.FAILED)
    return view


def _upload_task_json(task: Task, now: int, request: web.Request) -> dict[str, Any]:
    statuses = (file_status(f, now, task.paused_at_ms) for f in task.files)
    return _with_counts(_task_json(task, now), statuses, request)


def _load_json(load: LoadTask, request: web.Request) -> dict[str, Any]:
    return _with_counts(load_task_json(load), (f.status for f in load.files), request)


def _task_json(task: Task, now: int) -> dict[str, Any]:
    status = _task_status(task, now)
    updated = max([task.updated_ms, *(_file_updated_ms(f, now, task.paused_at_ms) for f in task.files)])
    finished = max([task.created_ms, *(f.done_ms for f in task.files)])
    return {
        "id": task.id,
        "source_connector_id": 0,
        "source_connector_type": LOCAL_UPLOAD_CONNECTOR_TYPE,
        "volume_id": task.volume_id,
        "volume_name": task.volume_name,
        "name": "",
        "status": int(status),
        "creator": EMULATOR_USER,
        "source_config": {
            "common_file_task_config": {
                "uris": task.uris,
                "load_mode_config": {"load_interval_type": LOAD_ONCE, "interval": 0},
            }
        },
        "start_at": _seconds(task.created_ms),
        "end_at": _seconds(finished) if status is TaskStatus.FINISHED else 0,
        "created_at": _seconds(task.created_ms),
        "updated_at": _seconds(updated),
    }


def _task_file_json(task: Task, f: TaskFile, status: FileStatus, now: int) -> dict[str, Any]:
    terminal = status in (FileStatus.SUCCESS, FileStatus.FAILED)
    return {
        "id": f.file_id,
        "name": f.name,
        "type": file_type(f.name),
        "status": int(status),
        "size": f.size,
        "update_time": _seconds(_file_updated_ms(f, now, task.paused_at_ms)),
        "other_metadata": "",
        "reason": f.fail_reason if status is FileStatus.FAILED else "",
        "user": EMULATOR_USER,
        "start_time": _seconds(f.started_ms),
        "end_time": _seconds(f.done_ms) if terminal else 0,
        "path": f"/{task.volume_name}/{f.name}",
    }


# --- handlers -------------------------------------------------------------------------------------------


async def _either_task(request: web.Request, task_id: str) -> tuple[LoadTask | None, Task | None]:
    """The load task with this id, else the upload task: one store call, on the loop when the store is free
    (two point lookups; a status poll is the emulator's most frequent request)."""
    store, loads = state_of(request).store, request.app[LOADS].loads

    def lookup() -> tuple[LoadTask | None, Task | None]:
        load = loads.task(task_id)
        return (load, None) if load is not None else (None, store.task(task_id))

    return await store.run(lookup)


async def get_task(request: web.Request) -> web.Response:
    task_id = query_id(request, "task_id")
    load, task = await _either_task(request, task_id)
    if load is not None:
        return ok(request, {"task": _load_json(load, request)})
    if task is None:
        # As the real service does (API-NOTES): an unknown task is an ErrServer inside HTTP 200.
        raise ApiError(200, SERVER_ERROR, f"task {task_id} not found")
    return ok(request, {"task": _upload_task_json(task, now_ms(), request)})


async def task_files(request: web.Request) -> web.Response:
    task_id = query_id(request, "task_id")
    wanted = query_int(request, "status", None, 0, max(FileStatus))
    page, page_size = query_paging(request)
    load, task = await _either_task(request, task_id)
    if load is not None:
        return ok(request, files_view(load, wanted, page, page_size))
    if task is None:
        # Answered as /task/get answers it (API-NOTES: ErrServer inside HTTP 200); the documents give no
        # other form for an unknown task, so none is invented here.
        raise ApiError(200, SERVER_ERROR, f"task {task_id} not found")
    now = now_ms()
    statuses = [(f, file_status(f, now, task.paused_at_ms)) for f in task.files]
    matching = [(f, s) for f, s in statuses if wanted is None or s == wanted]
    page_items = matching[(page - 1) * page_size : page * page_size]
    return ok(
        request,
        {
            "total": len(matching),
            "total_success": sum(s is FileStatus.SUCCESS for _, s in statuses),
            "total_failed": sum(s is FileStatus.FAILED for _, s in statuses),
            "files": [_task_file_json(task, f, s, now) for f, s in page_items],
        },
    )


def _load_interval_types(request: web.Request) -> set[int] | None:
    """``load_interval_types`` as repeated parameters or a comma-separated list."""
    raw = [item.strip() for value in request.query.getall("load_interval_types", []) for item in value.split(",")]
    raw = [item for item in raw if item]
    if not raw:
        return None
    try:
        values = {int(item) for item in raw}
    except ValueError:
        raise bad("query parameter load_interval_types must be integers 0-4") from None
    if not values <= {0, 1, 2, 3, 4}:
        raise bad("query parameter load_interval_types must be integers 0-4")
    return values


async def list_tasks(request: web.Request) -> web.Response:
    page, page_size = query_paging(request)
    wanted = query_int(request, "status", None, 0, max(TaskStatus))
    descending = query_bool(request, "is_desc")
    order_by = request.query.get("order_by", "").strip() or "created_at"
    if order_by not in _TASK_ORDER_FIELDS:
        raise bad(f"query parameter order_by must be one of: {', '.join(_TASK_ORDER_FIELDS)}")
    intervals = _load_interval_types(request)
    store, load_store = state_of(request).store, request.app[LOADS].loads
    newest_first = wanted is None and intervals is None and order_by in ("created_at", "id")

    def read() -> tuple[list[LoadTask], list[Task], int, int]:
        """The load tasks, the upload tasks that can reach the page, how many upload tasks come before
        those read (in the page's order), and how many were not read at all."""
        loads = load_store.tasks()
        if not newest_first:
            return loads, store.tasks(), 0, 0
        # The order a client polling its newest uploads asks for: only the upload tasks that can reach this
        # page are built (each answer used to build every task of the account, growing with it); with no
        # load task to interleave, only the page itself.
        skipped = 0 if loads else (page - 1) * page_size
        tasks, total = store.newest_tasks(
            page * page_size - skipped, offset=skipped, descending=descending, by_id=order_by == "id"
        )
        return loads, tasks, skipped, total - len(tasks)

    # One hop for both reads (each hop is a queue put, a thread wake-up and a wake-up of the loop).
    loads, tasks, skipped, uploads_left_out = await anyio.to_thread.run_sync(read)
    now = now_ms()
    views = [_upload_task_json(task, now, request) for task in tasks] + [_load_json(load, request) for load in loads]
    if intervals is not None:
        views = [
            v
            for v in views
            if v["source_config"]["common_file_task_config"]["load_mode_config"]["load_interval_type"] in intervals
        ]
    views = [v for v in views if wanted is None or v["status"] == wanted]
    # Ids are snowflakes: ordering them numerically is ordering by creation, the natural tie-breaker.
    views.sort(key=lambda v: (int(v[order_by]), int(v["id"])), reverse=descending)
    start = (page - 1) * page_size - skipped
    page_views = views[start : start + page_size]
    return ok(request, {"tasks": page_views, "total": len(views) + uploads_left_out})


async def retry_task(request: web.Request) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    check_keys(body, {"task_id", "ids"})
    task_id, file_ids = retry_ids(body)
    state = state_of(request)
    service = request.app[LOADS]
    if await anyio.to_thread.run_sync(service.loads.knows, task_id):
        await anyio.to_thread.run_sync(service.loads.retry, task_id, file_ids)
        service.wake()
        return ok(request, None)
    await anyio.to_thread.run_sync(
        lambda: state.store.retry(task_id, file_ids, delay_ms=state.task_delay_ms, fail_rate=state.task_fail_rate)
    )
    return ok(request, None)


async def _task_action(
    request: web.Request, action: Callable[[MoiStore, str], None], load_action: Callable[[str], None]
) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    check_keys(body, {"task_id"})
    task_id = required_id(body, "task_id")
    service = request.app[LOADS]
    if await anyio.to_thread.run_sync(service.loads.knows, task_id):
        await anyio.to_thread.run_sync(load_action, task_id)
        service.wake()
        return ok(request, None)
    store = state_of(request).store
    await anyio.to_thread.run_sync(action, store, task_id)
    return ok(request, None)


async def pause_task(request: web.Request) -> web.Response:
    return await _task_action(request, MoiStore.pause, request.app[LOADS].loads.pause)


async def resume_task(request: web.Request) -> web.Response:
    return await _task_action(request, MoiStore.resume, request.app[LOADS].loads.resume)
