"""The Baidu Keyue emulator's persistent state: knowledge directories, documents and their bodies.

Everything lives in SQLite (``<data_dir>/.emulator.db``) and ``<data_dir>/documents/<id>``, so a
restarted emulator still knows every directory, document and learning state. Learning progress is
computed from timestamps when asked (no background work). Synchronous on purpose: every method runs
in a worker thread under one lock, which also makes each check-then-write atomic.

The directory tree has one version number (the "directory list data version" of code 4000526): every
listed directory carries it, and a create or update must quote it; each change increments it.
"""

from __future__ import annotations

import base64
import os
import random
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.emulators.kit.common import ApiError, SnowflakeIds, now_ms
from ingest.emulators.kit.documents import DocState, document_entry
from ingest.emulators.kit.store import SqliteStore

__all__ = [
    "DELETE_FAILED",
    "INVALID",
    "ROOT_DIR",
    "VERSION_CONFLICT",
    "Directory",
    "Document",
    "KeyueStore",
    "LearnStatus",
    "invalid",
]

#: The documented "request rejected" code; its documented message is in ``MESSAGES``.
INVALID = 4002012
#: The documented directory version conflict.
VERSION_CONFLICT = 4000526
#: The documented failure of ``batchDelete`` ("文档删除失败"): the emulator answers it for ids it does not know.
DELETE_FAILED = 4007283
#: The default directory every agent has; it is never listed and cannot be renamed.
ROOT_DIR = "0"
#: Directory names: the real limit is undocumented; long enough for any local folder name.
MAX_DIR_NAME = 255


class LearnStatus:
    """``learnStatus`` of ``/llm/document/list`` (API-NOTES section 3)."""

    FAILED = -1
    LEARNING = 0
    LEARNED = 1
    ENHANCING = 2


def invalid(tip: str, *, http_status: int = 200) -> ApiError:
    """The documented failure envelope (code 4002012); ``tip`` says which field is wrong and why."""
    return ApiError(http_status, str(INVALID), tip)


@dataclass(frozen=True, slots=True)
class Directory:
    id: str
    name: str
    parent_id: str
    sort: int


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    dir_id: str
    name: str
    size: int
    md5: str
    word_number: int
    task_extend: str
    knowledge_public: int
    user_id: str
    user_name: str
    file_key: str
    created_ms: int
    updated_ms: int
    learn_done_ms: int
    enhance_done_ms: int
    fail_reason: str
    retrains: int

    def learn_status(self, now: int) -> int:
        if now < self.learn_done_ms:
            return LearnStatus.LEARNING
        if self.fail_reason:
            return LearnStatus.FAILED
        return LearnStatus.ENHANCING if now < self.enhance_done_ms else LearnStatus.LEARNED


@dataclass(frozen=True, slots=True)
class Timing:
    """How long learning takes and how often it fails, as set when a document (re)starts learning."""

    learn_delay_ms: int
    enhance_delay_ms: int
    fail_rate: float


@dataclass(frozen=True, slots=True)
class Incoming:
    """A validated import, its body already staged on disk."""

    dir_id: str
    name: str
    staged: Path
    size: int
    md5: str
    word_number: int
    task_extend: str
    knowledge_public: int
    user_id: str
    user_name: str


