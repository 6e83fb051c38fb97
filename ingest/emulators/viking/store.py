"""The VikingDB emulator's persistent state: knowledge bases (collections), documents and download tasks.

SQLite in ``<data_dir>/.viking.db`` plus document bodies under ``<data_dir>/docs/<resource_id>/``, so a
restarted emulator answers for everything it accepted before. Processing is computed from timestamps
when asked (no background work): a document is processing until ``done_ms``, then done, or failed when
it carries a ``failed_code``. A deleted document shows ``process_status`` 5 until ``deleted_ms``, then is
gone. Every method is synchronous and runs in a worker thread under one lock, which also makes each
check-then-write (the document limit, overwrites) atomic against concurrent requests.
"""

from __future__ import annotations

import enum
import json
import os
import posixpath
import secrets
import sqlite3
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.emulators.kit.common import ApiError, now_ms
from ingest.emulators.kit.documents import DocState, document_entry
from ingest.emulators.kit.store import SqliteStore

__all__ = [
    "COLLECTION_EXISTS",
    "COLLECTION_NOT_EXIST",
    "DOC_IS_FULL",
    "DOC_NOT_EXIST",
    "INVALID_REQUEST",
    "Collection",
    "Doc",
    "DocFate",
    "NewDoc",
    "ProcessStatus",
    "Task",
    "VikingStore",
]

# Error codes (API-NOTES section 2, "Error codes"); HTTP statuses as documented.
INVALID_REQUEST = 1000003
COLLECTION_EXISTS = 1000004
COLLECTION_NOT_EXIST = 1000005
DOC_NOT_EXIST = 1001001
DOC_IS_FULL = 1001010


class ProcessStatus(enum.IntEnum):
    """``status.process_status`` of a document: 0 done, 1 failed, 5 deleting, anything else processing.

    The documents name no value for "processing"; the emulator says 2.
    """

    DONE = 0
    FAILED = 1
    PROCESSING = 2
    DELETING = 5


