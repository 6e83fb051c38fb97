"""The manifest in SQLite: the embedded default, one file per job.

WAL mode. One row per file, one per run, a few ``meta`` entries binding the manifest to one source and
one destination, and (schema 2) what lets several processes of one machine share the job: a claim on
each unfinished row (owner, lease expiry, fence), the workers, and the walk's position (see
``ingest.manifest.jobs``). Every write goes through one group-committing writer
(``ingest.manifest.groupcommit``); claims take the write lock up front (``BEGIN IMMEDIATE``) so two
processes never claim the same row.

Durability: ``synchronous=NORMAL`` in WAL mode survives the death of the process at any instant
(SIGKILL, OOM); only a power cut may lose the last transactions, and the resume logic copes with that
too, because a lost ``processing``/``done`` falls back to ``uploading``, which resumes with dedup.
That is also why ``processing`` (unfenced) is not waited for: it rides in the next commit
(``GroupCommit.write_later``); the intent is always committed before any byte is sent.

The rule that decides "already done" is not here: it is ``ingest.manifest.base.decide``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ingest.errors import ConfigError
from ingest.manifest.base import FileRecord, JsonObject, Owner, StoredState, states_by_range
from ingest.manifest.groupcommit import GroupCommit, Stmt, Write
from ingest.manifest.jobs import UNFINISHED, Claim, WalkState, WorkerInfo
from ingest.models import FileItem, FileState, Receipt

__all__ = ["SCHEMA_VERSION", "SqliteManifest"]

SCHEMA_VERSION = 2
#: How long a statement waits for another connection's write lock before failing (milliseconds).
BUSY_TIMEOUT_MS = 30_000
_NO_WAIT = 0
#: SQLite's default: a commit that leaves the log (``-wal``) longer than this many pages checkpoints it.
WAL_AUTOCHECKPOINT_PAGES = 1000
_NO_CHECKPOINT = 0

_SCHEMA_V1 = """
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

#: Schema changes, applied in order to a manifest of an older version (``version -> script``).
_MIGRATIONS: dict[int, str] = {
    2: """
ALTER TABLE files ADD COLUMN owner TEXT;
ALTER TABLE files ADD COLUMN lease_until REAL;
ALTER TABLE files ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
CREATE INDEX files_unfinished ON files (owner, lease_until) WHERE state IN ('pending', 'uploading', 'processing');
CREATE TABLE workers (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL, claimed INTEGER NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0,
    takeovers INTEGER NOT NULL DEFAULT 0, lost INTEGER NOT NULL DEFAULT 0, stopped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE walk (
    id INTEGER PRIMARY KEY CHECK (id = 1), walk INTEGER NOT NULL DEFAULT 0, planner TEXT, lease_until REAL,
    last_path TEXT, walked INTEGER NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0, fingerprint TEXT
);
INSERT INTO walk (id) VALUES (1);
""",
}

#: Convergence (``ingest.manifest.versions``): every earlier version of a file this manifest created that may
#: still be on the platform, and the delete intents. Purely additive, so it is created whenever it is
#: missing rather than by a numbered migration: an older ingest opening the manifest ignores it.
_VERSIONS = """
CREATE TABLE IF NOT EXISTS versions (
    path TEXT NOT NULL, remote_id TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'retired', reason TEXT NOT NULL,
    run_id INTEGER, created_at REAL NOT NULL, PRIMARY KEY (path, remote_id)
);
CREATE INDEX IF NOT EXISTS versions_remote ON versions (remote_id);
CREATE INDEX IF NOT EXISTS files_remote ON files (remote_id);
"""

_COLUMNS = "path, size, mtime_ns, md5, state, remote_id, task_id, extra, attempts, last_error, run_id, updated_at"
_UNFINISHED_SQL = "('" + "', '".join(UNFINISHED) + "')"


#: ``FileState(text)`` through a dict: the enum's own lookup was a sixth of building a record.
_STATES: dict[str, FileState] = {state.value: state for state in FileState}


