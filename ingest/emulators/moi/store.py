"""A strict local emulator of the MatrixOne Intelligence (MOI) data-ingestion API.

Emulated (wire names as in the MOI document and ``API-NOTES.md`` section 4):

- ``POST /catalog/volume/create``, ``POST /catalog/volume/info``
- ``POST /connectors/upload`` (multipart: ``file`` x N, ``VolumeID``, ``meta``, ``dedup``, ...)
- connectors: ``POST /connectors``, ``/connectors/validate``, ``GET /connectors/list``,
  ``/connectors/files/list``, ``/connectors/summary``, ``PUT|DELETE /connectors/{id}``
  (``moi_connectors.py``; S3/OSS buckets are read for real through ``moi_sources.py``)
- tasks: ``POST /task`` (connector load tasks, ``moi_loadtasks.py``), ``GET /task/get``,
  ``/task/files``, ``/task/list``, ``POST /task/retry|pause|resume|update|delete``, answering for
  load tasks and upload tasks alike
- test hooks without auth or faults: ``GET /_emulator/files``, ``GET /_emulator/stats``

Every answer uses the MOI envelope ``{"code","msg","data","request_id"}``. Uploaded bodies are streamed
to ``<data_dir>/.staging`` while their md5 is computed, and moved to ``<data_dir>/<volume>/<path>`` only
once the whole request is valid. Volumes, stored files, connectors and tasks live in SQLite
(``<data_dir>/.emulator.db``), so a restarted emulator still answers for old task ids. Upload task
progress is computed from timestamps when asked; load tasks are worked by one background worker per
app, started and stopped with it. One emulator per data dir is the intended use; a second one on the
same dir is tolerated (ids and staged bodies do not collide), except that a starting emulator restarts
the load-task copies it finds in flight, assuming they were cut short by a stop.

Status codes follow the MOI document: file 1 waiting, 2 uploading, 3 paused, 4 failed, 5 success,
6 retrying; task 1 running, 2 pausing, 3 paused, 4 finished.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import hmac
import json
import logging
import os
import random
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiofiles
import anyio
from aiohttp import BodyPartReader, web
from aiohttp.typedefs import Handler

from ingest.emulators.kit import flags as _cli
from ingest.emulators.kit.common import (
    ApiError,
    SnowflakeIds,
    json_response,
    now_ms,
    read_json_object,
    relative_path_problem,
    safe_join,
)
from ingest.emulators.kit.faults import Fault, FaultInjector, fault_settings, is_test_hook
from ingest.emulators.kit.multipart import (
    READ_CHUNK,
    WRITE_BUFFER,
    PartNames,
    part_names,
    read_text_part,
    receive_parts,
)
from ingest.emulators.kit.stats import RequestCounter
from ingest.emulators.kit.store import SqliteStore, discard_staged
from ingest.emulators.moi.connectors import CONNECTORS_SCHEMA, ConnectorStore, add_connector_routes
from ingest.emulators.moi.loadtasks import (
    LOAD_SCHEMA,
    LOADS,
    LoadService,
    add_load_routes,
    files_view,
    load_task_json,
    retry_ids,
)
from ingest.emulators.moi.wire import (
    ALREADY_EXISTS,
    METHOD_NOT_ALLOWED,
    MULTIPLE_CREDENTIALS,
    NOT_FOUND,
    PARAM_INVALID,
    RATE_LIMITED,
    SERVER_ERROR,
    UNAUTHORIZED,
    FileStatus,
    TaskStatus,
)
from ingest.emulators.moi.wire import bad as _bad
from ingest.emulators.moi.wire import check_keys as _check_keys
from ingest.emulators.moi.wire import error as _error
from ingest.emulators.moi.wire import ok as _ok
from ingest.emulators.moi.wire import query_bool as _query_bool
from ingest.emulators.moi.wire import query_id as _query_id
from ingest.emulators.moi.wire import query_int as _query_int
from ingest.emulators.moi.wire import query_paging as _query_paging
from ingest.emulators.moi.wire import required_id as _required_id
from ingest.emulators.moi.wire import short as _short
from ingest.platforms.moi.filetypes import FileType, file_type_for

__all__ = [
    "MOI_STATE",
    "FileStatus",
    "MoiEmulatorConfig",
    "MoiState",
    "TaskStatus",
    "add_moi_arguments",
    "build_moi_app",
    "create_moi_app",
]

log = logging.getLogger(__name__)

_CODE_FOR_STATUS = {
    400: PARAM_INVALID,
    401: UNAUTHORIZED,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    409: ALREADY_EXISTS,
    413: PARAM_INVALID,
    429: RATE_LIMITED,
}

# --- limits and fixed values ------------------------------------------------------------------------------

#: Largest non-file form field (``meta`` of 20 files is a few KiB).
TEXT_FIELD_LIMIT = 1 << 20
#: The user every task and file is attributed to (the seed's examples say "admin").
EMULATOR_USER = "admin"
#: Reason recorded for a file failed by ``task_fail_rate``.
INJECTED_FAILURE = "parse failed: injected fault"
#: A local upload has no source connector; the document defines no value for it, so 0 ("unknown").
LOCAL_UPLOAD_CONNECTOR_TYPE = 0
#: ``load_interval_type`` 4: load once. Every upload task is a one-shot load.
LOAD_ONCE = 4

_VOLUME_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TEXT_FIELDS = frozenset(
    {"VolumeID", "meta", "dedup", "file_types", "path_regex", "unzip_keep_structure", "table_config"}
)
_FILE_FIELD = "file"
#: The seed's first upload example sends its files in a part named "data", without meta: such parts
#: are stored under their own file names.
_DATA_FIELD = "data"
_EMPTY_FIELD = "__empty"
_DEDUP_KEYS = frozenset({"name", "md5"})
_DEDUP_STRATEGIES = {"skip": "skip", "replace": "replace", "overwrite": "replace"}
_TASK_ORDER_FIELDS = ("created_at", "updated_at", "start_at", "end_at", "id", "status")


# --- configuration ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MoiEmulatorConfig:
    """How to run the MOI emulator. Fault rates are fractions in [0, 1]."""

    data_dir: Path
    api_key: str
    #: Volume ids that exist from the start (named after their id), e.g. ``("1001",)``.
    volumes: tuple[str, ...] = ()
    #: Time a task file takes from waiting through uploading to its final state.
    task_delay_ms: int = 200
    latency_ms: int = 0
    error_rate: float = 0.0
    #: Requests per second; excess requests get 429 with ``Retry-After``.
    rate_limit: float | None = None
    #: Fraction of uploads whose connection is dropped mid-body.
    reset_rate: float = 0.0
    #: Fraction of task files that end failed (status 4) with a reason.
    task_fail_rate: float = 0.0
    seed: int | None = None
    #: Files per upload request (MOI 5.0 documents 20).
    max_files_per_request: int = 20
    #: Bytes per file; ``None`` = no limit, as in the seed document (MOI 5.0 documents 200 MiB).
    max_file_size: int | None = None
    #: How much faster than real time periodic load tasks come round: 60 makes an "hourly" task run
    #: every minute. Only the schedule is sped up; copies take the time they take.
    clock_speed: float = 1.0
    #: Files load tasks copy at the same time, over all tasks.
    load_concurrency: int = 4

    def problems(self) -> list[str]:
        """Every invalid setting, one sentence each (empty when the config is usable)."""
        found: list[str] = []
        if not self.api_key:
            found.append("api_key is empty")
        for name in ("error_rate", "reset_rate", "task_fail_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                found.append(f"{name} must be between 0 and 1, got {value}")
        found.extend(
            f"{name} must not be negative" for name in ("task_delay_ms", "latency_ms") if getattr(self, name) < 0
        )
        if self.rate_limit is not None and not self.rate_limit > 0:
            found.append(f"rate_limit must be positive, got {self.rate_limit}")
        if not self.clock_speed > 0:
            found.append(f"clock_speed must be positive, got {self.clock_speed}")
        if self.load_concurrency < 1:
            found.append(f"load_concurrency must be at least 1, got {self.load_concurrency}")
        if self.max_files_per_request < 1 or (self.max_file_size is not None and self.max_file_size < 1):
            found.append("max_files_per_request and max_file_size must be at least 1")
        found.extend(
            f"volume id {volume!r} must be 1-64 letters, digits, '_' or '-'"
            for volume in self.volumes
            if not _VOLUME_ID_RE.fullmatch(volume)
        )
        return found


# --- persistent state -------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes (
    id TEXT PRIMARY KEY,
    database_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (database_id, name)
);
CREATE TABLE IF NOT EXISTS stored_files (
    volume_id TEXT NOT NULL,
    path TEXT NOT NULL,
    file_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    uploads INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (volume_id, path)
);
CREATE INDEX IF NOT EXISTS stored_files_md5 ON stored_files (volume_id, md5);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    volume_id TEXT NOT NULL,
    uris TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    paused_at_ms INTEGER
);
-- One row per file of a task. file_id is not unique: a skipped duplicate reuses the stored file's id.
CREATE TABLE IF NOT EXISTS task_files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    uploading_ms INTEGER NOT NULL,
    done_ms INTEGER NOT NULL,
    retrying INTEGER NOT NULL DEFAULT 0,
    fail_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS task_files_task ON task_files (task_id, seq);
"""


