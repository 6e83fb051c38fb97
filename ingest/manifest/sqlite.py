"""The manifest: the single source of truth for "what happened to this file".

SQLite in WAL mode. One row per file, one per run, and a few ``meta`` entries binding the manifest to
one source and one destination. Every write goes through one writer task that commits in groups:
callers ``await`` their operation and return once the transaction that carries it is committed, while
every operation queued during a commit rides in the next one. Under load this turns thousands of
small writes a second into a few dozen transactions.

Durability: ``synchronous=NORMAL`` in WAL mode survives the death of the process at any instant
(SIGKILL, OOM); only a power cut may lose the last transactions, and the resume logic copes with that
too, because a lost ``processing``/``done`` falls back to ``uploading``, which resumes with dedup.

The rule that decides "already done" is not here: it is ``ingest.manifest.base.decide``.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest.errors import ConfigError
from ingest.manifest.base import FileRecord
from ingest.models import FileItem, FileState, Receipt

__all__ = ["SqliteManifest"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    command TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER,
    mtime_ns INTEGER,
    md5 TEXT,
    state TEXT NOT NULL,
    remote_id TEXT,
    task_id TEXT,
    extra TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    dedup INTEGER NOT NULL DEFAULT 0,
    run_id INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_state ON files (state);
CREATE INDEX IF NOT EXISTS files_run ON files (run_id);
"""


_COLUMNS = "path, size, mtime_ns, md5, state, remote_id, task_id, extra, attempts, last_error, run_id, updated_at"


def _record(row: sqlite3.Row | tuple[Any, ...]) -> FileRecord:
    return FileRecord(
        path=row[0],
        size=row[1],
        mtime_ns=row[2],
        md5=row[3],
        state=FileState(row[4]),
        remote_id=row[5],
        task_id=row[6],
        extra=json.loads(row[7]) if row[7] else {},
        attempts=row[8],
        last_error=row[9],
        run_id=row[10],
        updated_at=row[11],
    )


# One queued write: SQL statements to run in one transaction, and who waits for their commit.
_Op = list[tuple[str, tuple[Any, ...]]]


