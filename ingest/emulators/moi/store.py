"""The MOI emulator's persistent state: volumes, stored files and upload tasks in SQLite, bodies too.

Volumes, stored files, connectors and tasks live in ``<data_dir>/.emulator.db`` (the connector and
load-task tables are declared by ``connectors`` and ``loadtasks``), so a restarted emulator still answers
for old task ids. Upload task progress is computed from timestamps when asked (``file_status``).

A stored file's body is a row of ``stored_bodies`` when it is small (``BODY_IN_DB_MAX``, received in
memory), else the file ``<data_dir>/<volume>/<path>``; ``open_body`` reads either. Creating one file per
small upload was the emulator's largest cost per request (kernel time, waits on the file system's
journal); a row is written with the upload's other rows, in the same commit.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import itertools
import json
import os
import posixpath
import random
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ingest.emulators.kit.common import ApiError, SnowflakeIds, now_ms, safe_join
from ingest.emulators.kit.store import SqliteStore
from ingest.emulators.moi.connectors import CONNECTORS_SCHEMA
from ingest.emulators.moi.loadtasks import LOAD_SCHEMA
from ingest.emulators.moi.wire import ALREADY_EXISTS, NOT_FOUND, PARAM_INVALID, FileStatus

__all__ = [
    "BODY_IN_DB_MAX",
    "INJECTED_FAILURE",
    "CatalogFile",
    "Dedup",
    "FileResult",
    "IncomingFile",
    "MoiStore",
    "Task",
    "TaskFile",
    "Volume",
    "file_status",
    "folder_id",
]

#: Bodies received in memory up to this size are kept in the database (``stored_bodies``), bigger ones
#: as files. SQLite's own measurements ("Internal Versus External BLOBs") find blobs up to ~100 KB
#: faster in the database than as files; 64 KiB keeps one group commit's WAL write modest.
BODY_IN_DB_MAX = 1 << 16

#: Reason recorded for a file failed by ``task_fail_rate``.
INJECTED_FAILURE = "parse failed: injected fault"

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
-- The body of a stored file kept in the database (small ones, BODY_IN_DB_MAX). A path with a row here
-- has its body here, whatever a file under <data_dir>/<volume>/ may hold (a leftover of a crash); a
-- path without one has its body in that file. Data dirs from before this table hold only files.
CREATE TABLE IF NOT EXISTS stored_bodies (
    volume_id TEXT NOT NULL,
    path TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (volume_id, path)
);
-- The volume's catalog: one row per file MOI holds, every upload (or load) of a path its own file, so a
-- re-sent changed file is a second file until one is deleted (/catalog/file/list, /catalog/file/delete).
-- stored_files above stays the by-path summary (the newest body, how often the path was sent).
CREATE TABLE IF NOT EXISTS catalog_files (
    id TEXT PRIMARY KEY,
    volume_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS catalog_files_volume ON catalog_files (volume_id, created_ms, id);
CREATE INDEX IF NOT EXISTS catalog_files_path ON catalog_files (volume_id, path);
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
-- /task/list's two orders (by creation second then id, and by id), so a page of the newest tasks is read
-- from an index with LIMIT instead of sorting every task of the account for each poll. The expressions
-- must stay exactly those of newest_tasks' ORDER BY, or SQLite will not use them.
CREATE INDEX IF NOT EXISTS tasks_by_second ON tasks (created_ms / 1000, CAST(id AS INTEGER));
CREATE INDEX IF NOT EXISTS tasks_by_id ON tasks (CAST(id AS INTEGER));
"""


@dataclass(frozen=True, slots=True)
class Volume:
    id: str
    database_id: int
    name: str
    description: str
    created_ms: int
    updated_ms: int


def folder_id(volume_id: str, folder: str) -> str:
    """A stable decimal id for a folder path of a volume ("" for the top): uploads create no folder objects."""
    if not folder:
        return ""
    return str(int(hashlib.sha256(f"{volume_id}\0{folder}".encode()).hexdigest()[:15], 16))


@dataclass(frozen=True, slots=True)
class CatalogFile:
    """One file of a volume's catalog (one version of a path)."""

    id: str
    volume_id: str
    path: str
    size: int
    md5: str
    created_ms: int
    updated_ms: int