@dataclass(frozen=True, slots=True)
class _Volume:
    id: str
    database_id: int
    name: str
    description: str
    created_ms: int
    updated_ms: int


@dataclass(frozen=True, slots=True)
class _TaskFile:
    file_id: str
    name: str
    size: int
    started_ms: int
    #: When it leaves waiting; a retry sets it to the retry time.
    uploading_ms: int
    #: When it reaches its final state (success, or failed when ``fail_reason``).
    done_ms: int
    retrying: bool
    fail_reason: str


@dataclass(frozen=True, slots=True)
class _Task:
    id: str
    volume_id: str
    volume_name: str
    uris: list[str]
    created_ms: int
    updated_ms: int
    paused_at_ms: int | None
    files: list[_TaskFile]


@dataclass(frozen=True, slots=True)
class _Dedup:
    by: frozenset[str]
    #: "skip" or "replace" ("overwrite" is normalised to "replace").
    strategy: str


@dataclass(frozen=True, slots=True)
class _IncomingFile:
    """One validated file of an upload, staged on disk."""

    dest: str
    staged: Path
    size: int
    md5: str


@dataclass(frozen=True, slots=True)
class _FileResult:
    success: bool
    file_id: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"success": self.success, "file_id": self.file_id, "message": self.message}


@dataclass(frozen=True, slots=True)
class _Decision:
    file: _IncomingFile
    file_id: str
    #: True: an equal file is already stored and ``dedup.strategy`` is skip.
    skip: bool


