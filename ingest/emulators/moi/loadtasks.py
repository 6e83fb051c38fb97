"""MOI emulator: load tasks that copy files from a connector's source into a volume.

``POST /task`` creates one; ``/task/update`` and ``/task/delete`` change or remove it; ``/task/get``,
``/task/files``, ``/task/list``, ``/task/pause|resume|retry`` answer for load tasks and for the tasks of
local uploads alike (``tasks`` asks this module first, then its own upload tasks).

A background worker (one per app, started with the store) copies files: it claims waiting files of
running tasks, at most ``load_concurrency`` at a time, and streams each object from the connector's
bucket into the volume (``sources.copy_object``: chunk by chunk into staging, then moved into
place), so a large object never sits in memory. Statuses follow the seed: file 1 waiting, 2
uploading, 3 paused, 4 failed, 5 success, 6 retrying; task 1 running, 2 pausing, 3 paused, 4 finished.

- **pause** freezes waiting files (status 3); files being copied finish, and the task shows 2 (pausing)
  until they have, then 3. **resume** puts paused files back to waiting.
- **retry** sends failed files (4) back through 6 (retrying) to a new copy; a finished task runs again.
- **delete** removes the task and its file list; files already copied stay in the volume.
- **periodic tasks** (``load_interval_type`` 1 day, 2 hour, 3 minute; ``interval`` units, at least 1)
  stay 1 (runnable) between runs and run again one period after the previous run started. A re-run
  copies only objects whose ETag changed since this task last copied them. ``clock_speed`` divides
  the periods, so a test can watch "hourly" runs happen in seconds.
- Only OSS and S3 connectors can be read; files of a DIFY, HDFS or MO task fail with that reason.

Load task ids are snowflakes from the same generator as upload tasks, so the two kinds never collide.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
from aiohttp import web

from ingest.emulators.kit.common import ApiError, now_ms, read_json_object
from ingest.emulators.moi.access import check_volume
from ingest.emulators.moi.connectors import (
    BUCKET_TYPES,
    Connector,
    ConnectorStore,
    StoreLike,
    bucket_config,
    parse_connector_id,
)
from ingest.emulators.moi.filetypes import file_type
from ingest.emulators.moi.sources import SourceUnavailable, copy_object, head_object
from ingest.emulators.moi.wire import (
    NOT_FOUND,
    PARAM_INVALID,
    FileStatus,
    TaskStatus,
    bad,
    check_keys,
    id_value,
    ok,
    required_id,
    short,
)

__all__ = [
    "LOADS",
    "LOAD_SCHEMA",
    "LoadHost",
    "LoadService",
    "LoadTask",
    "add_load_routes",
    "files_view",
    "load_task_json",
    "retry_ids",
]

LOAD_SCHEMA = """
CREATE TABLE IF NOT EXISTS load_tasks (
    id TEXT PRIMARY KEY,
    connector_id INTEGER NOT NULL,
    connector_type INTEGER NOT NULL,
    volume_id TEXT NOT NULL,
    interval_type INTEGER NOT NULL,
    interval INTEGER NOT NULL,
    status INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    next_run_ms INTEGER,
    runs INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS load_tasks_connector ON load_tasks (connector_id);
CREATE TABLE IF NOT EXISTS load_files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    uri TEXT NOT NULL,
    size INTEGER NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    etag TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (task_id, uri)
);
CREATE INDEX IF NOT EXISTS load_files_status ON load_files (status, seq);
"""

ONCE = 4
#: Milliseconds of one unit of ``load_interval_type`` 1 (day), 2 (hour), 3 (minute).
_UNIT_MS = {1: 86_400_000, 2: 3_600_000, 3: 60_000}
MAX_URIS = 10_000
#: Longest the idle worker sleeps before looking for due periodic runs again.
IDLE_WAKE_SECONDS = 1.0
EMULATOR_USER = "admin"
INJECTED_FAILURE = "load failed: injected fault"
_PENDING = (int(FileStatus.WAITING), int(FileStatus.RETRYING))


class LoadHost(Protocol):
    """What the worker reads from the running emulator (``moi.MoiState``); tests change these live."""

    task_delay_ms: int
    task_fail_rate: float

    @property
    def store(self) -> LoadStoreLike: ...


class LoadStoreLike(StoreLike, Protocol):
    staging_dir: Path

    def volume_name(self, volume_id: str) -> str | None: ...
    def store_loaded_file(
        self,
        volume_id: str,
        dest: str,
        staged: Path,
        size: int,
        md5: str,
        file_id: str,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None: ...
    def has_stored_file(self, volume_id: str, dest: str) -> bool: ...
    def upload_task_exists(self, task_id: str) -> bool: ...
    def delete_upload_task(self, task_id: str) -> None: ...


# --- values -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadFile:
    seq: int
    file_id: str
    uri: str
    size: int
    status: int
    reason: str
    etag: str
    start_ms: int
    end_ms: int
    updated_ms: int


@dataclass(frozen=True, slots=True)
class LoadTask:
    id: str
    connector_id: int
    connector_type: int
    volume_id: str
    volume_name: str
    interval_type: int
    interval: int
    status: int
    created_ms: int
    updated_ms: int
    start_ms: int
    end_ms: int
    next_run_ms: int | None
    runs: int
    files: list[LoadFile]


@dataclass(frozen=True, slots=True)
class _Claim:
    seq: int
    task_id: str
    file_id: str
    uri: str
    volume_id: str
    connector_id: int
    etag: str


_TASK_COLUMNS = (
    "t.id, t.connector_id, t.connector_type, t.volume_id, COALESCE(v.name, t.volume_id), t.interval_type,"
    " t.interval, t.status, t.created_ms, t.updated_ms, t.start_ms, t.end_ms, t.next_run_ms, t.runs"
)
_FILE_COLUMNS = "seq, file_id, uri, size, status, reason, etag, start_ms, end_ms, updated_ms"


def _file(row: Iterable[Any]) -> LoadFile:
    return LoadFile(*row)


def _task(row: tuple[Any, ...], files: list[LoadFile]) -> LoadTask:
    (task_id, connector_id, connector_type, volume_id, volume_name, interval_type, interval, status,
     created_ms, updated_ms, start_ms, end_ms, next_run_ms, runs) = row  # fmt: skip
    return LoadTask(
        task_id, connector_id, connector_type, volume_id, volume_name, interval_type, interval, status,
        created_ms, updated_ms, start_ms, end_ms, next_run_ms, runs, files,
    )  # fmt: skip


# --- the store --------------------------------------------------------------------------------------------


class LoadStore:
    """Load tasks in the emulator's database. Blocking: call through ``anyio.to_thread``."""

    def __init__(self, host: LoadHost, clock_speed: float) -> None:
        self._host = host
        self.clock_speed = clock_speed

    @property
    def store(self) -> LoadStoreLike:
        return self._host.store

    def period_ms(self, interval_type: int, interval: int) -> int | None:
        if interval_type not in _UNIT_MS:
            return None
        return max(1, int(_UNIT_MS[interval_type] * max(interval, 1) / self.clock_speed))

    # reads

    def knows(self, task_id: str) -> bool:
        with self.store.reading() as db:
            return db.execute("SELECT 1 FROM load_tasks WHERE id = ?", (task_id,)).fetchone() is not None

    def task(self, task_id: str) -> LoadTask | None:
        with self.store.reading() as db:
            row = db.execute(
                f"SELECT {_TASK_COLUMNS} FROM load_tasks t LEFT JOIN volumes v ON v.id = t.volume_id WHERE t.id = ?",
                (task_id,),
            ).fetchone()
            if row is None:
                return None
            files = [
                _file(r)
                for r in db.execute(
                    f"SELECT {_FILE_COLUMNS} FROM load_files WHERE task_id = ? ORDER BY seq", (task_id,)
                )
            ]
        return _task(row, files)

    def tasks(self) -> list[LoadTask]:
        with self.store.reading() as db:
            rows = db.execute(
                f"SELECT {_TASK_COLUMNS} FROM load_tasks t LEFT JOIN volumes v ON v.id = t.volume_id"
            ).fetchall()
            files: dict[str, list[LoadFile]] = {}
            for task_id, *values in db.execute(f"SELECT task_id, {_FILE_COLUMNS} FROM load_files ORDER BY seq"):
                files.setdefault(task_id, []).append(_file(values))
        return [_task(row, files.get(row[0], [])) for row in rows]

    # changes requested by clients

    def create(self, connector: Connector, volume_id: str, uris: list[str], interval_type: int, interval: int) -> str:
        now = now_ms()
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM volumes WHERE id = ?", (volume_id,)).fetchone() is None:
                raise ApiError(404, NOT_FOUND, f"volume {short(volume_id)} not found")
            if db.execute("SELECT 1 FROM connectors WHERE id = ?", (connector.id,)).fetchone() is None:
                raise ApiError(404, NOT_FOUND, f"connector {connector.id} not found")
            task_id = self.store.ids.next_id()
            db.execute(
                "INSERT INTO load_tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, 1)",
                (task_id, connector.id, connector.source_type, volume_id, interval_type, interval,
                 int(TaskStatus.RUNNING), now, now, now),
            )  # fmt: skip
            self._add_files(db, task_id, uris, int(FileStatus.WAITING), now)
        return task_id

    def _add_files(self, db: sqlite3.Connection, task_id: str, uris: Iterable[str], status: int, now: int) -> None:
        db.executemany(
            f"INSERT INTO load_files ({_FILE_COLUMNS}, task_id) VALUES (NULL, ?, ?, 0, ?, '', '', 0, 0, ?, ?)",
            [(self.store.ids.next_id(), uri, status, now, task_id) for uri in uris],
        )

    def _require(self, db: sqlite3.Connection, task_id: str) -> tuple[int, int, int]:
        """``(status, interval_type, start_ms)`` of a task, or 404."""
        row = db.execute("SELECT status, interval_type, start_ms FROM load_tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise ApiError(404, NOT_FOUND, f"task {task_id} not found")
        return int(row[0]), int(row[1]), int(row[2])

    def pause(self, task_id: str) -> None:
        with self.store.transaction() as db:
            status, _, _ = self._require(db, task_id)
            if status != TaskStatus.RUNNING:
                return  # pausing, paused or finished tasks are left as they are
            now = now_ms()
            db.execute(
                f"UPDATE load_files SET status = ?, updated_ms = ? WHERE task_id = ? AND status IN {_PENDING}",
                (int(FileStatus.PAUSED), now, task_id),
            )
            busy = db.execute(
                "SELECT 1 FROM load_files WHERE task_id = ? AND status = ?", (task_id, int(FileStatus.UPLOADING))
            ).fetchone()
            new = TaskStatus.PAUSING if busy else TaskStatus.PAUSED
            db.execute("UPDATE load_tasks SET status = ?, updated_ms = ? WHERE id = ?", (int(new), now, task_id))

    def resume(self, task_id: str) -> None:
        with self.store.transaction() as db:
            status, _, _ = self._require(db, task_id)
            if status not in (TaskStatus.PAUSING, TaskStatus.PAUSED):
                return
            now = now_ms()
            db.execute(
                "UPDATE load_files SET status = ?, updated_ms = ? WHERE task_id = ? AND status = ?",
                (int(FileStatus.WAITING), now, task_id, int(FileStatus.PAUSED)),
            )
            db.execute(
                "UPDATE load_tasks SET status = ?, updated_ms = ? WHERE id = ?", (int(TaskStatus.RUNNING), now, task_id)
            )

    def retry(self, task_id: str, file_ids: list[str]) -> None:
        with self.store.transaction() as db:
            status, _, _ = self._require(db, task_id)
            known = {r[0] for r in db.execute("SELECT file_id FROM load_files WHERE task_id = ?", (task_id,))}
            unknown = [file_id for file_id in file_ids if file_id not in known]
            if unknown:
                raise ApiError(400, PARAM_INVALID, f"ids: file {unknown[0]} is not part of task {task_id}")
            now = now_ms()
            marks = ",".join("?" * len(file_ids))
            changed = db.execute(
                f"UPDATE load_files SET status = ?, reason = '', updated_ms = ?"
                f" WHERE task_id = ? AND status = ? AND file_id IN ({marks})",
                (int(FileStatus.RETRYING), now, task_id, int(FileStatus.FAILED), *file_ids),
            ).rowcount
            if changed and status == TaskStatus.FINISHED:
                db.execute(
                    "UPDATE load_tasks SET status = ?, end_ms = 0, updated_ms = ? WHERE id = ?",
                    (int(TaskStatus.RUNNING), now, task_id),
                )
            elif changed and status in (TaskStatus.PAUSING, TaskStatus.PAUSED):
                # A paused task keeps its files frozen: the retried ones wait for resume.
                db.execute(
                    "UPDATE load_files SET status = ? WHERE task_id = ? AND status = ?",
                    (int(FileStatus.PAUSED), task_id, int(FileStatus.RETRYING)),
                )
            db.execute("UPDATE load_tasks SET updated_ms = ? WHERE id = ?", (now, task_id))

    def delete(self, task_id: str) -> None:
        with self.store.transaction() as db:
            self._require(db, task_id)
            db.execute("DELETE FROM load_files WHERE task_id = ?", (task_id,))
            db.execute("DELETE FROM load_tasks WHERE id = ?", (task_id,))

    def update(self, task_id: str, mode: tuple[int, int] | None, uris: list[str] | None) -> None:
        with self.store.transaction() as db:
            status, interval_type, start_ms = self._require(db, task_id)
            now = now_ms()
            if uris is not None:
                current = {r[0] for r in db.execute("SELECT uri FROM load_files WHERE task_id = ?", (task_id,))}
                gone = current - set(uris)
                db.executemany(
                    "DELETE FROM load_files WHERE task_id = ? AND uri = ?", [(task_id, uri) for uri in sorted(gone)]
                )
                paused = status in (TaskStatus.PAUSING, TaskStatus.PAUSED)
                new = [uri for uri in uris if uri not in current]
                self._add_files(db, task_id, new, int(FileStatus.PAUSED if paused else FileStatus.WAITING), now)
                if new and status == TaskStatus.FINISHED:
                    db.execute(
                        "UPDATE load_tasks SET status = ?, end_ms = 0, start_ms = ? WHERE id = ?",
                        (int(TaskStatus.RUNNING), now, task_id),
                    )
                    status, start_ms = int(TaskStatus.RUNNING), now
            if mode is not None:
                interval_type, interval = mode
                period = self.period_ms(interval_type, interval)
                idle = not db.execute(
                    f"SELECT 1 FROM load_files WHERE task_id = ? AND status IN (2, {_PENDING[0]}, {_PENDING[1]})",
                    (task_id,),
                ).fetchone()
                next_run = start_ms + period if period is not None and idle else None
                new_status = status
                if period is not None and status == TaskStatus.FINISHED:
                    new_status = int(TaskStatus.RUNNING)  # a finished one-shot task becomes periodic
                elif period is None and idle and status == TaskStatus.RUNNING:
                    new_status = int(TaskStatus.FINISHED)
                db.execute(
                    "UPDATE load_tasks SET interval_type = ?, interval = ?, next_run_ms = ?, status = ? WHERE id = ?",
                    (interval_type, interval, next_run, new_status, task_id),
                )
            db.execute("UPDATE load_tasks SET updated_ms = ? WHERE id = ?", (now, task_id))

    # the worker's side

    def recover(self) -> None:
        """After a restart: copies that were in flight start over; pausing tasks are paused."""
        with self.store.transaction() as db:
            now = now_ms()
            db.execute(
                "UPDATE load_files SET status = CASE WHEN (SELECT status FROM load_tasks t WHERE t.id = task_id)"
                " IN (2, 3) THEN 3 ELSE 1 END, updated_ms = ? WHERE status = 2",
                (now,),
            )
            db.execute("UPDATE load_tasks SET status = 3 WHERE status = 2")

    def start_due_runs(self) -> float | None:
        """Start the periodic runs that are due; seconds until the next one (``None``: none scheduled)."""
        now = now_ms()
        with self.store.transaction() as db:
            due = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM load_tasks WHERE status = 1 AND next_run_ms IS NOT NULL AND next_run_ms <= ?",
                    (now,),
                )
            ]
            for task_id in due:
                db.execute(
                    "UPDATE load_files SET status = 1, reason = '', updated_ms = ? WHERE task_id = ?", (now, task_id)
                )
                db.execute(
                    "UPDATE load_tasks SET start_ms = ?, end_ms = 0, next_run_ms = NULL, runs = runs + 1,"
                    " updated_ms = ? WHERE id = ?",
                    (now, now, task_id),
                )
            row = db.execute(
                "SELECT MIN(next_run_ms) FROM load_tasks WHERE status = 1 AND next_run_ms IS NOT NULL"
            ).fetchone()
        return None if row[0] is None else max(0.0, (int(row[0]) - now) / 1000)

    def claim(self, limit: int) -> list[_Claim]:
        """Mark up to ``limit`` waiting or retrying files of running tasks as uploading, oldest first."""
        if limit <= 0:
            return []
        now = now_ms()
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT f.seq, f.task_id, f.file_id, f.uri, t.volume_id, t.connector_id, f.etag"
                " FROM load_files f JOIN load_tasks t ON t.id = f.task_id"
                f" WHERE t.status = 1 AND f.status IN {_PENDING} ORDER BY f.seq LIMIT ?",
                (limit,),
            ).fetchall()
            db.executemany(
                "UPDATE load_files SET status = 2, start_ms = ?, end_ms = 0, updated_ms = ? WHERE seq = ?",
                [(now, now, r[0]) for r in rows],
            )
        return [_Claim(*r) for r in rows]

    def finish(self, claim: _Claim, *, size: int, etag: str, reason: str) -> None:
        """Record a copy's outcome (unless the task or file was deleted meanwhile), then settle the task."""
        with self.store.transaction() as db:
            self.record(db, claim, size=size, etag=etag, reason=reason)

    def record(self, db: sqlite3.Connection, claim: _Claim, *, size: int, etag: str, reason: str) -> None:
        """``finish`` inside a transaction the caller holds."""
        now = now_ms()
        status = FileStatus.FAILED if reason else FileStatus.SUCCESS
        db.execute(
            "UPDATE load_files SET status = ?, reason = ?, size = ?, etag = ?, end_ms = ?, updated_ms = ?"
            " WHERE seq = ? AND status = 2",
            (int(status), reason, size, etag if not reason else "", now, now, claim.seq),
        )
        self._settle(db, claim.task_id, now)

    def settle_all(self) -> None:
        with self.store.transaction() as db:
            now = now_ms()
            for (task_id,) in db.execute("SELECT id FROM load_tasks WHERE status IN (1, 2)").fetchall():
                self._settle(db, task_id, now)

    def _settle(self, db: sqlite3.Connection, task_id: str, now: int) -> None:
        row = db.execute(
            "SELECT status, interval_type, interval, start_ms, end_ms, next_run_ms FROM load_tasks WHERE id = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            return
        status, interval_type, interval, start_ms, end_ms, next_run = row
        busy = db.execute(
            f"SELECT 1 FROM load_files WHERE task_id = ? AND status IN (2, {_PENDING[0]}, {_PENDING[1]})", (task_id,)
        ).fetchone()
        if (
            status == TaskStatus.PAUSING
            and not db.execute("SELECT 1 FROM load_files WHERE task_id = ? AND status = 2", (task_id,)).fetchone()
        ):
            db.execute("UPDATE load_tasks SET status = 3, updated_ms = ? WHERE id = ?", (now, task_id))
            return
        if status != TaskStatus.RUNNING or busy:
            return
        period = self.period_ms(interval_type, interval)
        if period is None:
            db.execute("UPDATE load_tasks SET status = 4, end_ms = ?, updated_ms = ? WHERE id = ?", (now, now, task_id))
        elif next_run is None or not end_ms:
            # A periodic run ended: the task stays runnable (1) and runs again one period after this run began.
            db.execute(
                "UPDATE load_tasks SET end_ms = ?, next_run_ms = ?, updated_ms = ? WHERE id = ?",
                (now, start_ms + period, now, task_id),
            )


# --- rendering --------------------------------------------------------------------------------------------


def _seconds(ms: int) -> int:
    return ms // 1000


def load_task_json(task: LoadTask) -> dict[str, Any]:
    return {
        "id": task.id,
        "source_connector_id": task.connector_id,
        "source_connector_type": task.connector_type,
        "volume_id": task.volume_id,
        "volume_name": task.volume_name,
        "name": "",
        "status": task.status,
        "creator": EMULATOR_USER,
        "source_config": {
            "common_file_task_config": {
                "uris": [f.uri for f in task.files],
                "load_mode_config": {"load_interval_type": task.interval_type, "interval": task.interval},
            }
        },
        "start_at": _seconds(task.start_ms),
        "end_at": _seconds(task.end_ms),
        "created_at": _seconds(task.created_ms),
        "updated_at": _seconds(max([task.updated_ms, *(f.updated_ms for f in task.files)])),
    }


def load_file_json(task: LoadTask, f: LoadFile) -> dict[str, Any]:
    terminal = f.status in (FileStatus.SUCCESS, FileStatus.FAILED)
    return {
        "id": f.file_id,
        "name": f.uri,
        "type": file_type(f.uri),
        "status": f.status,
        "size": f.size,
        "update_time": _seconds(f.updated_ms),
        "other_metadata": "",
        "reason": f.reason if f.status == FileStatus.FAILED else "",
        "user": EMULATOR_USER,
        "start_time": _seconds(f.start_ms),
        "end_time": _seconds(f.end_ms) if terminal else 0,
        "path": f"/{task.volume_name}/{f.uri}",
    }


# --- the service: store + worker --------------------------------------------------------------------------


class LoadService:
    """Load tasks of one running emulator: the store, and the worker that copies files."""

    def __init__(
        self, host: LoadHost, connectors: ConnectorStore, *, clock_speed: float, concurrency: int, seed: int | None
    ) -> None:
        self.host = host
        self.connectors = connectors
        self.loads = LoadStore(host, clock_speed)
        self.concurrency = concurrency
        self._rng = random.Random(None if seed is None else f"moi-loads-{seed}")
        self._wake = anyio.Event()
        self._in_flight = 0

    def wake(self) -> None:
        """Tell the worker there may be new work (a created, resumed, retried or updated task)."""
        self._wake.set()

    async def run(self) -> None:
        """The worker loop; runs until cancelled (when the app stops)."""
        await anyio.to_thread.run_sync(self.loads.recover)
        async with anyio.create_task_group() as tg:
            while True:
                self._wake = anyio.Event()
                next_due = await anyio.to_thread.run_sync(self.loads.start_due_runs)
                claims = await anyio.to_thread.run_sync(self.loads.claim, self.concurrency - self._in_flight)
                for claim in claims:
                    self._in_flight += 1
                    tg.start_soon(self._copy, claim)
                await anyio.to_thread.run_sync(self.loads.settle_all)
                wait = IDLE_WAKE_SECONDS if next_due is None else min(next_due, IDLE_WAKE_SECONDS)
                with anyio.move_on_after(wait):
                    await self._wake.wait()

    async def _copy(self, claim: _Claim) -> None:
        try:
            if self.host.task_delay_ms:
                await anyio.sleep(self.host.task_delay_ms / 1000)  # the time a real platform takes per file
            # One thread hop for copy and record: a cancelled worker (the app stopping) waits for the thread,
            # so a file is never stored without its success being recorded.
            await anyio.to_thread.run_sync(self._copy_and_record, claim)
        finally:
            self._in_flight -= 1
            self.wake()

    def _copy_and_record(self, claim: _Claim) -> None:
        size, etag, reason = self._copy_blocking(claim)
        if size >= 0:
            self.loads.finish(claim, size=size, etag=etag, reason=reason)

    def _copy_blocking(self, claim: _Claim) -> tuple[int, str, str]:
        """Copy one object into the volume: ``(size, etag, failure reason or "")``; size -1 when the
        success was already recorded together with the stored file."""
        connector = self.connectors.get(claim.connector_id)
        if connector is None:
            return 0, "", f"connector {claim.connector_id} no longer exists"
        if connector.source_type not in BUCKET_TYPES:
            return 0, "", f"the emulator cannot read from {connector.type_name} sources"
        from ingest.emulators.kit.common import relative_path_problem

        problem = relative_path_problem(claim.uri)
        if problem is not None:
            return 0, "", f"cannot store {claim.uri!r} in a volume: the path {problem}"
        config = bucket_config(connector.source_type, connector.config, allow_remote=self.connectors.allow_remote)
        store = self.host.store
        try:
            if claim.etag:
                # A periodic re-run: copy again only what changed since this task last copied it.
                head = head_object(config, claim.uri)
                if head is None:
                    return 0, "", f"{claim.uri} no longer exists in bucket {config.bucket_name!r}"
                if head.etag == claim.etag and store.has_stored_file(claim.volume_id, claim.uri):
                    return head.size, head.etag, ""
            if self.host.task_fail_rate > 0 and self._rng.random() < self.host.task_fail_rate:
                return 0, "", INJECTED_FAILURE
            staged = store.staging_dir / f"{uuid.uuid4().hex}.load"
            try:
                size, md5, etag = copy_object(config, claim.uri, staged)

                def succeeded(db: sqlite3.Connection) -> None:
                    self.loads.record(db, claim, size=size, etag=etag, reason="")

                store.store_loaded_file(claim.volume_id, claim.uri, staged, size, md5, claim.file_id, succeeded)
            finally:
                with suppress(FileNotFoundError):
                    staged.unlink()
        except SourceUnavailable as exc:
            text = str(exc)
            if "NoSuchKey" in text:
                text = f"{claim.uri} not found in bucket {config.bucket_name!r}"
            return 0, "", text
        except ApiError as exc:
            return 0, "", exc.message
        return -1, etag, ""


# --- handlers ---------------------------------------------------------------------------------------------

LOADS: web.AppKey[LoadService] = web.AppKey("moi_loads", LoadService)


def _service(request: web.Request) -> LoadService:
    return request.app[LOADS]


def _interval(value: Any, where: str) -> tuple[int, int]:
    """``load_mode_config`` → (load_interval_type, interval)."""
    if not isinstance(value, dict):
        raise bad(f'{where} must be a JSON object like {{"load_interval_type": 4}}')
    check_keys(value, {"load_interval_type", "interval"}, where)
    kind = value.get("load_interval_type")
    if kind is None:
        raise bad(f"{where}.load_interval_type is required: 1 day, 2 hour, 3 minute or 4 once")
    if isinstance(kind, bool) or not isinstance(kind, int) or kind not in (1, 2, 3, 4):
        raise bad(f"{where}.load_interval_type must be 1 (day), 2 (hour), 3 (minute) or 4 (once), got {kind!r}")
    interval = value.get("interval", 0)
    if isinstance(interval, bool) or not isinstance(interval, int) or not 0 <= interval <= 10_000:
        raise bad(f"{where}.interval must be an integer 0-10000 (units of load_interval_type; 0 means 1)")
    return kind, interval


def _uris(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise bad(f"{where} is required: a non-empty array of file uris from /connectors/files/list")
    if len(value) > MAX_URIS:
        raise bad(f"{where} has {len(value)} entries; at most {MAX_URIS} per task")
    seen: set[str] = set()
    for index, uri in enumerate(value):
        if not isinstance(uri, str) or not uri or len(uri) > 4096:
            raise bad(f"{where}[{index}] must be a non-empty string of at most 4096 characters")
        if uri in seen:
            raise bad(f"{where}[{index}] repeats {short(uri)!r}")
        seen.add(uri)
    return list(value)


def _volume_id(value: Any) -> str:
    # Volume ids are snowflake strings on MOI (the Go SDK sends numbers); the emulator also has named ones.
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise bad("volume_id is required: the id of the volume to load into")
    if len(str(value)) > 64:
        raise bad("volume_id is longer than 64 characters")
    return str(value).strip()


async def create_load_task(request: web.Request) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    check_keys(body, {"source_connector_id", "volume_id", "source_config", "config_type"})
    if body.get("source_connector_id") in (None, ""):
        raise bad("source_connector_id is required")
    connector_id = parse_connector_id(body["source_connector_id"], "source_connector_id")
    volume_id = _volume_id(body.get("volume_id"))
    check_volume(request, volume_id)
    if body.get("config_type", 1) != 1:
        raise bad("config_type must be 1 (common file load config)")
    source = body.get("source_config")
    if not isinstance(source, dict):
        raise bad('source_config is required: {"common_file_task_config": {"load_mode_config": …, "uris": […]}}')
    check_keys(source, {"common_file_task_config"}, "source_config")
    common = source.get("common_file_task_config")
    where = "source_config.common_file_task_config"
    if not isinstance(common, dict):
        raise bad(f"{where} is required and must be a JSON object")
    check_keys(common, {"load_mode_config", "uris"}, where)
    if common.get("load_mode_config") is None:
        raise bad(f"{where}.load_mode_config is required")
    interval_type, interval = _interval(common["load_mode_config"], f"{where}.load_mode_config")
    uris = _uris(common.get("uris"), f"{where}.uris")
    service = _service(request)
    connector = await anyio.to_thread.run_sync(service.connectors.require, connector_id)
    await anyio.to_thread.run_sync(lambda: service.loads.create(connector, volume_id, uris, interval_type, interval))
    service.wake()
    return ok(request, None)  # the seed answers {"code": "OK", "msg": "OK"}: no task id


async def update_task(request: web.Request) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    check_keys(body, {"task_id", "load_mode_config", "uris"})
    task_id = required_id(body, "task_id")
    mode = _interval(body["load_mode_config"], "load_mode_config") if body.get("load_mode_config") is not None else None
    uris = _uris(body["uris"], "uris") if body.get("uris") is not None else None
    if mode is None and uris is None:
        raise bad("nothing to update: give load_mode_config and/or uris")
    service = _service(request)
    if not await anyio.to_thread.run_sync(service.loads.knows, task_id):
        upload = await anyio.to_thread.run_sync(service.host.store.upload_task_exists, task_id)
        if upload:
            raise bad(
                f"task {task_id} is a local upload (/connectors/upload); only connector load tasks can be updated"
            )
        raise ApiError(404, NOT_FOUND, f"task {task_id} not found")
    await anyio.to_thread.run_sync(service.loads.update, task_id, mode, uris)
    service.wake()
    return ok(request, None)


async def delete_task(request: web.Request) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    check_keys(body, {"task_id"})
    task_id = required_id(body, "task_id")
    service = _service(request)
    if await anyio.to_thread.run_sync(service.loads.knows, task_id):
        await anyio.to_thread.run_sync(service.loads.delete, task_id)
    else:
        await anyio.to_thread.run_sync(service.host.store.delete_upload_task, task_id)
    return ok(request, None)


def add_load_routes(app: web.Application, service: LoadService) -> None:
    app[LOADS] = service
    app.router.add_post("/task", create_load_task)
    app.router.add_post("/task/update", update_task)
    app.router.add_post("/task/delete", delete_task)
    # The seed's own example posts to "/task/delete/"; accept the trailing slash as the gateway would.
    app.router.add_post("/task/delete/", delete_task)


def files_view(task: LoadTask, wanted: int | None, page: int, page_size: int) -> dict[str, Any]:
    """The ``/task/files`` data of a load task."""
    matching = [f for f in task.files if wanted is None or f.status == wanted]
    return {
        "total": len(matching),
        "total_success": sum(f.status == FileStatus.SUCCESS for f in task.files),
        "total_failed": sum(f.status == FileStatus.FAILED for f in task.files),
        "files": [load_file_json(task, f) for f in matching[(page - 1) * page_size : page * page_size]],
    }


def retry_ids(body: Mapping[str, Any]) -> tuple[str, list[str]]:
    task_id = required_id(body, "task_id")
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids:
        raise bad("ids is required: a non-empty array of failed file ids")
    return task_id, [id_value(value, f"ids[{index}]") for index, value in enumerate(ids)]