_CATALOG_COLUMNS = "id, volume_id, path, size, md5, created_ms, updated_ms"


@dataclass(frozen=True, slots=True)
class TaskFile:
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
class Task:
    id: str
    volume_id: str
    volume_name: str
    uris: list[str]
    created_ms: int
    updated_ms: int
    paused_at_ms: int | None
    files: list[TaskFile]


@dataclass(frozen=True, slots=True)
class Dedup:
    by: frozenset[str]
    #: "skip" or "replace" ("overwrite" is normalised to "replace").
    strategy: str


@dataclass(frozen=True, slots=True)
class IncomingFile:
    """One validated file of an upload, staged on disk or, when small, in memory."""

    dest: str
    staged: Path | bytes
    size: int
    md5: str


@dataclass(frozen=True, slots=True)
class FileResult:
    success: bool
    file_id: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"success": self.success, "file_id": self.file_id, "message": self.message}


@dataclass(frozen=True, slots=True)
class _Decision:
    file: IncomingFile
    file_id: str
    #: True: an equal file is already stored and ``dedup.strategy`` is skip.
    skip: bool


class MoiStore(SqliteStore):
    """Volumes, stored files and tasks in SQLite, plus the bodies (small ones in SQLite too, see above).

    Synchronous on purpose: every method runs under one lock, in a worker thread or briefly on the loop
    (``SqliteStore.run``); uploads are committed in groups (``SqliteStore.grouped``). The lock also makes
    each upload's check-then-write atomic against concurrent uploads.
    """

    def __init__(self, data_dir: Path, seed: int | None) -> None:
        super().__init__(data_dir, ".emulator.db", _SCHEMA + CONNECTORS_SCHEMA + LOAD_SCHEMA)
        self._db.create_function(
            "parent_of", 2, lambda volume, path: folder_id(volume, posixpath.dirname(path)), deterministic=True
        )
        # A data dir from before the catalog: each stored path becomes one catalog file.
        with self._transaction() as db:
            db.execute(
                f"INSERT OR IGNORE INTO catalog_files ({_CATALOG_COLUMNS})"
                " SELECT file_id, volume_id, path, size, md5, created_ms, updated_ms FROM stored_files"
                " WHERE NOT EXISTS (SELECT 1 FROM catalog_files c WHERE c.volume_id = stored_files.volume_id"
                " AND c.path = stored_files.path)"
            )
        self.ids = SnowflakeIds(floor=self._largest_id())
        self._known_volumes: set[str] = set()
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

    def volume(self, volume_id: str) -> Volume | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM volumes WHERE id = ?", (volume_id,)).fetchone()
        if row is None:
            return None
        self._known_volumes.add(volume_id)
        return Volume(*row)

    def volume_known(self, volume_id: str) -> bool:
        """True when ``volume`` found this volume before: volumes are never deleted, so it still exists.

        Read without the lock: an upload's volume check then never waits for (or hops around) a
        group commit holding it.
        """
        return volume_id in self._known_volumes

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
            self._put_body(db, volume_id, IncomingFile(dest, staged, size, md5))
            db.execute(
                "INSERT INTO stored_files VALUES (?, ?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT (volume_id, path) DO UPDATE SET file_id = excluded.file_id,"
                " size = excluded.size, md5 = excluded.md5, uploads = uploads + 1,"
                " updated_ms = excluded.updated_ms",
                (volume_id, dest, file_id, size, md5, now, now),
            )
            self._add_catalog_file(db, CatalogFile(file_id, volume_id, dest, size, md5, now, now))
            if also is not None:
                also(db)

    def has_stored_file(self, volume_id: str, dest: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT EXISTS (SELECT 1 FROM stored_bodies WHERE volume_id = ? AND path = ?)"
                " FROM stored_files WHERE volume_id = ? AND path = ?",
                (volume_id, dest, volume_id, dest),
            ).fetchone()
        return row is not None and (bool(row[0]) or (self.data_dir / volume_id / dest).is_file())

    def open_body(self, volume_id: str, path: str) -> BinaryIO | None:
        """A stored file's content, to read, wherever it is kept; ``None`` when the volume has no such path."""
        with self._lock:
            row = self._db.execute(
                "SELECT b.body FROM stored_files f LEFT JOIN stored_bodies b"
                " ON b.volume_id = f.volume_id AND b.path = f.path WHERE f.volume_id = ? AND f.path = ?",
                (volume_id, path),
            ).fetchone()
        if row is None:
            return None
        if row[0] is not None:
            return io.BytesIO(row[0])
        try:
            return safe_join(self.data_dir / volume_id, path).open("rb")
        except (FileNotFoundError, ValueError):
            return None

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
        files: list[IncomingFile],
        dedup: Dedup | None,
        *,
        delay_ms: int,
        fail_rate: float,
    ) -> tuple[str, list[FileResult]]:
        """Store ``files`` (already validated and staged) as one new task; all or nothing."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM volumes WHERE id = ?", (volume_id,)).fetchone() is None:
                raise ApiError(404, NOT_FOUND, f"volume {volume_id} not found")
            decisions = self._decide(db, volume_id, files, dedup)
            self._check_conflicts(db, volume_id, [d.file.dest for d in decisions if not d.skip])
            now = now_ms()
            task_id = self.ids.next_id()
            results = [self._apply(db, volume_id, task_id, d, dedup, now, delay_ms, fail_rate) for d in decisions]
            db.execute(
                "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, NULL)",
                (task_id, volume_id, json.dumps([f.dest for f in files], ensure_ascii=False), now, now),
            )
        return task_id, results

    def _decide(
        self, db: sqlite3.Connection, volume_id: str, files: list[IncomingFile], dedup: Dedup | None
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
        db: sqlite3.Connection, volume_id: str, incoming: IncomingFile, by: frozenset[str]
    ) -> str | None:
        where, params = _dedup_match(volume_id, incoming, by)
        row = db.execute(f"SELECT file_id FROM stored_files WHERE {where} ORDER BY path LIMIT 1", params).fetchone()
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
        dedup: Dedup | None,
        now: int,
        delay_ms: int,
        fail_rate: float,
    ) -> FileResult:
        incoming = decision.file
        if decision.skip:
            # Nothing to process: the task entry is final at once.
            timing: tuple[int, int, int, str] = (now, now, now, "")
            result = FileResult(True, decision.file_id, "skipped: duplicate")
        else:
            self._put_body(db, volume_id, incoming)
            db.execute(
                "INSERT INTO stored_files VALUES (?, ?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT (volume_id, path) DO UPDATE SET file_id = excluded.file_id,"
                " size = excluded.size, md5 = excluded.md5, uploads = uploads + 1,"
                " updated_ms = excluded.updated_ms",
                (volume_id, incoming.dest, decision.file_id, incoming.size, incoming.md5, now, now),
            )
            if dedup is not None and dedup.strategy == "replace":
                self._replace_catalog_files(db, volume_id, incoming, dedup.by)
            self._add_catalog_file(
                db, CatalogFile(decision.file_id, volume_id, incoming.dest, incoming.size, incoming.md5, now, now)
            )
            reason = INJECTED_FAILURE if self._fails(fail_rate) else ""
            timing = (now, now + delay_ms // 2, now + delay_ms, reason)
            result = FileResult(True, decision.file_id, "uploaded")
        db.execute(
            "INSERT INTO task_files (task_id, file_id, name, size, started_ms, uploading_ms, done_ms,"
            " retrying, fail_reason) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (task_id, decision.file_id, incoming.dest, incoming.size, *timing),
        )
        return result

    @staticmethod
    def _add_catalog_file(db: sqlite3.Connection, f: CatalogFile) -> None:
        db.execute(
            f"INSERT OR REPLACE INTO catalog_files ({_CATALOG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (f.id, f.volume_id, f.path, f.size, f.md5, f.created_ms, f.updated_ms),
        )

    @staticmethod
    def _replace_catalog_files(
        db: sqlite3.Connection, volume_id: str, incoming: IncomingFile, by: frozenset[str]
    ) -> None:
        """Dedup strategy replace: the files it matches (by name and/or md5) leave the catalog."""
        where, params = _dedup_match(volume_id, incoming, by)
        db.execute(f"DELETE FROM catalog_files WHERE {where}", params)

    def _fails(self, fail_rate: float) -> bool:
        return fail_rate > 0 and self._rng.random() < fail_rate

    def _put_body(self, db: sqlite3.Connection, volume_id: str, incoming: IncomingFile) -> None:
        """Keep an accepted body: a small one as a row of ``stored_bodies``, others as the volume's file.

        Either way the rows saying where it is commit with the upload, and what they replace goes only
        after that commit: a crash before it leaves the previous body readable where its rows say.
        """
        key = (volume_id, incoming.dest)
        if isinstance(incoming.staged, bytes) and len(incoming.staged) <= BODY_IN_DB_MAX:
            # Was this path's body a file? Then that file goes, once the row that replaces it is committed.
            was_file = db.execute(
                "SELECT 1 FROM stored_files f WHERE volume_id = ? AND path = ? AND NOT EXISTS"
                " (SELECT 1 FROM stored_bodies b WHERE b.volume_id = f.volume_id AND b.path = f.path)",
                key,
            ).fetchone()
            db.execute("INSERT OR REPLACE INTO stored_bodies VALUES (?, ?, ?)", (*key, incoming.staged))
            if was_file:
                self.after_commit(functools.partial(_remove_body_file, self.data_dir, *key))
            return
        target = safe_join(self.data_dir / volume_id, incoming.dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(incoming.staged, Path):
            os.replace(incoming.staged, target)
        else:
            _write_new_or_replace(target, incoming.staged, self.staging_dir)
        db.execute("DELETE FROM stored_bodies WHERE volume_id = ? AND path = ?", key)

    # tasks

    def task(self, task_id: str) -> Task | None:
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

    def tasks(self) -> list[Task]:
        with self._lock:
            rows = self._db.execute(
                "SELECT t.id, t.volume_id, COALESCE(v.name, t.volume_id), t.uris, t.created_ms,"
                " t.updated_ms, t.paused_at_ms FROM tasks t LEFT JOIN volumes v ON v.id = t.volume_id"
            ).fetchall()
            files: dict[str, list[TaskFile]] = collections.defaultdict(list)
            for task_id, *values in self._db.execute(
                "SELECT task_id, file_id, name, size, started_ms, uploading_ms, done_ms, retrying,"
                " fail_reason FROM task_files ORDER BY seq"
            ):
                files[task_id].append(_task_file(values))
            return [self._task_from_row(row, files.get(row[0], [])) for row in rows]

    def newest_tasks(
        self, limit: int, *, descending: bool, by_id: bool = False, offset: int = 0
    ) -> tuple[list[Task], int]:
        """``limit`` upload tasks from the ``offset``-th on, in ``/task/list``'s order for ``created_at``
        (second, then id) or, ``by_id``, for ``id``, and how many there are: one page, without building
        every task.

        Read through the ``tasks_by_second`` / ``tasks_by_id`` indexes, and the page's files in one query:
        a poll used to sort every task and then ask each listed task's files on its own (6-8 ms of the
        emulator's CPU per page of 100 among 2,000 tasks, measured).
        """
        direction = "DESC" if descending else "ASC"
        order = f"ORDER BY {'' if by_id else f't.created_ms / 1000 {direction}, '}CAST(t.id AS INTEGER) {direction}"
        with self._lock:
            total = int(self._db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
            rows = self._db.execute(
                "SELECT t.id, t.volume_id, COALESCE(v.name, t.volume_id), t.uris, t.created_ms,"
                " t.updated_ms, t.paused_at_ms FROM tasks t LEFT JOIN volumes v ON v.id = t.volume_id"
                f" {order} LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
            files: dict[str, list[TaskFile]] = collections.defaultdict(list)
            for task_id, *values in self._db.execute(
                "SELECT task_id, file_id, name, size, started_ms, uploading_ms, done_ms, retrying, fail_reason"
                f" FROM task_files WHERE task_id IN (SELECT t.id FROM tasks t {order} LIMIT ? OFFSET ?)"
                " ORDER BY seq",
                (limit, offset),
            ):
                files[task_id].append(_task_file(values))
        return [self._task_from_row(row, files.get(row[0], [])) for row in rows], total

    def _task_files(self, task_id: str) -> list[TaskFile]:
        rows = self._db.execute(
            "SELECT file_id, name, size, started_ms, uploading_ms, done_ms, retrying, fail_reason"
            " FROM task_files WHERE task_id = ? ORDER BY seq",
            (task_id,),
        ).fetchall()
        return [_task_file(row) for row in rows]

    @staticmethod
    def _task_from_row(row: tuple[Any, ...], files: list[TaskFile]) -> Task:
        task_id, volume_id, volume_name, uris, created_ms, updated_ms, paused_at_ms = row
        return Task(task_id, volume_id, volume_name, json.loads(uris), created_ms, updated_ms, paused_at_ms, files)

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
                if f.file_id in wanted and file_status(f, now, task.paused_at_ms) is FileStatus.FAILED:
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

    def _locked_task(self, db: sqlite3.Connection, task_id: str) -> Task:
        row = db.execute(
            "SELECT id, volume_id, volume_id, uris, created_ms, updated_ms, paused_at_ms FROM tasks WHERE id = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            raise ApiError(404, NOT_FOUND, f"task {task_id} not found")
        return self._task_from_row(row, self._task_files(task_id))

    @staticmethod
    def _task_file_rows(db: sqlite3.Connection, task_id: str) -> list[tuple[int, TaskFile]]:
        rows = db.execute(
            "SELECT seq, file_id, name, size, started_ms, uploading_ms, done_ms, retrying, fail_reason"
            " FROM task_files WHERE task_id = ? ORDER BY seq",
            (task_id,),
        ).fetchall()
        return [(row[0], _task_file(row[1:])) for row in rows]

    # the catalog

    def catalog_page(
        self,
        volume_id: str,
        *,
        where: str,
        params: list[Any],
        order_by: str,
        descending: bool,
        offset: int,
        limit: int,
    ) -> tuple[int, list[CatalogFile]]:
        """One page of a volume's catalog files matching ``where`` (built by the handler from its filters)."""
        direction = "DESC" if descending else "ASC"
        condition = f"volume_id = ? AND ({where})"
        with self._lock:
            total = self._db.execute(
                f"SELECT COUNT(*) FROM catalog_files WHERE {condition}", [volume_id, *params]
            ).fetchone()[0]
            rows = self._db.execute(
                f"SELECT {_CATALOG_COLUMNS} FROM catalog_files WHERE {condition}"
                f" ORDER BY {order_by} {direction}, CAST(id AS INTEGER) {direction} LIMIT ? OFFSET ?",
                [volume_id, *params, limit, offset],
            ).fetchall()
        return int(total), [CatalogFile(*row) for row in rows]

    def delete_catalog_file(self, file_id: str) -> None:
        """Remove one file from its volume; ``ApiError`` 404 when no volume has it.

        The by-path summary follows: a path whose last file is gone leaves ``stored_files`` with its body;
        one with other files left points at the newest of them.
        """
        with self._transaction() as db:
            row = db.execute(f"SELECT {_CATALOG_COLUMNS} FROM catalog_files WHERE id = ?", (file_id,)).fetchone()
            if row is None:
                raise ApiError(404, NOT_FOUND, f"file {file_id} not found")
            gone = CatalogFile(*row)
            db.execute("DELETE FROM catalog_files WHERE id = ?", (file_id,))
            newest = db.execute(
                f"SELECT {_CATALOG_COLUMNS} FROM catalog_files WHERE volume_id = ? AND path = ?"
                " ORDER BY created_ms DESC, CAST(id AS INTEGER) DESC LIMIT 1",
                (gone.volume_id, gone.path),
            ).fetchone()
            if newest is None:
                db.execute("DELETE FROM stored_files WHERE volume_id = ? AND path = ?", (gone.volume_id, gone.path))
                db.execute("DELETE FROM stored_bodies WHERE volume_id = ? AND path = ?", (gone.volume_id, gone.path))
            else:
                keep = CatalogFile(*newest)
                db.execute(
                    "UPDATE stored_files SET file_id = ?, size = ?, md5 = ? WHERE volume_id = ? AND path = ?"
                    " AND file_id = ?",
                    (keep.id, keep.size, keep.md5, gone.volume_id, gone.path, gone.id),
                )
        if newest is None:
            _remove_body_file(self.data_dir, gone.volume_id, gone.path)

    def catalog_files(self) -> list[tuple[CatalogFile, FileStatus | None]]:
        """Every catalog file with the status of its newest upload-task entry (``None``: loaded by a load
        task, which stores a file only once it succeeded)."""
        now = now_ms()
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_CATALOG_COLUMNS} FROM catalog_files ORDER BY volume_id, path, created_ms, id"
            ).fetchall()
            out = []
            for row in rows:
                f = CatalogFile(*row)
                entry = self._db.execute(
                    "SELECT tf.file_id, tf.name, tf.size, tf.started_ms, tf.uploading_ms, tf.done_ms, tf.retrying,"
                    " tf.fail_reason, t.paused_at_ms FROM task_files tf JOIN tasks t ON t.id = tf.task_id"
                    " WHERE tf.file_id = ? ORDER BY tf.seq DESC LIMIT 1",
                    (f.id,),
                ).fetchone()
                status = None if entry is None else file_status(_task_file(entry[:8]), now, entry[8])
                out.append((f, status))
        return out

    # test hooks

    def stored_files(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT volume_id, path, size, md5, uploads FROM stored_files ORDER BY volume_id, path"
            ).fetchall()
        return [dict(zip(("volume_id", "path", "size", "md5", "uploads"), row, strict=True)) for row in rows]