_DOC_STATE: dict[ProcessStatus, DocState] = {
    ProcessStatus.DONE: "done",
    ProcessStatus.FAILED: "failed",
    ProcessStatus.PROCESSING: "pending",
    ProcessStatus.DELETING: "deleting",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    resource_id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    settings TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (project, name)
);
CREATE TABLE IF NOT EXISTS docs (
    resource_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    doc_name TEXT NOT NULL,
    doc_type TEXT NOT NULL,
    add_type TEXT NOT NULL,
    tos_path TEXT NOT NULL,
    url TEXT NOT NULL,
    meta TEXT NOT NULL,
    description TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    stored INTEGER NOT NULL,
    uploads INTEGER NOT NULL,
    adds INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    done_ms INTEGER NOT NULL,
    failed_code INTEGER NOT NULL,
    failed_msg TEXT NOT NULL,
    deleted_ms INTEGER,
    PRIMARY KEY (resource_id, doc_id)
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    resource_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    done_ms INTEGER NOT NULL,
    fails INTEGER NOT NULL
);
"""

_DOC_COLUMNS = (
    "resource_id, doc_id, doc_name, doc_type, add_type, tos_path, url, meta, description, path, size, md5,"
    " stored, uploads, adds, created_ms, updated_ms, done_ms, failed_code, failed_msg, deleted_ms"
)


@dataclass(frozen=True, slots=True)
class Collection:
    resource_id: str
    project: str
    name: str
    description: str
    settings: dict[str, Any]
    created_ms: int
    updated_ms: int


@dataclass(frozen=True, slots=True)
class Doc:
    resource_id: str
    doc_id: str
    doc_name: str
    doc_type: str
    add_type: str
    tos_path: str
    url: str
    #: The ``meta`` list as a JSON string ("[]" when none), as ``doc/info`` returns it.
    meta: str
    description: str
    #: The source path the client recorded (object metadata), for the test hook.
    path: str
    size: int
    md5: str
    #: Whether a body was fetched and kept (not when the download failed).
    stored: bool
    #: Times this doc_id was stored by ``doc/add``, not counting re-adds of a document whose processing
    #: had failed: re-adding is the platform's only way to process a failed document again (as MOI's
    #: ``/task/retry``), not a second copy. A count above 1 means a document was sent twice.
    uploads: int
    #: Every ``doc/add`` of this doc_id, retries included.
    adds: int
    created_ms: int
    updated_ms: int
    done_ms: int
    failed_code: int
    failed_msg: str
    deleted_ms: int | None

    def status(self, now: int) -> ProcessStatus:
        if self.deleted_ms is not None:
            return ProcessStatus.DELETING
        if now < self.done_ms:
            return ProcessStatus.PROCESSING
        return ProcessStatus.FAILED if self.failed_code else ProcessStatus.DONE


@dataclass(frozen=True, slots=True)
class DocFate:
    """How processing of an added document ends, decided when it is added."""

    delay_ms: int
    failed_code: int = 0
    failed_msg: str = ""


@dataclass(frozen=True, slots=True)
class NewDoc:
    """A document ready to be recorded; ``staged`` holds its body (``None`` when the download failed)."""

    doc_id: str
    doc_name: str
    doc_type: str
    add_type: str
    tos_path: str
    url: str
    meta: str
    description: str
    path: str
    size: int
    md5: str
    staged: Path | None


@dataclass(frozen=True, slots=True)
class Task:
    task_id: str
    resource_id: str
    created_ms: int
    done_ms: int
    fails: bool


class VikingStore(SqliteStore):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, ".viking.db", _SCHEMA)

    def new_staging_path(self) -> Path:
        return self.staging_dir / f"{secrets.token_hex(16)}.part"

    # collections

    def create_collection(self, project: str, name: str, description: str, settings: dict[str, Any]) -> Collection:
        now = now_ms()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM collections WHERE project = ? AND name = ?", (project, name)).fetchone():
                raise ApiError(400, str(COLLECTION_EXISTS), "collection exist")
            resource_id = "kb-" + secrets.token_hex(8)
            db.execute(
                "INSERT INTO collections VALUES (?, ?, ?, ?, ?, ?, ?)",
                (resource_id, project, name, description, json.dumps(settings, ensure_ascii=False), now, now),
            )
        return Collection(resource_id, project, name, description, settings, now, now)

    def ensure_collection(self, project: str, name: str) -> None:
        with suppress(ApiError):
            self.create_collection(project, name, "", {})

    def collection(self, *, resource_id: str | None, project: str, name: str | None) -> Collection:
        """The knowledge base a request names, or ``ApiError`` 1000005."""
        with self._lock:
            if resource_id:
                row = self._db.execute("SELECT * FROM collections WHERE resource_id = ?", (resource_id,)).fetchone()
            else:
                row = self._db.execute(
                    "SELECT * FROM collections WHERE project = ? AND name = ?", (project, name)
                ).fetchone()
        if row is None or (resource_id and name and row[2] != name):
            raise ApiError(400, str(COLLECTION_NOT_EXIST), "collection not exist")
        resource, proj, coll_name, description, settings, created, updated = row
        return Collection(resource, proj, coll_name, description, json.loads(settings), created, updated)

    def doc_count(self, resource_id: str) -> int:
        with self._lock:
            return self._count(self._db, resource_id, now_ms())

    @staticmethod
    def _count(db: sqlite3.Connection, resource_id: str, now: int) -> int:
        row = db.execute(
            "SELECT COUNT(*) FROM docs WHERE resource_id = ? AND (deleted_ms IS NULL OR deleted_ms > ?)",
            (resource_id, now),
        ).fetchone()
        return int(row[0])

    # documents

    def add_doc(self, resource_id: str, doc: NewDoc, fate: DocFate, *, max_docs: int) -> Doc:
        """Record ``doc`` (overwriting one with the same id) and move its body into place; all or nothing."""
        now = now_ms()
        try:
            with self._transaction() as db:
                existing = self._doc(db, resource_id, doc.doc_id)
                live = existing is not None and not _gone(existing, now)
                if not live and self._count(db, resource_id, now) >= max_docs:
                    raise ApiError(400, str(DOC_IS_FULL), f"doc num is exceed {max_docs}")
                previous = existing if live else None
                retry = previous is not None and previous.status(now) is ProcessStatus.FAILED
                uploads = (previous.uploads if previous is not None else 0) + (0 if retry else 1)
                adds = (previous.adds if previous is not None else 0) + 1
                created = previous.created_ms if previous is not None else now
                if doc.staged is not None:
                    target = self.doc_path(resource_id, doc.doc_id)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(doc.staged, target)
                db.execute(
                    f"INSERT OR REPLACE INTO docs ({_DOC_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    (
                        resource_id, doc.doc_id, doc.doc_name, doc.doc_type, doc.add_type, doc.tos_path, doc.url,
                        doc.meta, doc.description, doc.path, doc.size, doc.md5, int(doc.staged is not None),
                        uploads, adds, created, now, now + fate.delay_ms, fate.failed_code, fate.failed_msg,
                    ),
                )  # fmt: skip
                stored = self._doc(db, resource_id, doc.doc_id)
        finally:
            if doc.staged is not None:
                with suppress(FileNotFoundError):
                    doc.staged.unlink()
        assert stored is not None
        return stored

    def doc_path(self, resource_id: str, doc_id: str) -> Path:
        # Ids are restricted to [A-Za-z0-9_-] before they get here: safe as file names.
        return self.data_dir / "docs" / resource_id / doc_id

    def doc(self, resource_id: str, doc_id: str) -> Doc:
        """A live document, or ``ApiError`` 1001001."""
        with self._lock:
            doc = self._doc(self._db, resource_id, doc_id)
        if doc is None or _gone(doc, now_ms()):
            raise ApiError(400, str(DOC_NOT_EXIST), "doc not exist")
        return doc

    @staticmethod
    def _doc(db: sqlite3.Connection, resource_id: str, doc_id: str) -> Doc | None:
        row = db.execute(
            f"SELECT {_DOC_COLUMNS} FROM docs WHERE resource_id = ? AND doc_id = ?", (resource_id, doc_id)
        ).fetchone()
        return None if row is None else _doc_from_row(row)

    def docs(self, resource_id: str, doc_ids: list[str] | None) -> list[Doc]:
        """Live documents, newest first (by last add), optionally only ``doc_ids``."""
        now = now_ms()
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_DOC_COLUMNS} FROM docs WHERE resource_id = ? ORDER BY updated_ms DESC, doc_id",
                (resource_id,),
            ).fetchall()
        wanted = None if doc_ids is None else set(doc_ids)
        docs = [_doc_from_row(row) for row in rows]
        return [d for d in docs if not _gone(d, now) and (wanted is None or d.doc_id in wanted)]

    def delete_doc(self, resource_id: str, doc_id: str, delay_ms: int) -> None:
        """Start deleting: the document shows "deleting" for ``delay_ms``, then is gone with its body."""
        now = now_ms()
        with self._transaction() as db:
            doc = self._doc(db, resource_id, doc_id)
            if doc is None or _gone(doc, now):
                raise ApiError(400, str(DOC_NOT_EXIST), "doc not exist")
            if doc.deleted_ms is None:
                db.execute(
                    "UPDATE docs SET deleted_ms = ? WHERE resource_id = ? AND doc_id = ?",
                    (now + delay_ms, resource_id, doc_id),
                )
        if delay_ms == 0:
            self.purge()

    def purge(self) -> None:
        """Forget documents whose deletion finished, and remove their bodies."""
        now = now_ms()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT resource_id, doc_id FROM docs WHERE deleted_ms IS NOT NULL AND deleted_ms <= ?", (now,)
            ).fetchall()
            db.execute("DELETE FROM docs WHERE deleted_ms IS NOT NULL AND deleted_ms <= ?", (now,))
        for resource_id, doc_id in rows:
            with suppress(FileNotFoundError):
                self.doc_path(resource_id, doc_id).unlink()

    # download tasks

    def create_task(self, resource_id: str, delay_ms: int, *, fails: bool) -> Task:
        now = now_ms()
        task = Task(
            str(time.time_ns() // 1000 * 1000 + secrets.randbelow(1000)), resource_id, now, now + delay_ms, fails
        )
        with self._transaction() as db:
            db.execute(
                "INSERT INTO tasks VALUES (?, ?, ?, ?, ?)",
                (task.task_id, task.resource_id, task.created_ms, task.done_ms, int(task.fails)),
            )
        return task

    def task(self, task_id: str) -> Task | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else Task(row[0], row[1], row[2], row[3], bool(row[4]))

    # test hooks

    def stored_docs(self) -> list[Doc]:
        now = now_ms()
        with self._lock:
            rows = self._db.execute(f"SELECT {_DOC_COLUMNS} FROM docs ORDER BY resource_id, path, doc_id").fetchall()
        return [d for d in map(_doc_from_row, rows) if d.stored and not _gone(d, now)]

    def document_view(self) -> list[dict[str, Any]]:
        """``/_emulator/documents``: every document not yet gone (deleting ones included), oldest first."""
        kbs = self.collections()
        now = now_ms()
        with self._lock:
            rows = self._db.execute(f"SELECT {_DOC_COLUMNS} FROM docs ORDER BY created_ms, doc_id").fetchall()
        return [
            document_entry(
                doc_id=d.doc_id,
                name=d.doc_name,
                folder=posixpath.dirname(d.path),
                md5=d.md5,
                size=d.size,
                created_ms=d.created_ms,
                state=_DOC_STATE[d.status(now)],
                path=d.path,
                collection=kbs[d.resource_id].name if d.resource_id in kbs else "",
                resource_id=d.resource_id,
            )
            for d in map(_doc_from_row, rows)
            if not _gone(d, now)
        ]

    def collections(self) -> dict[str, Collection]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM collections").fetchall()
        return {row[0]: Collection(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6]) for row in rows}


def _gone(doc: Doc, now: int) -> bool:
    return doc.deleted_ms is not None and doc.deleted_ms <= now


def _doc_from_row(row: tuple[Any, ...]) -> Doc:
    values = list(row)
    values[12] = bool(values[12])
    return Doc(*values)