def _record(row: sqlite3.Row | tuple[Any, ...]) -> FileRecord:
    return FileRecord(
        path=row[0],
        size=row[1],
        mtime_ns=row[2],
        md5=row[3],
        state=_STATES.get(row[4]) or FileState(row[4]),
        remote_id=row[5],
        task_id=row[6],
        extra=JsonObject(row[7]),
        attempts=row[8],
        last_error=row[9],
        run_id=row[10],
        updated_at=row[11],
    )


def _why(exc: OSError) -> str:
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return "a file of that name is in the way"
    return exc.strerror or str(exc)


#: A 0-byte file younger than this (seconds) is one being created right now: by another process of a
#: shared job, or by a reader that connected first (SQLite creates the file on connect). Older, it was
#: truncated or is not a manifest.
_CREATING = 10.0


def _refuse_empty_file(path: Path) -> None:
    """A manifest file that exists but is empty was truncated or is not ours: never re-initialise it (every
    file would be sent again)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"manifest {path} cannot be read: {exc.strerror or exc}") from None
    if st.st_size == 0 and stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime > _CREATING:
        raise ConfigError(
            f"manifest {path} is empty (0 bytes): truncated, or not a manifest; it is not started over "
            "(every file would be sent again): restore it, or remove it to start anew"
        )


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";\n") if s.strip()]


def _fence(owner: Owner | None, path: str) -> tuple[str, tuple[Any, ...], str | None]:
    """The condition that makes a write apply only while ``owner`` still holds ``path``."""
    if owner is None or path not in owner.fences:
        return "", (), None
    return " AND files.owner = ? AND files.fence = ?", (owner.worker, owner.fences[path]), path


def _retire(path: str, keep: str | None, run_id: int, now: float) -> Stmt:
    """Keep the remote id of the file's current version in ``versions`` before it is overwritten (unless it
    is ``keep``, the id about to be recorded): replace on change deletes it once the new version is done."""
    return (
        "INSERT OR IGNORE INTO versions (path, remote_id, reason, run_id, created_at)"
        " SELECT path, remote_id, CASE WHEN state = 'done' THEN 'replaced' ELSE 'attempt' END, ?, ?"
        " FROM files WHERE path = ? AND remote_id IS NOT NULL"
        " AND remote_id IS NOT ?",
        (run_id, now, path, keep),
        None,
    )


class SqliteManifest:
    """An open manifest file. Reads are synchronous and cheap; writes go through ``writer()``."""

    def __init__(self, path: Path, job: str | None = None) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the folder {path.parent} for the manifest: {_why(exc)}; pass --manifest elsewhere"
            ) from None
        _refuse_empty_file(path)
        try:
            # The writer connection is used from worker threads, one at a time (the writer's limiter).
            self._wconn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._rconn = sqlite3.connect(path, isolation_level=None)
            for conn in (self._wconn, self._rconn):
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if path.exists() and not os.access(path, os.W_OK):
                raise ConfigError(f"manifest {path} is read-only; make it writable (chmod u+w) to run") from None
            if path.exists() and not os.access(path.parent, os.W_OK):
                raise ConfigError(
                    f"manifest {path} is in a read-only folder (SQLite writes its -wal beside it); make "
                    f"{path.parent} writable"
                ) from None
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise ConfigError(
                    f"manifest {path}: no space left on the device holding it; free some space or point "
                    "--manifest at another disk (the manifest is consistent: rerun to resume)"
                ) from None
            raise ConfigError(
                f"manifest {path} cannot be opened ({exc}); point --manifest at a manifest file or a new path"
            ) from None
        self.job = job or self.get_meta("job") or path.stem
        self._writer = GroupCommit(self._commit, self._commit_here)

    def _migrate(self) -> None:
        """Create a new manifest, or bring an older one up to ``SCHEMA_VERSION`` (never down)."""
        conn = self._wconn
        conn.execute("BEGIN IMMEDIATE")  # two processes opening a new manifest at once migrate it once
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                raise ConfigError(
                    f"manifest {self.path} is not an ingest manifest (a SQLite database of something else); "
                    "point --manifest at a manifest file or a new path"
                )
            for statement in _statements(_SCHEMA_V1):
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = 1 if row is None else int(row[0])  # no version yet: the tables just created are v1
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"manifest {self.path} has schema version {version}; this ingest reads up to "
                    f"{SCHEMA_VERSION}: upgrade ingest"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _statements(_MIGRATIONS[target]):
                    conn.execute(statement)
            for statement in _statements(_VERSIONS):
                conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def describe(self) -> str:
        return str(self.path)

    # ----- meta -----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._rconn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Synchronous: used before the writer starts (binding, run config)."""
        self._wconn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def bind(self, source: str, target: str) -> None:
        """Tie this manifest to one source and destination; refuse to mix runs."""
        self._wconn.execute("BEGIN IMMEDIATE")  # processes sharing a new manifest bind it once
        try:
            bound_source, bound_target = self.get_meta("source"), self.get_meta("target")
            if bound_source is None and bound_target is None:
                self._wconn.execute("INSERT OR REPLACE INTO meta VALUES ('source', ?), ('target', ?)", (source, target))
                bound_source, bound_target = source, target
        finally:
            self._wconn.execute("COMMIT")
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

    def lookup_many(self, paths: Sequence[str]) -> dict[str, FileRecord]:
        found: dict[str, FileRecord] = {}
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            rows = self._rconn.execute(
                f"SELECT {_COLUMNS} FROM files WHERE path IN ({','.join('?' * len(chunk))})", tuple(chunk)
            ).fetchall()
            found.update((r[0], _record(r)) for r in rows)
        return found

    def lookup_states(self, paths: Sequence[str]) -> dict[str, StoredState]:
        return states_by_range(paths, self._states_between, self._states_in)

    def _states_between(self, lo: str, hi: str, limit: int) -> list[StoredState]:
        return self._rconn.execute(
            "SELECT path, size, mtime_ns, state FROM files WHERE path BETWEEN ? AND ? LIMIT ?", (lo, hi, limit)
        ).fetchall()

    def _states_in(self, paths: Sequence[str]) -> dict[str, StoredState]:
        found: dict[str, StoredState] = {}
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            rows = self._rconn.execute(
                f"SELECT path, size, mtime_ns, state FROM files WHERE path IN ({','.join('?' * len(chunk))})",
                tuple(chunk),
            ).fetchall()
            found.update((r[0], r) for r in rows)
        return found

    def is_empty(self) -> bool:
        return self._rconn.execute("SELECT 1 FROM files LIMIT 1").fetchone() is None

    def counts(self) -> dict[str, int]:
        found = dict(self._rconn.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
        return {state.value: int(found.get(state.value, 0)) for state in FileState}

    def file_count(self) -> int:
        return int(self._rconn.execute("SELECT COUNT(*) FROM files").fetchone()[0])

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

    @property
    def commits(self) -> int:
        return self._writer.commits

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[SqliteManifest]:
        """Run the group-committing writer for the duration of the block (drained on exit)."""
        async with self._writer.running():
            yield self

    def _commit(self, writes: list[Write]) -> None:
        conn = self._wconn
        conn.execute("BEGIN IMMEDIATE")
        self._apply(writes)

    def _commit_here(self, writes: list[Write]) -> bool:
        """Commit ``writes`` now, on the caller's thread (the event loop's), unless the write lock is taken
        (another process of a shared job, a checkpoint): then ``False``, and ``_commit`` in a worker thread
        waits for it (``busy_timeout``). The loop never waits for another process, nor for a checkpoint
        (an fsync): this commit does not run one; the next commit in a thread does, if the log is due."""
        conn = self._wconn
        conn.execute(f"PRAGMA busy_timeout={_NO_WAIT}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False
            raise
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA wal_autocheckpoint={_NO_CHECKPOINT}")
        try:
            self._apply(writes)
        finally:
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        return True

    def _apply(self, writes: list[Write]) -> None:
        """The statements of ``writes`` in the transaction just begun, then its commit (or rollback)."""
        conn = self._wconn
        try:
            for write in writes:
                for sql, params, fenced in write.stmts:
                    if conn.execute(sql, params).rowcount == 0 and fenced is not None:
                        write.lost.add(fenced)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # The operations. Each awaits the commit of the transaction that carries it.

    async def mark_uploading(
        self, items: Sequence[FileItem], run_id: int, *, dedup: bool, owner: Owner | None = None
    ) -> set[str]:
        """The intent record: committed before any byte of these files is sent."""
        now = time.time()
        stmts: list[Stmt] = []
        for item in items:
            cond, fparams, fenced = _fence(owner, item.rel_path)
            stmts.append(_retire(item.rel_path, None, run_id, now))  # the version it replaces stays known
            stmts.append(
                (
                    "INSERT INTO files (path, size, mtime_ns, state, attempts, dedup, run_id, created_at,"
                    " updated_at) VALUES (?, ?, ?, 'uploading', 1, ?, ?, ?, ?)"
                    " ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
                    " state = 'uploading', attempts = attempts + 1, dedup = excluded.dedup,"
                    " run_id = excluded.run_id, last_error = NULL, remote_id = NULL, task_id = NULL,"
                    " extra = NULL, md5 = NULL, updated_at = excluded.updated_at WHERE 1 = 1" + cond,
                    (item.rel_path, item.size, item.mtime_ns, int(dedup), run_id, now, now, *fparams),
                    fenced,
                )
            )
        return await self._writer.write(stmts)

    async def mark_processing(
        self, receipts: Sequence[Receipt], run_id: int, *, retried: bool = False, owner: Owner | None = None
    ) -> set[str]:
        now = time.time()
        bump = ", attempts = attempts + 1" if retried else ""
        stmts: list[Stmt] = []
        for r in receipts:
            cond, fparams, fenced = _fence(owner, r.rel_path)
            extra = json.dumps(r.extra) if r.extra else None
            stmts.append(_retire(r.rel_path, r.remote_id, run_id, now))  # a retry may bring a new id
            stmts.append(
                (
                    "UPDATE files SET state = 'processing', remote_id = ?, task_id = ?, extra = ?,"
                    f" md5 = COALESCE(?, md5), run_id = ?, updated_at = ?{bump} WHERE path = ?" + cond,
                    (r.remote_id, r.task_id, extra, r.extra.get("md5"), run_id, now, r.rel_path, *fparams),
                    fenced,
                )
            )
        if not retried and all(fenced is None for _, _, fenced in stmts):
            # Nothing to report lost, so not waited for: it rides in the next commit (the intent or done
            # of some file). A crash before that leaves the file "uploading": resent with dedup. A retry's
            # record is waited for: it retires the id of a document the platform already holds, and
            # losing it would leave that document where no later run finds it to delete.
            await self._writer.write_later(stmts)
            return set()
        return await self._writer.write(stmts)

    async def mark_done(self, paths: Sequence[str], run_id: int, *, owner: Owner | None = None) -> set[str]:
        now = time.time()
        stmts: list[Stmt] = []
        for path in paths:
            cond, fparams, fenced = _fence(owner, path)
            stmts.append(
                (
                    "UPDATE files SET state = 'done', last_error = NULL, run_id = ?, updated_at = ?,"
                    " owner = NULL, lease_until = NULL WHERE path = ?" + cond,
                    (run_id, now, path, *fparams),
                    fenced,
                )
            )
        return await self._writer.write(stmts)

    async def mark_failed(
        self, failures: Sequence[tuple[str, str]], run_id: int, *, owner: Owner | None = None
    ) -> set[str]:
        """Record ``(path, reason)`` pairs as failed; creates rows for files never sent."""
        now = time.time()
        stmts: list[Stmt] = []
        for path, reason in failures:
            cond, fparams, fenced = _fence(owner, path)
            stmts.append(
                (
                    "INSERT INTO files (path, state, last_error, run_id, created_at, updated_at)"
                    " VALUES (?, 'failed', ?, ?, ?, ?)"
                    " ON CONFLICT(path) DO UPDATE SET state = 'failed', last_error = excluded.last_error,"
                    " run_id = excluded.run_id, updated_at = excluded.updated_at, owner = NULL,"
                    " lease_until = NULL WHERE 1 = 1" + cond,
                    (path, reason, run_id, now, now, *fparams),
                    fenced,
                )
            )
        return await self._writer.write(stmts)

    async def note_error(self, path: str, reason: str, *, owner: Owner | None = None) -> None:
        """Keep the latest platform message on a file that is being retried."""
        cond, fparams, fenced = _fence(owner, path)
        await self._writer.write(
            [
                (
                    "UPDATE files SET last_error = ?, updated_at = ? WHERE path = ?" + cond,
                    (reason, time.time(), path, *fparams),
                    fenced,
                )
            ]
        )

    async def confirm(self, paths: Sequence[str]) -> set[str]:
        return set()  # used by one process: it holds every file

    # ----- the shared job (ingest.manifest.jobs) --------------------------------------------------

    async def register_worker(self, worker: str, host: str, pid: int) -> None:
        now = time.time()
        await self._writer.write(
            [
                (
                    "INSERT OR REPLACE INTO workers (id, host, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?)",
                    (worker, host, pid, now, now),
                    None,
                )
            ]
        )

    async def heartbeat(self, worker: str, lease: float, *, claimed: int, done: int, lost: int) -> int:
        now = time.time()

        def beat() -> int:
            conn = self._wconn
            conn.execute("BEGIN IMMEDIATE")
            try:
                extended = conn.execute(
                    f"UPDATE files SET lease_until = ? WHERE owner = ? AND state IN {_UNFINISHED_SQL}",
                    (now + lease, worker),
                ).rowcount
                conn.execute(
                    "UPDATE workers SET heartbeat_at = ?, claimed = ?, done = ?, lost = ? WHERE id = ?",
                    (now, claimed, done, lost, worker),
                )
                conn.execute("UPDATE walk SET lease_until = ? WHERE planner = ?", (now + lease, worker))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return int(extended)

        return await self._writer.run_sync(beat)

    async def stop_worker(self, worker: str) -> None:
        await self._writer.write(
            [
                (
                    f"UPDATE files SET owner = NULL, lease_until = NULL WHERE owner = ? AND state IN {_UNFINISHED_SQL}",
                    (worker,),
                    None,
                ),
                ("UPDATE workers SET stopped = 1, heartbeat_at = ? WHERE id = ?", (time.time(), worker), None),
                ("UPDATE walk SET planner = NULL, lease_until = NULL WHERE planner = ?", (worker,), None),
            ]
        )

    async def claim(self, worker: str, limit: int, lease: float) -> list[Claim]:
        def take() -> list[Claim]:
            conn = self._wconn
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")  # the write lock first: no other process claims meanwhile
            try:
                picked = conn.execute(
                    f"SELECT path, owner FROM files WHERE state IN {_UNFINISHED_SQL}"
                    " AND (owner IS NULL OR lease_until < ?) LIMIT ?",
                    (now, limit),
                ).fetchall()
                claims: list[Claim] = []
                for path, previous in picked:
                    row = conn.execute(
                        f"UPDATE files SET owner = ?, lease_until = ?, fence = fence + 1 WHERE path = ?"
                        f" RETURNING {_COLUMNS}, fence",
                        (worker, now + lease, path),
                    ).fetchone()
                    claims.append(Claim(_record(row), int(row[12]), previous is not None and previous != worker))
                taken = sum(c.taken_over for c in claims)
                if taken:
                    conn.execute("UPDATE workers SET takeovers = takeovers + ? WHERE id = ?", (taken, worker))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return claims

        return await self._writer.run_sync(take)

    async def confirm_lease(self, owner: Owner, paths: Sequence[str], lease: float) -> set[str]:
        now = time.time()
        stmts: list[Stmt] = []
        for path in paths:
            cond, fparams, fenced = _fence(owner, path)
            stmts.append(
                ("UPDATE files SET lease_until = ? WHERE path = ?" + cond, (now + lease, path, *fparams), fenced)
            )
        return await self._writer.write(stmts)

    def unfinished(self, *, besides: str) -> int:
        row = self._rconn.execute(
            f"SELECT COUNT(*) FROM files WHERE state IN {_UNFINISHED_SQL} AND (owner IS NULL OR owner != ?)",
            (besides,),
        ).fetchone()
        return int(row[0])

    def workers(self) -> list[WorkerInfo]:
        now = time.time()
        rows = self._rconn.execute(
            "SELECT id, host, pid, started_at, heartbeat_at, claimed, done, takeovers, lost, stopped"
            " FROM workers ORDER BY started_at"
        ).fetchall()
        return [WorkerInfo(r[0], r[1], r[2], r[3], now - r[4], r[5], r[6], r[7], r[8], bool(r[9])) for r in rows]

    async def try_lead(self, worker: str, lease: float) -> bool:
        now = time.time()
        lost = await self._writer.write(
            [
                (
                    "UPDATE walk SET planner = ?, lease_until = ?"
                    " WHERE id = 1 AND (planner IS NULL OR planner = ? OR lease_until < ?)",
                    (worker, now + lease, worker, now),
                    "planner",
                )
            ]
        )
        return not lost

    def walk_state(self) -> WalkState:
        row = self._rconn.execute(
            "SELECT walk, last_path, walked, done, fingerprint, planner FROM walk WHERE id = 1"
        ).fetchone()
        return WalkState(row[0], row[1], row[2], bool(row[3]), row[4], row[5])

    async def begin_walk(self, worker: str, fingerprint: str, *, fresh: bool) -> WalkState:
        reset = ", walk = walk + 1, last_path = NULL, walked = 0, done = 0" if fresh else ""
        await self._writer.write(
            [(f"UPDATE walk SET fingerprint = ?{reset} WHERE id = 1 AND planner = ?", (fingerprint, worker), None)]
        )
        return self.walk_state()

    async def record_walk(
        self,
        pending: Sequence[FileItem],
        failed: Sequence[tuple[str, str]],
        *,
        run_id: int,
        last_path: str,
        walked: int,
    ) -> None:
        now = time.time()
        stmts: list[Stmt] = [
            (
                # A row somebody is working on (or will resume) stays as it is: only a new file, or one
                # finished in an earlier walk and now to be sent again, becomes pending.
                "INSERT INTO files (path, size, mtime_ns, state, run_id, created_at, updated_at)"
                " VALUES (?, ?, ?, 'pending', ?, ?, ?) ON CONFLICT(path) DO UPDATE SET state = 'pending',"
                " size = excluded.size, mtime_ns = excluded.mtime_ns, last_error = NULL, owner = NULL,"
                " lease_until = NULL, updated_at = excluded.updated_at WHERE files.state IN ('done', 'failed')",
                (item.rel_path, item.size, item.mtime_ns, run_id, now, now),
                None,
            )
            for item in pending
        ]
        stmts += [
            (
                "INSERT INTO files (path, state, last_error, run_id, created_at, updated_at)"
                " VALUES (?, 'failed', ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET state = 'failed',"
                " last_error = excluded.last_error, updated_at = excluded.updated_at"
                " WHERE files.owner IS NULL",
                (path, reason, run_id, now, now),
                None,
            )
            for path, reason in failed
        ]
        stmts.append(("UPDATE walk SET last_path = ?, walked = ? WHERE id = 1", (last_path, walked), None))
        await self._writer.write(stmts)

    async def finish_walk(self, walked: int) -> None:
        await self._writer.write([("UPDATE walk SET done = 1, walked = ? WHERE id = 1", (walked,), None)])

    def close(self) -> None:
        self._rconn.close()
        self._wconn.close()

    def __enter__(self) -> SqliteManifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