def _remove_body_file(data_dir: Path, volume_id: str, path: str) -> None:
    """Remove a path's body file, if it has one (its body may be a row of ``stored_bodies`` instead).

    Runs after a commit, so it never raises: a file it could not remove is a leftover the rows ignore."""
    with suppress(OSError, ValueError):
        safe_join(data_dir / volume_id, path).unlink()


def _write_new_or_replace(target: Path, body: bytes, staging_dir: Path) -> None:
    """Write a small body kept in memory to ``target``, never leaving a stored file half replaced.

    A new path is written in place (no staging file, no rename: the cheap case, by far the most common);
    if the emulator dies mid-write the half-written file has no row, so it is not a stored file and the
    next upload of that path replaces it. An existing file is replaced as a staged body is, by a rename.
    """
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        staged = staging_dir / f"{os.getpid()}-{next(_REPLACEMENTS)}.part"
        try:
            staged.write_bytes(body)
            os.replace(staged, target)
        finally:
            with suppress(FileNotFoundError):
                staged.unlink()
        return
    with os.fdopen(fd, "wb") as out:
        out.write(body)


#: Names for replacement bodies in staging, unique within the process (the pid tells emulators apart).
_REPLACEMENTS = itertools.count()


def _dedup_match(volume_id: str, incoming: IncomingFile, by: frozenset[str]) -> tuple[str, list[str]]:
    """SQL matching the files of a volume that ``dedup.by`` calls equal to ``incoming`` (name, md5 or both)."""
    conditions, params = ["volume_id = ?"], [volume_id]
    if "name" in by:
        conditions.append("path = ?")
        params.append(incoming.dest)
    if "md5" in by:
        conditions.append("md5 = ?")
        params.append(incoming.md5)
    return " AND ".join(conditions), params


def _task_file(values: tuple[Any, ...] | list[Any]) -> TaskFile:
    file_id, name, size, started_ms, uploading_ms, done_ms, retrying, fail_reason = values
    return TaskFile(file_id, name, size, started_ms, uploading_ms, done_ms, bool(retrying), fail_reason)


def file_status(f: TaskFile, now: int, paused_at: int | None) -> FileStatus:
    if paused_at is not None and f.done_ms > paused_at:
        return FileStatus.PAUSED
    if f.done_ms <= now:
        return FileStatus.FAILED if f.fail_reason else FileStatus.SUCCESS
    if f.retrying:
        return FileStatus.RETRYING
    return FileStatus.UPLOADING if f.uploading_ms <= now else FileStatus.WAITING