class SqliteManifest:
    """An open manifest file. Reads are synchronous and cheap; writes go through ``writer()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The writer connection is used from worker threads, one at a time (limiter of 1).
            self._wconn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._rconn = sqlite3.connect(path, isolation_level=None)
            for conn in (self._wconn, self._rconn):
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=10000")
            self._wconn.executescript(_SCHEMA)
            version = self.get_meta("schema_version")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"manifest {path} cannot be opened ({exc}); point --manifest at a manifest file or a new path"
            ) from exc
        if version is None:
            self._wconn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(version) != SCHEMA_VERSION:
            raise ConfigError(
                f"manifest {path} has schema version {version}; this ingest reads version {SCHEMA_VERSION}"
            )
        self._send: MemoryObjectSendStream[tuple[_Op, anyio.Event]] | None = None
        self._thread_limiter = anyio.CapacityLimiter(1)
        self.commits = 0

    # ----- meta -----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._rconn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Synchronous: used before the writer starts (binding, run config)."""
        self._wconn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def bind(self, source: str, target: str) -> None:
        """Tie this manifest to one source and destination; refuse to mix runs."""
        bound_source, bound_target = self.get_meta("source"), self.get_meta("target")
        if bound_source is None and bound_target is None:
            self.set_meta("source", source)
            self.set_meta("target", target)
            return
        if (bound_source, bound_target) != (source, target):
            raise ConfigError(
                f"manifest {self.path} records {bound_source} -> {bound_target}, not {source} -> {target}; "
                "use another --manifest for a different source or destination"
            )

    # ----- runs -----------------------------------------------------------------------------------

    def start_run(self, command: str) -> int:
        cur = self._wconn.execute(
            "INSERT INTO runs (command, started_at, status) VALUES (?, ?, 'running')", (command, time.time())
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None:
        self._wconn.execute(
            "UPDATE runs SET finished_at = ?, status = ?, summary = ? WHERE id = ?",
            (time.time(), status, json.dumps(summary), run_id),
        )

    def runs(self) -> list[dict[str, Any]]:
        rows = self._rconn.execute(
            "SELECT id, command, started_at, finished_at, status, summary FROM runs ORDER BY id"
        ).fetchall()
        return [
            {
                "id": r[0],
                "command": r[1],
                "started_at": r[2],
                "finished_at": r[3],
                "status": r[4],
                "summary": json.loads(r[5]) if r[5] else None,
            }
            for r in rows
        ]

    # ----- reads ----------------------------------------------------------------------------------

    def lookup(self, path: str) -> FileRecord | None:
        row = self._rconn.execute(f"SELECT {_COLUMNS} FROM files WHERE path = ?", (path,)).fetchone()
        return None if row is None else _record(row)

    def is_empty(self) -> bool:
        return self._rconn.execute("SELECT 1 FROM files LIMIT 1").fetchone() is None

    def counts(self) -> dict[str, int]:
        found = dict(self._rconn.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
        return {state.value: int(found.get(state.value, 0)) for state in FileState}

    def iter_files(
        self, *, states: Sequence[FileState] = (), run_id: int | None = None, page: int = 1000
    ) -> Iterator[FileRecord]:
        """Every matching record in path order, read in pages so memory stays flat."""
        where: list[str] = []
        params: list[str] = []
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params.extend(s.value for s in states)
        if run_id is not None:
            where.append("run_id = ?")
            params.append(str(run_id))
        last = ""
        while True:
            clause = " AND ".join([*where, "path > ?"])
            rows = self._rconn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE {clause} ORDER BY path LIMIT ?", (*params, last, page)
            ).fetchall()
            if not rows:
                return
            yield from (_record(r) for r in rows)
            last = rows[-1][0]

    # ----- writes ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[SqliteManifest]:
        """Run the group-committing writer for the duration of the block.

        On exit (normal, error or cancellation) everything queued so far is committed before the
        block is left, so an interrupted run leaves a consistent manifest.
        """
        send, receive = anyio.create_memory_object_stream[tuple[_Op, anyio.Event]](math.inf)
        self._send = send
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write_loop, receive)
            try:
                yield self
            finally:
                self._send = None
                with anyio.CancelScope(shield=True):
                    await send.aclose()

    async def _write_loop(self, receive: MemoryObjectReceiveStream[tuple[_Op, anyio.Event]]) -> None:
        with anyio.CancelScope(shield=True):
            # Shielded: the loop ends when the stream closes, after draining, never half-way.
            async with receive:
                async for first in receive:
                    group = [first]
                    while True:
                        try:
                            group.append(receive.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    await anyio.to_thread.run_sync(self._commit, [op for op, _ in group], limiter=self._thread_limiter)
                    self.commits += 1
                    for _, done in group:
                        done.set()

    def _commit(self, ops: list[_Op]) -> None:
        conn = self._wconn
        conn.execute("BEGIN")
        try:
            for op in ops:
                for sql, params in op:
                    conn.execute(sql, params)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def _write(self, op: _Op) -> None:
        if not op:
            return
        if self._send is None:
            # Outside a writer block (status tools, tests): commit directly.
            await anyio.to_thread.run_sync(self._commit, [op], limiter=self._thread_limiter)
            return
        done = anyio.Event()
        self._send.send_nowait((op, done))
        await done.wait()

    # The operations. Each awaits the commit of the transaction that carries it.

    async def mark_uploading(self, items: Sequence[FileItem], run_id: int, *, dedup: bool) -> None:
        """The intent record: committed before any byte of these files is sent."""
        now = time.time()
        await self._write(
            [
                (
                    "INSERT INTO files (path, size, mtime_ns, state, attempts, dedup, run_id, created_at,"
                    " updated_at) VALUES (?, ?, ?, 'uploading', 1, ?, ?, ?, ?)"
                    " ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
                    " state = 'uploading', attempts = attempts + 1, dedup = excluded.dedup,"
                    " run_id = excluded.run_id, last_error = NULL, remote_id = NULL, task_id = NULL,"
                    " extra = NULL, md5 = NULL, updated_at = excluded.updated_at",
                    (item.rel_path, item.size, item.mtime_ns, int(dedup), run_id, now, now),
                )
                for item in items
            ]
        )

    async def mark_processing(self, receipts: Sequence[Receipt], run_id: int, *, retried: bool = False) -> None:
        now = time.time()
        bump = ", attempts = attempts + 1" if retried else ""
        await self._write(
            [
                (
                    "UPDATE files SET state = 'processing', remote_id = ?, task_id = ?, extra = ?,"
                    f" run_id = ?, updated_at = ?{bump} WHERE path = ?",
                    (
                        r.remote_id,
                        r.task_id,
                        json.dumps(r.extra) if r.extra else None,
                        run_id,
                        now,
                        r.rel_path,
                    ),
                )
                for r in receipts
            ]
        )

    async def mark_done(self, paths: Sequence[str], run_id: int) -> None:
        now = time.time()
        await self._write(
            [
                (
                    "UPDATE files SET state = 'done', last_error = NULL, run_id = ?, updated_at = ? WHERE path = ?",
                    (run_id, now, path),
                )
                for path in paths
            ]
        )

    async def mark_failed(self, failures: Sequence[tuple[str, str]], run_id: int) -> None:
        """Record ``(path, reason)`` pairs as failed; creates rows for files never sent."""
        now = time.time()
        await self._write(
            [
                (
                    "INSERT INTO files (path, state, last_error, run_id, created_at, updated_at)"
                    " VALUES (?, 'failed', ?, ?, ?, ?)"
                    " ON CONFLICT(path) DO UPDATE SET state = 'failed', last_error = excluded.last_error,"
                    " run_id = excluded.run_id, updated_at = excluded.updated_at",
                    (path, reason, run_id, now, now),
                )
                for path, reason in failures
            ]
        )

    async def note_error(self, path: str, reason: str) -> None:
        """Keep the latest platform message on a file that is being retried."""
        await self._write(
            [("UPDATE files SET last_error = ?, updated_at = ? WHERE path = ?", (reason, time.time(), path))]
        )

    def close(self) -> None:
        self._rconn.close()
        self._wconn.close()

    def __enter__(self) -> SqliteManifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