_DOC_STATE: dict[int, DocState] = {
    LearnStatus.FAILED: "failed",
    LearnStatus.LEARNING: "pending",
    LearnStatus.ENHANCING: "pending",
    LearnStatus.LEARNED: "done",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS directories (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    sort INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS directories_parent ON directories (parent_id, sort);
CREATE TABLE IF NOT EXISTS documents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    dir_id TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    word_number INTEGER NOT NULL,
    task_extend TEXT NOT NULL,
    knowledge_public INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    file_key TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    learn_done_ms INTEGER NOT NULL,
    enhance_done_ms INTEGER NOT NULL,
    fail_reason TEXT NOT NULL,
    retrains INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS documents_dir ON documents (dir_id, seq);
"""

_DOC_COLUMNS = (
    "id, dir_id, name, size, md5, word_number, task_extend, knowledge_public, user_id, user_name, file_key,"
    " created_ms, updated_ms, learn_done_ms, enhance_done_ms, fail_reason, retrains"
)

#: Reason recorded for a document failed by the fail rate.
INJECTED_FAILURE = "文档学习失败 (document learning failed: injected fault)"


class KeyueStore(SqliteStore):
    """Directories, documents and bodies of one emulated Keyue agent."""

    def __init__(self, data_dir: Path, seed: int | None) -> None:
        super().__init__(data_dir, ".emulator.db", _SCHEMA)
        self.documents_dir = data_dir / "documents"
        self.documents_dir.mkdir(parents=True, exist_ok=True)
        row = self._db.execute("SELECT MAX(CAST(id AS INTEGER)) FROM directories").fetchone()
        self.ids = SnowflakeIds(floor=int(row[0] or 0))
        # Learning fates are drawn under the lock, so the sequence is reproducible for sequential requests.
        self._rng = random.Random(None if seed is None else f"keyue-learning-{seed}")
        with self._transaction() as db:
            self.agent_id = self._meta(db, "agent_id", lambda: str(uuid.uuid4()))
            self.tenant_id = self._meta(db, "tenant_id", lambda: str(random.SystemRandom().randrange(10**15, 10**16)))

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str, default: Any) -> str:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return str(row[0])
        value = str(default())
        db.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
        return value

    # ----- directories -------------------------------------------------------------------------------

    @staticmethod
    def _version(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT value FROM meta WHERE key = 'tree_version'").fetchone()
        return int(row[0]) if row else 0

    def _bump_version(self, db: sqlite3.Connection, quoted: int) -> int:
        """Check the version the client quoted, then move the tree to the next version."""
        current = self._version(db)
        if quoted != current:
            raise ApiError(200, str(VERSION_CONFLICT), f"version {quoted} is stale; the directory list is at {current}")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('tree_version', ?)", (str(current + 1),))
        return current + 1

    def directories(self) -> tuple[list[Directory], int]:
        """Every directory (parents before children, siblings by ``sort``) and the tree version."""
        with self._lock:
            rows = self._db.execute("SELECT id, name, parent_id, sort FROM directories ORDER BY sort, id").fetchall()
            return [Directory(*row) for row in rows], self._version(self._db)

    def directory_exists(self, dir_id: str) -> bool:
        if dir_id == ROOT_DIR:
            return True
        with self._lock:
            return self._db.execute("SELECT 1 FROM directories WHERE id = ?", (dir_id,)).fetchone() is not None

    @staticmethod
    def _check_sibling_name(db: sqlite3.Connection, parent_id: str, name: str, own_id: str | None = None) -> None:
        row = db.execute(
            "SELECT id FROM directories WHERE parent_id = ? AND name = ? AND id != ?", (parent_id, name, own_id or "")
        ).fetchone()
        if row is not None:
            raise invalid(f"a directory named {name!r} already exists in directory {parent_id} (id {row[0]})")

    def create_directory(self, name: str, parent_id: str, version: int) -> tuple[Directory, int]:
        with self._transaction() as db:
            if (
                parent_id != ROOT_DIR
                and db.execute("SELECT 1 FROM directories WHERE id = ?", (parent_id,)).fetchone() is None
            ):
                raise invalid(f"parentId {parent_id!r} is not an existing directory")
            new_version = self._bump_version(db, version)
            self._check_sibling_name(db, parent_id, name)
            row = db.execute(
                "SELECT COALESCE(MAX(sort), 0) FROM directories WHERE parent_id = ?", (parent_id,)
            ).fetchone()
            directory = Directory(self.ids.next_id(), name, parent_id, int(row[0]) + 1)
            now = now_ms()
            db.execute(
                "INSERT INTO directories VALUES (?, ?, ?, ?, ?, ?)",
                (directory.id, name, parent_id, directory.sort, now, now),
            )
        return directory, new_version

    def update_directory(self, dir_id: str, name: str, version: int) -> int:
        with self._transaction() as db:
            row = db.execute("SELECT parent_id FROM directories WHERE id = ?", (dir_id,)).fetchone()
            if row is None:
                if dir_id == ROOT_DIR:
                    raise invalid("id 0 is the default directory, which cannot be renamed")
                raise invalid(f"id {dir_id!r} is not an existing directory")
            new_version = self._bump_version(db, version)
            self._check_sibling_name(db, str(row[0]), name, own_id=dir_id)
            db.execute("UPDATE directories SET name = ?, updated_ms = ? WHERE id = ?", (name, now_ms(), dir_id))
        return new_version

    # ----- documents ---------------------------------------------------------------------------------

    def _fails(self, fail_rate: float) -> bool:
        return fail_rate > 0 and self._rng.random() < fail_rate

    def commit_import(self, incoming: Incoming, timing: Timing) -> Document:
        """Store one imported document and start its learning. The body is moved, never copied."""
        with self._transaction() as db:
            if incoming.dir_id != ROOT_DIR and (
                db.execute("SELECT 1 FROM directories WHERE id = ?", (incoming.dir_id,)).fetchone() is None
            ):
                raise invalid(f"dirId {incoming.dir_id!r} is not an existing directory")
            now = now_ms()
            doc_id = str(uuid.uuid4())
            learn_done = now + timing.learn_delay_ms
            document = Document(
                id=doc_id,
                dir_id=incoming.dir_id,
                name=incoming.name,
                size=incoming.size,
                md5=incoming.md5,
                word_number=incoming.word_number,
                task_extend=incoming.task_extend,
                knowledge_public=incoming.knowledge_public,
                user_id=incoming.user_id,
                user_name=incoming.user_name,
                file_key=base64.b64encode(f"bos_{uuid.uuid4()}".encode()).decode(),
                created_ms=now,
                updated_ms=now,
                learn_done_ms=learn_done,
                enhance_done_ms=learn_done + timing.enhance_delay_ms,
                fail_reason=INJECTED_FAILURE if self._fails(timing.fail_rate) else "",
                retrains=0,
            )
            os.replace(incoming.staged, self.documents_dir / doc_id)
            db.execute(
                f"INSERT INTO documents ({_DOC_COLUMNS}) VALUES ({', '.join('?' * 17)})",
                (
                    document.id, document.dir_id, document.name, document.size, document.md5, document.word_number,
                    document.task_extend, document.knowledge_public, document.user_id, document.user_name,
                    document.file_key, document.created_ms, document.updated_ms, document.learn_done_ms,
                    document.enhance_done_ms, document.fail_reason, document.retrains,
                ),
            )  # fmt: skip
        return document

    def list_documents(
        self, *, dir_id: str | None, keyword: str | None, knowledge_public: int | None, offset: int, limit: int
    ) -> tuple[int, list[Document]]:
        """Documents newest first, filtered by directory (not recursive), name keyword and visibility."""
        conditions, params = ["1 = 1"], []
        if dir_id is not None:
            conditions.append("dir_id = ?")
            params.append(dir_id)
        if keyword:
            conditions.append("instr(lower(name), lower(?)) > 0")
            params.append(keyword)
        if knowledge_public is not None:
            conditions.append("knowledge_public = ?")
            params.append(str(knowledge_public))
        where = " AND ".join(conditions)
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM documents WHERE {where}", params).fetchone()[0]
            rows = self._db.execute(
                f"SELECT {_DOC_COLUMNS} FROM documents WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
        return int(total), [Document(*row) for row in rows]

    def retrain(self, doc_ids: list[str], timing: Timing) -> None:
        """Start learning again for the failed documents among ``doc_ids``; others are left alone."""
        with self._transaction() as db:
            now = now_ms()
            for doc_id in doc_ids:
                row = db.execute(f"SELECT {_DOC_COLUMNS} FROM documents WHERE id = ?", (doc_id,)).fetchone()
                if row is None:
                    raise invalid(f"documentIds: document {doc_id!r} does not exist")
                if Document(*row).learn_status(now) != LearnStatus.FAILED:
                    continue
                learn_done = now + timing.learn_delay_ms
                db.execute(
                    "UPDATE documents SET learn_done_ms = ?, enhance_done_ms = ?, fail_reason = ?,"
                    " retrains = retrains + 1, updated_ms = ? WHERE id = ?",
                    (
                        learn_done,
                        learn_done + timing.enhance_delay_ms,
                        INJECTED_FAILURE if self._fails(timing.fail_rate) else "",
                        now,
                        doc_id,
                    ),
                )

    def delete_documents(self, doc_ids: list[str]) -> None:
        """Delete documents and their bodies; all or nothing: an unknown id fails the request (4007283)."""
        with self._transaction() as db:
            for doc_id in doc_ids:
                if db.execute("SELECT 1 FROM documents WHERE id = ?", (doc_id,)).fetchone() is None:
                    raise ApiError(200, str(DELETE_FAILED), f"documentIds: document {doc_id!r} does not exist")
            db.executemany("DELETE FROM documents WHERE id = ?", [(doc_id,) for doc_id in doc_ids])
        for doc_id in doc_ids:
            (self.documents_dir / doc_id).unlink(missing_ok=True)

    # ----- test hooks --------------------------------------------------------------------------------

    def dir_paths(self) -> dict[str, str]:
        """Directory id -> its path from the default directory ("" for the default directory itself)."""
        directories, _ = self.directories()
        by_id = {d.id: d for d in directories}
        paths = {ROOT_DIR: ""}

        def path_of(dir_id: str, depth: int = 0) -> str:
            if dir_id in paths:
                return paths[dir_id]
            d = by_id.get(dir_id)
            if d is None or depth > len(by_id):
                return f"<{dir_id}>"
            parent = path_of(d.parent_id, depth + 1)
            paths[dir_id] = f"{parent}/{d.name}" if parent else d.name
            return paths[dir_id]

        for d in directories:
            path_of(d.id)
        return paths

    def document_view(self) -> list[dict[str, Any]]:
        """``/_emulator/documents``: every document, oldest first, with its directory's path as ``folder``."""
        paths = self.dir_paths()
        with self._lock:
            rows = self._db.execute(f"SELECT {_DOC_COLUMNS} FROM documents ORDER BY seq").fetchall()
        now = now_ms()
        view = []
        for d in (Document(*row) for row in rows):
            status = d.learn_status(now)
            view.append(
                document_entry(
                    doc_id=d.id,
                    name=d.name,
                    folder=paths.get(d.dir_id, f"<{d.dir_id}>"),
                    md5=d.md5,
                    size=d.size,
                    created_ms=d.created_ms,
                    state=_DOC_STATE.get(status, "pending"),
                    dirId=d.dir_id,
                    learnStatus=status,
                )
            )
        return view

    def stored_files(self, under: str = ROOT_DIR) -> list[dict[str, Any]]:
        """One entry per ``directory path/name`` below ``under``: the newest document's size, md5,
        id and learning state, and how many documents were imported at that path."""
        directories, _ = self.directories()
        by_id = {d.id: d for d in directories}

        def path_of(dir_id: str) -> str | None:
            parts: list[str] = []
            while dir_id != under:
                if dir_id == ROOT_DIR or dir_id not in by_id:
                    return None  # not below ``under``
                parts.append(by_id[dir_id].name)
                dir_id = by_id[dir_id].parent_id
            return "/".join(reversed(parts))

        with self._lock:
            rows = self._db.execute(f"SELECT {_DOC_COLUMNS} FROM documents ORDER BY seq").fetchall()
        now = now_ms()
        files: dict[str, dict[str, Any]] = {}
        for document in (Document(*row) for row in rows):
            folder = path_of(document.dir_id)
            if folder is None:
                continue
            path = f"{folder}/{document.name}" if folder else document.name
            uploads = files[path]["uploads"] + 1 if path in files else 1
            files[path] = {
                "path": path,
                "size": document.size,
                "md5": document.md5,
                "uploads": uploads,
                "id": document.id,
                "dirId": document.dir_id,
                "learnStatus": document.learn_status(now),
            }
        return [files[path] for path in sorted(files)]

    def document_body(self, doc_id: str) -> Path:
        return self.documents_dir / doc_id


def document_json(document: Document, agent_id: str, now: int) -> dict[str, Any]:
    """One entry of ``/llm/document/list``."""
    status = document.learn_status(now)
    return {
        "_effect": True,
        "agentId": agent_id,
        "id": document.id,
        "name": document.name,
        "size": document.size,
        "wordNumber": document.word_number if status in (LearnStatus.LEARNED, LearnStatus.ENHANCING) else 0,
        "learnStatus": status,
        "dirId": document.dir_id,
        "fileKey": document.file_key,
        "taskExtend": document.task_extend,
        "knowledgePublic": document.knowledge_public,
        "errorMsg": document.fail_reason if status == LearnStatus.FAILED else None,
        "created": format_time(document.created_ms),
        "updated": format_time(max(document.updated_ms, min(now, document.learn_done_ms))),
    }


def format_time(ms: int) -> str:
    """``2024-06-04 10:50:24`` in Beijing time, as Keyue writes timestamps."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000 + 8 * 3600))