class _Store(SqliteStore):
    """Volumes, stored files and tasks in SQLite, plus the bodies on disk.

    Synchronous on purpose: every method runs in a worker thread (``anyio.to_thread``) under one lock,
    which also makes each upload's check-then-write atomic against concurrent uploads.
    """

    def __init__(self, data_dir: Path, seed: int | None) -> None:
        super().__init__(data_dir, ".emulator.db", _SCHEMA + CONNECTORS_SCHEMA + LOAD_SCHEMA)
        self.ids = SnowflakeIds(floor=self._largest_id())
        # Task fates are drawn under the lock, so the sequence is reproducible for sequential requests.
        self._rng = random.Random(None if seed is None else f"moi-tasks-{seed}")

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction under the store's lock (for the connector and load-task parts)."""
        return self._transaction()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The database, for reads, under the store's lock."""
        with self._lock:
            yield self._db

    def _largest_id(self) -> int:
        row = self._db.execute(
            "SELECT MAX(v) FROM ("
            " SELECT MAX(CAST(id AS INTEGER)) AS v FROM tasks"
            " UNION ALL SELECT MAX(CAST(file_id AS INTEGER)) FROM task_files"
            " UNION ALL SELECT MAX(CAST(file_id AS INTEGER)) FROM stored_files"
            " UNION ALL SELECT MAX(CAST(id AS INTEGER)) FROM volumes"
            " UNION ALL SELECT MAX(CAST(id AS INTEGER)) FROM load_tasks"
            " UNION ALL SELECT MAX(CAST(file_id AS INTEGER)) FROM load_files)"
        ).fetchone()
        return int(row[0] or 0)

    # volumes

    def ensure_volumes(self, volume_ids: tuple[str, ...]) -> None:
        now = now_ms()
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO volumes VALUES (?, 0, ?, '', ?, ?)",
                [(volume_id, volume_id, now, now) for volume_id in volume_ids],
            )

    def create_volume(self, database_id: int, name: str, description: str) -> str:
        now = now_ms()
        with self._transaction() as db:
            taken = db.execute(
                "SELECT 1 FROM volumes WHERE database_id = ? AND name = ?", (database_id, name)
            ).fetchone()
            if taken:
                raise ApiError(409, ALREADY_EXISTS, f"volume name {name!r} already exists in database {database_id}")
            volume_id = self.ids.next_id()
            db.execute(
                "INSERT INTO volumes VALUES (?, ?, ?, ?, ?, ?)",
                (volume_id, database_id, name, description, now, now),
            )
        return volume_id

    def volume(self, volume_id: str) -> _Volume | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM volumes WHERE id = ?", (volume_id,)).fetchone()
        return None if row is None else _Volume(*row)

    def volume_name(self, volume_id: str) -> str | None:
        volume = self.volume(volume_id)
        return None if volume is None else volume.name

    # files loaded by connector load tasks

    def store_loaded_file(
        self,
        volume_id: str,
        dest: str,
        staged: Path,
        size: int,
        md5: str,
        file_id: str,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Move a copied object into the volume and record it, as an upload would (a re-load replaces it).

        ``also`` runs in the same transaction: the load task records the file's success with it, so a
        stop between the two can never make a restarted emulator copy the file a second time.
        """
        now = now_ms()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM volumes WHERE id = ?", (volume_id,)).fetchone() is None:
                raise ApiError(404, NOT_FOUND, f"volume {volume_id} no longer exists")
            self._check_conflicts(db, volume_id, [dest])
            self._move_into_place(volume_id, _IncomingFile(dest, staged, size, md5))
            db.execute(
                "INSERT INTO stored_files VALUES (?, ?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT (volume_id, path) DO UPDATE SET file_id = excluded.file_id,"
                " size = excluded.size, md5 = excluded.md5, uploads = uploads + 1,"
                " updated_ms = excluded.updated_ms",
                (volume_id, dest, file_id, size, md5, now, now),
            )
            if also is not None:
                also(db)

    def has_stored_file(self, volume_id: str, dest: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM stored_files WHERE volume_id = ? AND path = ?", (volume_id, dest)
            ).fetchone()
        return row is not None and (self.data_dir / volume_id / dest).is_file()

    def upload_task_exists(self, task_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is not None

    def delete_upload_task(self, task_id: str) -> None:
        """Forget an upload task and its file list; the stored files stay in the volume."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
                raise ApiError(404, NOT_FOUND, f"task {task_id} not found")
            db.execute("DELETE FROM task_files WHERE task_id = ?", (task_id,))
            db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))

    # uploads

    def commit_upload(
        self,
        volume_id: str,
        files: list[_IncomingFile],
        dedup: _Dedup | None,
        *,
        delay_ms: int,
        fail_rate: float,
    ) -> tuple[str, list[_FileResult]]:
        """Store ``files`` (already validated and staged) as one new task; all or nothing."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM volumes WHERE id = ?", (volume_id,)).fetchone() is None:
                raise ApiError(404, NOT_FOUND, f"volume {volume_id} not found")
            decisions = self._decide(db, volume_id, files, dedup)
            self._check_conflicts(db, volume_id, [d.file.dest for d in decisions if not d.skip])
            now = now_ms()
            task_id = self.ids.next_id()
            results = [self._apply(db, volume_id, task_id, d, now, delay_ms, fail_rate) for d in decisions]
            db.execute(
                "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, NULL)",
                (task_id, volume_id, json.dumps([f.dest for f in files], ensure_ascii=False), now, now),
            )
        return task_id, results

    def _decide(
        self, db: sqlite3.Connection, volume_id: str, files: list[_IncomingFile], dedup: _Dedup | None
    ) -> list[_Decision]:
        # Files stored earlier in the same request count as stored: two equal bodies with md5 dedup
        # store one copy, as sequential requests would.
        planned: dict[str, str] = {}  # md5 -> file id
        decisions = []
        for incoming in files:
            existing = None
            if dedup is not None and dedup.strategy == "skip":
                existing = self._find_duplicate(db, volume_id, incoming, dedup.by)
                if existing is None and dedup.by == {"md5"}:
                    existing = planned.get(incoming.md5)
            if existing is not None:
                decisions.append(_Decision(incoming, existing, skip=True))
                continue
            file_id = self.ids.next_id()
            planned.setdefault(incoming.md5, file_id)
            decisions.append(_Decision(incoming, file_id, skip=False))
        return decisions

    @staticmethod
    def _find_duplicate(
        db: sqlite3.Connection, volume_id: str, incoming: _IncomingFile, by: frozenset[str]
    ) -> str | None:
        conditions = ["volume_id = ?"]
        params = [volume_id]
        if "name" in by:
            conditions.append("path = ?")
            params.append(incoming.dest)
        if "md5" in by:
            conditions.append("md5 = ?")
            params.append(incoming.md5)
        row = db.execute(
            f"SELECT file_id FROM stored_files WHERE {' AND '.join(conditions)} ORDER BY path LIMIT 1", params
        ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _check_conflicts(db: sqlite3.Connection, volume_id: str, dests: list[str]) -> None:
        """Refuse a path whose folder is a stored file, or that is a folder of stored files."""
        in_request = set(dests)
        for dest in dests:
            parts = dest.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                clash = (
                    folder in in_request
                    or db.execute(
                        "SELECT 1 FROM stored_files WHERE volume_id = ? AND path = ?", (volume_id, folder)
                    ).fetchone()
                )
                if clash:
                    raise ApiError(400, PARAM_INVALID, f"cannot store {dest!r}: {folder!r} is a file, not a folder")
            # '0' sorts right after '/', so this range is exactly the paths under "dest/".
            below = db.execute(
                "SELECT 1 FROM stored_files WHERE volume_id = ? AND path >= ? AND path < ? LIMIT 1",
                (volume_id, dest + "/", dest + "0"),
            ).fetchone()
            if below:
                raise ApiError(400, PARAM_INVALID, f"cannot store {dest!r}: it is a folder in the volume")

    def _apply(
        self,
        db: sqlite3.Connection,
        volume_id: str,
        task_id: str,
        decision: _Decision,
        now: int,
        delay_ms: int,
        fail_rate: float,
    ) -> _FileResult:
        incoming = decision.file
        if decision.skip:
            # Nothing to process: the task entry is final at once.
            timing: tuple[int, int, int, str] = (now, now, now, "")
            result = _FileResult(True, decision.file_id, "skipped: duplicate")
        else:
            self._move_into_place(volume_id, incoming)
            db.execute(
                "INSERT INTO stored_files VALUES (?, ?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT (volume_id, path) DO UPDATE SET file_id = excluded.file_id,"
                " size = excluded.size, md5 = excluded.md5, uploads = uploads + 1,"
                " updated_ms = excluded.updated_ms",
                (volume_id, incoming.dest, decision.file_id, incoming.size, incoming.md5, now, now),
            )
            reason = INJECTED_FAILURE if self._fails(fail_rate) else ""
            timing = (now, now + delay_ms // 2, now + delay_ms, reason)
            result = _FileResult(True, decision.file_id, "uploaded")
        db.execute(
            "INSERT INTO task_files (task_id, file_id, name, size, started_ms, uploading_ms, done_ms,"
            " retrying, fail_reason) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (task_id, decision.file_id, incoming.dest, incoming.size, *timing),
        )
        return result

    def _fails(self, fail_rate: float) -> bool:
        return fail_rate > 0 and self._rng.random() < fail_rate

    def _move_into_place(self, volume_id: str, incoming: _IncomingFile) -> None:
        target = safe_join(self.data_dir / volume_id, incoming.dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(incoming.staged, target)

    # tasks

    def task(self, task_id: str) -> _Task | None:
        with self._lock:
            row = self._db.execute(
                "SELECT t.id, t.volume_id, COALESCE(v.name, t.volume_id), t.uris, t.created_ms,"
                " t.updated_ms, t.paused_at_ms FROM tasks t LEFT JOIN volumes v ON v.id = t.volume_id"
                " WHERE t.id = ?",
                (task_id,),
            ).fetchone()
            if row is None:
                return None
            return self._task_from_row(row, self._task_files(task_id))

    def tasks(self) -> list[_Task]:
        with self._lock:
            rows = self._db.execute(
                "SELECT t.id, t.volume_id, COALESCE(v.name, t.volume_id), t.uris, t.created_ms,"
                " t.updated_ms, t.paused_at_ms FROM tasks t LEFT JOIN volumes v ON v.id = t.volume_id"
            ).fetchall()
            files: dict[str, list[_TaskFile]] = collections.defaultdict(list)
            for task_id, *values in self._db.execute(
                "SELECT task_id, file_id, name, size, started_ms, uploading_ms, done_ms, retrying,"
                " fail_reason FROM task_files ORDER BY seq"
            ):
                files[task_id].append(_task_file(values))
            return [self._task_from_row(row, files.get(row[0], [])) for row in rows]

    def _task_files(self, task_id: str) -> list[_TaskFile]:
        rows = self._db.execute(
            "SELECT file_id, name, size, started_ms, uploading_ms, done_ms, retrying, fail_reason"
            " FROM task_files WHERE task_id = ? ORDER BY seq",
            (task_id,),
        ).fetchall()
        return [_task_file(row) for row in rows]

    @staticmethod
    def _task_from_row(row: tuple[Any, ...], files: list[_TaskFile]) -> _Task:
        task_id, volume_id, volume_name, uris, created_ms, updated_ms, paused_at_ms = row
        return _Task(task_id, volume_id, volume_name, json.loads(uris), created_ms, updated_ms, paused_at_ms, files)

    def retry(self, task_id: str, file_ids: list[str], *, delay_ms: int, fail_rate: float) -> None:
        """Send the task's failed files among ``file_ids`` through processing again."""
        with self._transaction() as db:
            task = self._locked_task(db, task_id)
            known = {f.file_id for f in task.files}
            unknown = [file_id for file_id in file_ids if file_id not in known]
            if unknown:
                raise ApiError(400, PARAM_INVALID, f"ids: file {unknown[0]} is not part of task {task_id}")
            now = now_ms()
            wanted = set(file_ids)
            for seq, f in self._task_file_rows(db, task_id):
                if f.file_id in wanted and _file_status(f, now, task.paused_at_ms) is FileStatus.FAILED:
                    reason = INJECTED_FAILURE if self._fails(fail_rate) else ""
                    db.execute(
                        "UPDATE task_files SET retrying = 1, uploading_ms = ?, done_ms = ?, fail_reason = ?"
                        " WHERE seq = ?",
                        (now, now + delay_ms, reason, seq),
                    )
            db.execute("UPDATE tasks SET updated_ms = ? WHERE id = ?", (now, task_id))

    def pause(self, task_id: str) -> None:
        """Freeze the task's unfinished files; a finished or paused task is left as it is."""
        with self._transaction() as db:
            task = self._locked_task(db, task_id)
            now = now_ms()
            if task.paused_at_ms is None and any(f.done_ms > now for f in task.files):
                db.execute("UPDATE tasks SET paused_at_ms = ?, updated_ms = ? WHERE id = ?", (now, now, task_id))

    def resume(self, task_id: str) -> None:
        """Unfreeze a paused task: its files continue with the time they had left."""
        with self._transaction() as db:
            task = self._locked_task(db, task_id)
            if task.paused_at_ms is None:
                return
            now = now_ms()
            shift = now - task.paused_at_ms
            db.execute(
                "UPDATE task_files SET uploading_ms = uploading_ms + ?, done_ms = done_ms + ?"
                " WHERE task_id = ? AND done_ms > ?",
                (shift, shift, task_id, task.paused_at_ms),
            )
            db.execute("UPDATE tasks SET paused_at_ms = NULL, updated_ms = ? WHERE id = ?", (now, task_id))

    def _locked_task(self, db: sqlite3.Connection, task_id: str) -> _Task:
        row = db.execute(
            "SELECT id, volume_id, volume_id, uris, created_ms, updated_ms, paused_at_ms FROM tasks WHERE id = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            raise ApiError(404, NOT_FOUND, f"task {task_id} not found")
        return self._task_from_row(row, self._task_files(task_id))

    @staticmethod
    def _task_file_rows(db: sqlite3.Connection, task_id: str) -> list[tuple[int, _TaskFile]]:
        rows = db.execute(
            "SELECT seq, file_id, name, size, started_ms, uploading_ms, done_ms, retrying, fail_reason"
            " FROM task_files WHERE task_id = ? ORDER BY seq",
            (task_id,),
        ).fetchall()
        return [(row[0], _task_file(row[1:])) for row in rows]

    # test hooks

    def stored_files(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT volume_id, path, size, md5, uploads FROM stored_files ORDER BY volume_id, path"
            ).fetchall()
        return [dict(zip(("volume_id", "path", "size", "md5", "uploads"), row, strict=True)) for row in rows]


def _task_file(values: tuple[Any, ...] | list[Any]) -> _TaskFile:
    file_id, name, size, started_ms, uploading_ms, done_ms, retrying, fail_reason = values
    return _TaskFile(file_id, name, size, started_ms, uploading_ms, done_ms, bool(retrying), fail_reason)


# --- computed progress ------------------------------------------------------------------------------------


def _file_status(f: _TaskFile, now: int, paused_at: int | None) -> FileStatus:
    if paused_at is not None and f.done_ms > paused_at:
        return FileStatus.PAUSED
    if f.done_ms <= now:
        return FileStatus.FAILED if f.fail_reason else FileStatus.SUCCESS
    if f.retrying:
        return FileStatus.RETRYING
    return FileStatus.UPLOADING if f.uploading_ms <= now else FileStatus.WAITING


def _file_updated_ms(f: _TaskFile, now: int, paused_at: int | None) -> int:
    """When the file last changed state, as seen at ``now``."""
    if paused_at is not None and f.done_ms > paused_at:
        return paused_at
    for moment in (f.done_ms, f.uploading_ms):
        if moment <= now:
            return moment
    return f.started_ms


def _task_status(task: _Task, now: int) -> TaskStatus:
    if task.paused_at_ms is not None and any(f.done_ms > task.paused_at_ms for f in task.files):
        return TaskStatus.PAUSED
    if any(f.done_ms > now for f in task.files):
        return TaskStatus.RUNNING
    return TaskStatus.FINISHED


def _seconds(ms: int) -> int:
    return ms // 1000


def _task_json(task: _Task, now: int) -> dict[str, Any]:
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


def _task_file_json(task: _Task, f: _TaskFile, status: FileStatus, now: int) -> dict[str, Any]:
    terminal = status in (FileStatus.SUCCESS, FileStatus.FAILED)
    return {
        "id": f.file_id,
        "name": f.name,
        "type": int(file_type_for(f.name)),
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


# --- runtime state ----------------------------------------------------------------------------------------


@dataclass
class MoiState:
    """The running emulator's mutable state, at ``app[MOI_STATE]``.

    Tests may change ``task_delay_ms``, ``task_fail_rate`` and ``faults.settings`` on a running app.
    """

    config: MoiEmulatorConfig
    task_delay_ms: int
    task_fail_rate: float
    faults: FaultInjector
    #: Requests received per ``"<METHOD> <route>"`` (test hooks excluded).
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    _store: _Store | None = None

    @property
    def store(self) -> _Store:
        if self._store is None:
            raise RuntimeError("the MOI emulator's store is only open while the app runs")
        return self._store


MOI_STATE: web.AppKey[MoiState] = web.AppKey("moi_state", MoiState)


def _state(request: web.Request) -> MoiState:
    return request.app[MOI_STATE]


# --- envelope ---------------------------------------------------------------------------------------------


def _fault_response(request: web.Request, fault: Fault) -> web.StreamResponse:
    if fault is Fault.RATE_LIMITED:
        return _error(request, 429, RATE_LIMITED, "rate limit exceeded; retry after the Retry-After delay")
    return _error(request, 500, SERVER_ERROR, "internal server error (injected fault)")


# --- middlewares ------------------------------------------------------------------------------------------


@web.middleware
async def _envelope_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error, including aiohttp's own 404/405/413, in the MOI envelope."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(request, exc.http_status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_exception_response(request, exc)
    except ConnectionError:
        # The client went away mid-body. Answering (into a closed transport) lets aiohttp treat it as the
        # ordinary disconnect it is, instead of logging a traceback for every aborted upload.
        log.debug("MOI emulator: client disconnected during %s %s", request.method, request.path)
        return _error(request, 400, PARAM_INVALID, "the connection was lost before the request was complete")
    except Exception as exc:
        log.exception("MOI emulator: unhandled error on %s %s", request.method, request.path)
        return _error(request, 500, SERVER_ERROR, f"internal server error ({type(exc).__name__})")


def _http_exception_response(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = _CODE_FOR_STATUS.get(exc.status, SERVER_ERROR if exc.status >= 500 else PARAM_INVALID)
    if exc.status == 404:
        msg = f"no such API: {request.method} {request.path}"
    elif exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        msg = f"method {request.method} is not allowed on {request.path}; allowed: {allowed}"
    else:
        msg = exc.reason
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return _error(request, exc.status, code, msg, headers)


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``moi-key`` (the SDK) or ``X-API-Key`` (MOI 5.0); test hooks are open. The key is never echoed."""
    if is_test_hook(request):
        return await handler(request)
    given = [v for v in (request.headers.get("moi-key"), request.headers.get("X-API-Key")) if v is not None]
    if not given:
        raise ApiError(401, UNAUTHORIZED, "missing API key: send it in the moi-key header")
    if len(given) == 2 and given[0] != given[1]:
        raise ApiError(400, MULTIPLE_CREDENTIALS, "moi-key and X-API-Key carry different keys; send one")
    expected = _state(request).config.api_key.encode()
    if not hmac.compare_digest(given[0].encode(), expected):
        raise ApiError(401, UNAUTHORIZED, "invalid API key")
    return await handler(request)


# --- volumes ----------------------------------------------------------------------------------------------


def _volume_name(body: Mapping[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _bad("name is required and must be a non-empty string")
    if len(name) > 128 or "/" in name or "\x00" in name:
        raise _bad("name must be at most 128 characters, without '/' or NUL")
    return name


async def create_volume(request: web.Request) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    _check_keys(body, {"database_id", "name", "description"})
    database_id = body.get("database_id")
    if isinstance(database_id, bool) or not isinstance(database_id, int) or database_id < 0:
        raise _bad("database_id is required and must be a non-negative integer")
    name = _volume_name(body)
    description = body.get("description", "")
    if not isinstance(description, str):
        raise _bad("description must be a string")
    volume_id = await anyio.to_thread.run_sync(_state(request).store.create_volume, database_id, name, description)
    return _ok(request, {"id": volume_id})


def _timestamp(ms: int) -> str:
    # The Go SDK types created_at/updated_at of a volume as strings.
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


async def volume_info(request: web.Request) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    _check_keys(body, {"id"})
    if body.get("id") in (None, ""):
        raise _bad("id is required")
    if isinstance(body["id"], bool) or not isinstance(body["id"], (str, int)):
        raise _bad("id must be a volume id string")
    volume_id = str(body["id"])
    volume = await anyio.to_thread.run_sync(_state(request).store.volume, volume_id)
    if volume is None:
        raise ApiError(404, NOT_FOUND, f"volume {_short(volume_id)} not found")
    return _ok(
        request,
        {
            "id": volume.id,
            "name": volume.name,
            "description": volume.description,
            "ref": False,
            "created_at": _timestamp(volume.created_ms),
            "updated_at": _timestamp(volume.updated_ms),
        },
    )


# --- upload: receiving the multipart body -----------------------------------------------------------------


@dataclass
class _StagedPart:
    path: Path
    size: int
    md5: str
    field: str = _FILE_FIELD
    filename: str = ""


@dataclass
class _Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[_StagedPart] = field(default_factory=list)


async def _receive_form(request: web.Request, state: MoiState, staged: list[Path]) -> _Form:
    """Parse the multipart body, streaming ``file`` parts to staging (their paths go to ``staged``)."""
    form = _Form()
    await receive_parts(request, lambda part: _receive_part(part, form, state, staged), _bad)
    return form


async def _receive_part(part: BodyPartReader, form: _Form, state: MoiState, staged: list[Path]) -> None:
    name, filename = part_names(part)
    if name in (_FILE_FIELD, _DATA_FIELD):
        if len(form.files) >= state.config.max_files_per_request:
            raise _bad(f"too many files: at most {state.config.max_files_per_request} per request")
        form.files.append(await _stage_file(part, (name, filename), len(form.files), state, staged))
    elif name == _EMPTY_FIELD:
        await part.release()  # the SDK's placeholder that keeps an upload without files multipart
    elif name in _TEXT_FIELDS:
        if name in form.fields:
            raise _bad(f"form field {name} is given twice")
        form.fields[name] = await read_text_part(part, name, TEXT_FIELD_LIMIT, _bad)
    else:
        known = ", ".join(sorted({*_TEXT_FIELDS, _FILE_FIELD, _DATA_FIELD}))
        raise _bad(f"unknown form field {_short(name or '')!r}; expected one of: {known}")


async def _stage_file(
    part: BodyPartReader, names: PartNames, index: int, state: MoiState, staged: list[Path]
) -> _StagedPart:
    """Stream one file part to a staging file, hashing as it goes; never holds more than a buffer."""
    path = state.store.staging_dir / f"{uuid.uuid4().hex}.part"
    staged.append(path)  # registered first, so even a half-written file is cleaned up
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    buffer = bytearray()
    out: Any = None  # opened at the first full buffer: a small part is written in one thread hop
    try:
        while chunk := await part.read_chunk(READ_CHUNK):
            size += len(chunk)
            if state.config.max_file_size is not None and size > state.config.max_file_size:
                raise _bad(f"file part {index} is larger than the {state.config.max_file_size}-byte limit")
            digest.update(chunk)
            buffer += chunk
            if len(buffer) >= WRITE_BUFFER:
                if out is None:
                    out = await aiofiles.open(path, "wb")
                await out.write(bytes(buffer))
                buffer.clear()
        if out is None:
            await anyio.to_thread.run_sync(path.write_bytes, bytes(buffer))
        elif buffer:
            await out.write(bytes(buffer))
    finally:
        if out is not None:
            await out.close()
    return _StagedPart(path, size, digest.hexdigest(), names[0] or _FILE_FIELD, names[1] or "")


# --- upload: validating the fields ------------------------------------------------------------------------

_SEED_META_KEYS = {"file_name", "file_size", "mime_type"}
_SDK_META_KEYS = {"filename", "path"}


@dataclass(frozen=True, slots=True)
class _MetaEntry:
    dest: str
    #: What ``path_regex`` is matched against: the SDK form's ``path``, else the destination.
    source_path: str
    declared_size: int | None


def _parse_json_field(fields: Mapping[str, str], name: str) -> Any:
    try:
        return json.loads(fields[name])
    except json.JSONDecodeError as exc:
        raise _bad(f"form field {name} is not valid JSON ({exc})") from None


def _parse_meta(fields: Mapping[str, str], file_count: int) -> list[_MetaEntry]:
    if "meta" not in fields:
        if file_count:
            raise _bad("form field meta is required when files are sent (a JSON array, one entry per file)")
        return []
    value = _parse_json_field(fields, "meta")
    if not isinstance(value, list):
        raise _bad("form field meta must be a JSON array with one object per file")
    if len(value) != file_count:
        raise _bad(f"form field meta has {len(value)} entries but {file_count} file parts were sent")
    entries = [_parse_meta_entry(index, entry) for index, entry in enumerate(value)]
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.dest in seen:
            raise _bad(f"meta[{index}]: {entry.dest!r} is also the destination of meta[{seen[entry.dest]}]")
        seen[entry.dest] = index
    return entries


def _data_part_entry(index: int, part: _StagedPart) -> _MetaEntry:
    """A ``data`` part without meta goes to the volume under its own file name."""
    problem = relative_path_problem(part.filename) if part.filename else "is missing"
    if problem is not None:
        raise _bad(f"data part {index}: the file name {_short(part.filename)!r} {problem}; send meta instead")
    return _MetaEntry(part.filename, part.filename, None)


def _parse_meta_entry(index: int, entry: Any) -> _MetaEntry:
    where = f"meta[{index}]"
    if not isinstance(entry, dict):
        raise _bad(f"{where} must be a JSON object")
    if "file_name" in entry and "filename" in entry:
        raise _bad(f"{where} has both file_name and filename; use one form")
    if "file_name" in entry:
        _check_keys(entry, _SEED_META_KEYS, where)
        dest = _meta_dest(entry, "file_name", where)
        size = entry.get("file_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _bad(f"{where} ({_short(dest)}): file_size is required and must be a non-negative integer")
        if not isinstance(entry.get("mime_type", ""), str):
            raise _bad(f"{where} ({_short(dest)}): mime_type must be a string")
        return _MetaEntry(dest, dest, size)
    if "filename" in entry:
        _check_keys(entry, _SDK_META_KEYS, where)
        dest = _meta_dest(entry, "filename", where)
        source = entry.get("path", dest)
        if not isinstance(source, str):
            raise _bad(f"{where} ({_short(dest)}): path must be a string")
        return _MetaEntry(dest, source, None)
    raise _bad(f"{where} needs file_name (with file_size) or filename")


def _meta_dest(entry: Mapping[str, Any], key: str, where: str) -> str:
    dest = entry.get(key)
    if not isinstance(dest, str):
        raise _bad(f"{where}: {key} must be a string")
    problem = relative_path_problem(dest)
    if problem is not None:
        raise _bad(f"{where}: {key} {_short(dest)!r} {problem}")
    return dest


def _parse_dedup(fields: Mapping[str, str]) -> _Dedup | None:
    if "dedup" not in fields:
        return None
    value = _parse_json_field(fields, "dedup")
    if not isinstance(value, dict):
        raise _bad('form field dedup must be a JSON object like {"by": ["name", "md5"], "strategy": "skip"}')
    _check_keys(value, {"by", "strategy"}, "form field dedup")
    by = value.get("by")
    if not isinstance(by, list) or not by or not all(isinstance(key, str) and key in _DEDUP_KEYS for key in by):
        raise _bad('dedup.by must be a non-empty array of "name" and/or "md5"')
    strategy = value.get("strategy")
    if strategy not in _DEDUP_STRATEGIES:
        raise _bad('dedup.strategy must be "skip", "replace" or "overwrite"')
    return _Dedup(frozenset(by), _DEDUP_STRATEGIES[strategy])


def _parse_file_types(fields: Mapping[str, str]) -> frozenset[int] | None:
    if "file_types" not in fields:
        return None
    value = _parse_json_field(fields, "file_types")
    valid = {int(t) for t in FileType}
    if not isinstance(value, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and t in valid for t in value
    ):
        raise _bad(f"form field file_types must be a JSON array of file type numbers {min(valid)}-{max(valid)}")
    return frozenset(value) or None  # an empty list filters nothing


def _parse_path_regex(fields: Mapping[str, str]) -> re.Pattern[str] | None:
    if "path_regex" not in fields or not fields["path_regex"]:
        return None
    try:
        return re.compile(fields["path_regex"])
    except re.error as exc:
        raise _bad(f"form field path_regex is not a valid regular expression ({exc})") from None


def _check_minor_fields(fields: Mapping[str, str]) -> None:
    """Fields accepted for compatibility and validated, but with no effect in the emulator."""
    if fields.get("unzip_keep_structure", "true").lower() not in ("true", "false"):
        raise _bad("form field unzip_keep_structure must be true or false")
    if "table_config" in fields and not isinstance(_parse_json_field(fields, "table_config"), dict):
        raise _bad("form field table_config must be a JSON object")


def _volume_id_field(fields: Mapping[str, str]) -> str:
    volume_id = fields.get("VolumeID", "").strip()
    if not volume_id:
        raise _bad("form field VolumeID is required")
    return volume_id


def _filter_problem(
    entry: _MetaEntry, file_types: frozenset[int] | None, path_regex: re.Pattern[str] | None
) -> str | None:
    """Why ``file_types``/``path_regex`` exclude this file (it is then refused alone), or ``None``."""
    kind = int(file_type_for(entry.dest))
    if file_types is not None and kind not in file_types:
        return f"skipped: file type {kind} is not in file_types"
    if path_regex is not None and not path_regex.search(entry.source_path):
        return "skipped: path does not match path_regex"
    return None


# --- upload: the handler ----------------------------------------------------------------------------------


async def upload(request: web.Request) -> web.Response:
    state = _state(request)
    staged: list[Path] = []
    try:
        form = await _receive_form(request, state, staged)
        return await _accept_upload(request, state, form)
    finally:
        # Whatever happened (invalid request, dropped connection, cancellation), no staged body survives.
        discard_staged(staged)


async def _accept_upload(request: web.Request, state: MoiState, form: _Form) -> web.Response:
    fields = form.fields
    volume_id = _volume_id_field(fields)
    volume = await anyio.to_thread.run_sync(state.store.volume, volume_id)
    if volume is None:
        raise ApiError(404, NOT_FOUND, f"volume {_short(volume_id)} not found")
    if "meta" not in fields and form.files and all(p.field == _DATA_FIELD for p in form.files):
        entries = [_data_part_entry(index, part) for index, part in enumerate(form.files)]
    else:
        entries = _parse_meta(fields, len(form.files))
    for index, (entry, part) in enumerate(zip(entries, form.files, strict=True)):
        if entry.declared_size is not None and entry.declared_size != part.size:
            raise _bad(
                f"meta[{index}] ({_short(entry.dest)}): file_size is {entry.declared_size}"
                f" but {part.size} bytes were received"
            )
    dedup = _parse_dedup(fields)
    file_types = _parse_file_types(fields)
    path_regex = _parse_path_regex(fields)
    _check_minor_fields(fields)
    if not form.files and "table_config" not in fields:
        raise _bad("no files: send at least one file part (or table_config)")

    refusals = [_filter_problem(entry, file_types, path_regex) for entry in entries]
    accepted = [
        _IncomingFile(entry.dest, part.path, part.size, part.md5)
        for entry, part, refusal in zip(entries, form.files, refusals, strict=True)
        if refusal is None
    ]
    task_id, stored = await anyio.to_thread.run_sync(
        lambda: state.store.commit_upload(
            volume.id, accepted, dedup, delay_ms=state.task_delay_ms, fail_rate=state.task_fail_rate
        )
    )
    results = _merge_results(refusals, stored)
    return _ok(request, _upload_data(task_id, results))


def _merge_results(refusals: list[str | None], stored: list[_FileResult]) -> list[_FileResult]:
    """Results in request order: refused files in their place, the others from the store."""
    pending = iter(stored)
    return [next(pending) if refusal is None else _FileResult(False, "", refusal) for refusal in refusals]


def _upload_data(task_id: str, results: list[_FileResult]) -> dict[str, Any]:
    accepted = [r for r in results if r.success]
    skipped = sum(r.message.startswith("skipped: duplicate") for r in accepted)
    return {
        "success": True,
        "file_id": accepted[0].file_id if accepted else "",
        "task_id": task_id,
        "message": f"{len(accepted) - skipped} file(s) uploaded, {skipped} skipped as duplicates,"
        f" {len(results) - len(accepted)} refused",
        "results": [r.to_json() for r in results],
    }


# --- tasks ------------------------------------------------------------------------------------------------


async def get_task(request: web.Request) -> web.Response:
    task_id = _query_id(request, "task_id")
    load = await anyio.to_thread.run_sync(request.app[LOADS].loads.task, task_id)
    if load is not None:
        return _ok(request, {"task": load_task_json(load)})
    task = await anyio.to_thread.run_sync(_state(request).store.task, task_id)
    if task is None:
        # As the real service does (API-NOTES): an unknown task is an ErrServer inside HTTP 200.
        raise ApiError(200, SERVER_ERROR, f"task {task_id} not found")
    return _ok(request, {"task": _task_json(task, now_ms())})


async def task_files(request: web.Request) -> web.Response:
    task_id = _query_id(request, "task_id")
    wanted = _query_int(request, "status", None, 0, max(FileStatus))
    page, page_size = _query_paging(request)
    load = await anyio.to_thread.run_sync(request.app[LOADS].loads.task, task_id)
    if load is not None:
        return _ok(request, files_view(load, wanted, page, page_size))
    task = await anyio.to_thread.run_sync(_state(request).store.task, task_id)
    if task is None:
        raise ApiError(404, NOT_FOUND, f"task {task_id} not found")
    now = now_ms()
    statuses = [(f, _file_status(f, now, task.paused_at_ms)) for f in task.files]
    matching = [(f, s) for f, s in statuses if wanted is None or s == wanted]
    page_items = matching[(page - 1) * page_size : page * page_size]
    return _ok(
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
        raise _bad("query parameter load_interval_types must be integers 0-4") from None
    if not values <= {0, 1, 2, 3, 4}:
        raise _bad("query parameter load_interval_types must be integers 0-4")
    return values


async def list_tasks(request: web.Request) -> web.Response:
    page, page_size = _query_paging(request)
    wanted = _query_int(request, "status", None, 0, max(TaskStatus))
    descending = _query_bool(request, "is_desc")
    order_by = request.query.get("order_by", "").strip() or "created_at"
    if order_by not in _TASK_ORDER_FIELDS:
        raise _bad(f"query parameter order_by must be one of: {', '.join(_TASK_ORDER_FIELDS)}")
    intervals = _load_interval_types(request)
    tasks = await anyio.to_thread.run_sync(_state(request).store.tasks)
    loads = await anyio.to_thread.run_sync(request.app[LOADS].loads.tasks)
    now = now_ms()
    views = [_task_json(task, now) for task in tasks] + [load_task_json(load) for load in loads]
    if intervals is not None:
        views = [
            v
            for v in views
            if v["source_config"]["common_file_task_config"]["load_mode_config"]["load_interval_type"] in intervals
        ]
    views = [v for v in views if wanted is None or v["status"] == wanted]
    # Ids are snowflakes: ordering them numerically is ordering by creation, the natural tie-breaker.
    views.sort(key=lambda v: (int(v[order_by]), int(v["id"])), reverse=descending)
    return _ok(request, {"tasks": views[(page - 1) * page_size : page * page_size], "total": len(views)})


async def retry_task(request: web.Request) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    _check_keys(body, {"task_id", "ids"})
    task_id, file_ids = retry_ids(body)
    state = _state(request)
    service = request.app[LOADS]
    if await anyio.to_thread.run_sync(service.loads.knows, task_id):
        await anyio.to_thread.run_sync(service.loads.retry, task_id, file_ids)
        service.wake()
        return _ok(request, None)
    await anyio.to_thread.run_sync(
        lambda: state.store.retry(task_id, file_ids, delay_ms=state.task_delay_ms, fail_rate=state.task_fail_rate)
    )
    return _ok(request, None)


async def _task_action(
    request: web.Request, action: Callable[[_Store, str], None], load_action: Callable[[str], None]
) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    _check_keys(body, {"task_id"})
    task_id = _required_id(body, "task_id")
    service = request.app[LOADS]
    if await anyio.to_thread.run_sync(service.loads.knows, task_id):
        await anyio.to_thread.run_sync(load_action, task_id)
        service.wake()
        return _ok(request, None)
    store = _state(request).store
    await anyio.to_thread.run_sync(action, store, task_id)
    return _ok(request, None)


async def pause_task(request: web.Request) -> web.Response:
    return await _task_action(request, _Store.pause, request.app[LOADS].loads.pause)


async def resume_task(request: web.Request) -> web.Response:
    return await _task_action(request, _Store.resume, request.app[LOADS].loads.resume)


# --- test hooks -------------------------------------------------------------------------------------------


async def emulator_files(request: web.Request) -> web.Response:
    """Every stored file (not enveloped): ``[{volume_id, path, size, md5, uploads}]``."""
    return json_response(await anyio.to_thread.run_sync(_state(request).store.stored_files))


# --- the app ----------------------------------------------------------------------------------------------


def _is_upload(request: web.Request) -> bool:
    return request.method == "POST" and request.path == "/connectors/upload"


async def _open_store(app: web.Application) -> AsyncIterator[None]:
    state = app[MOI_STATE]
    store = await anyio.to_thread.run_sync(_Store, state.config.data_dir, state.config.seed)
    try:
        await anyio.to_thread.run_sync(store.ensure_volumes, state.config.volumes)
        state._store = store
        # The load worker lives as long as the app. aiohttp's cleanup context is an async generator, which an
        # anyio task group must not span, so the worker is a plain asyncio task, cancelled and awaited below.
        worker = asyncio.get_running_loop().create_task(app[LOADS].run())
        try:
            yield
        finally:
            worker.cancel()
            with anyio.CancelScope(shield=True), suppress(asyncio.CancelledError):
                await worker
    finally:
        state._store = None
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(store.close)


def create_moi_app(config: MoiEmulatorConfig) -> web.Application:
    """The MOI emulator as an aiohttp application (run it with ``ingest.emulators.kit.server``)."""
    problems = config.problems()
    if problems:
        raise ValueError("invalid MOI emulator config: " + "; ".join(problems))
    faults = FaultInjector(fault_settings(config), _fault_response, seed=config.seed, resettable=_is_upload)
    state = MoiState(config, config.task_delay_ms, config.task_fail_rate, faults)
    requests = RequestCounter(state.requests)
    app = web.Application(middlewares=[requests.middleware, _envelope_errors, faults.middleware, _authenticate])
    app[MOI_STATE] = state
    connectors = ConnectorStore(state)
    add_connector_routes(app, connectors)
    loads = LoadService(
        state,
        connectors,
        clock_speed=config.clock_speed,
        concurrency=config.load_concurrency,
        seed=config.seed,
    )
    add_load_routes(app, loads)
    app.cleanup_ctx.append(_open_store)
    app.router.add_post("/catalog/volume/create", create_volume)
    app.router.add_post("/catalog/volume/info", volume_info)
    app.router.add_post("/connectors/upload", upload)
    app.router.add_get("/task/get", get_task, allow_head=False)
    app.router.add_get("/task/files", task_files, allow_head=False)
    app.router.add_get("/task/list", list_tasks, allow_head=False)
    app.router.add_post("/task/retry", retry_task)
    app.router.add_post("/task/pause", pause_task)
    app.router.add_post("/task/resume", resume_task)
    app.router.add_get("/_emulator/files", emulator_files, allow_head=False)
    app.router.add_get("/_emulator/stats", requests.stats, allow_head=False)
    return app


# --- command line (``ingest serve moi``) ------------------------------------------------------------------


def _volume_id(text: str) -> str:
    if not _VOLUME_ID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"volume id must be 1-64 letters, digits, '_' or '-', got {text!r}")
    return text


def add_moi_arguments(parser: argparse.ArgumentParser) -> None:
    """The MOI emulator's flags (``--host``/``--port`` are the CLI's)."""
    env_key = os.environ.get("MOI_KEY")
    parser.add_argument(
        "--data-dir", type=Path, required=True, metavar="PATH",
        help="directory for uploaded files and the emulator's state; reuse it to keep state across restarts",
    )  # fmt: skip
    parser.add_argument(
        "--api-key", default=env_key, required=env_key is None, metavar="KEY",
        help="API key clients must send in moi-key or X-API-Key (default: $MOI_KEY)",
    )  # fmt: skip
    parser.add_argument(
        "--volume", dest="volumes", action="append", type=_volume_id, default=[], metavar="ID",
        help="create a volume with this id at start-up (repeatable), e.g. --volume 1001",
    )  # fmt: skip
    parser.add_argument(
        "--task-delay-ms", type=_cli.non_negative_int, default=200, metavar="N",
        help="milliseconds a task file takes to go waiting -> uploading -> done (default: 200)",
    )  # fmt: skip
    parser.add_argument(
        "--task-fail-rate", type=_cli.fraction, default=0.0, metavar="F",
        help="fraction of task files that end failed with a reason, 0-1 (default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--max-file-size", type=_cli.size, default=None, metavar="SIZE",
        help="largest file accepted, e.g. 200MiB as MOI 5.0 documents (default: no limit, as the seed document)",
    )  # fmt: skip
    parser.add_argument(
        "--max-files-per-request", type=_cli.positive_int, default=20, metavar="N",
        help="files accepted in one upload request (default: 20, as MOI 5.0 documents)",
    )  # fmt: skip
    parser.add_argument(
        "--clock-speed", type=_cli.positive_float, default=1.0, metavar="F",
        help="run periodic load tasks F times faster than real time, e.g. 3600 makes 'hourly' every second"
        " (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--load-concurrency", type=_cli.positive_int, default=4, metavar="N",
        help="files connector load tasks copy at the same time (default: 4)",
    )  # fmt: skip
    _cli.add_fault_arguments(
        parser, server_error="500 ErrServer", rate_limited="429 with Retry-After", resettable="uploads"
    )


def build_moi_app(args: argparse.Namespace) -> web.Application:
    """The app for parsed ``add_moi_arguments`` flags."""
    config = MoiEmulatorConfig(
        data_dir=args.data_dir,
        api_key=args.api_key,
        volumes=tuple(args.volumes),
        task_delay_ms=args.task_delay_ms,
        task_fail_rate=args.task_fail_rate,
        max_file_size=args.max_file_size,
        max_files_per_request=args.max_files_per_request,
        clock_speed=args.clock_speed,
        load_concurrency=args.load_concurrency,
        **_cli.fault_options(args),
    )
    return create_moi_app(config)
