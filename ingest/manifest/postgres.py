"""The manifest in PostgreSQL: one database, any number of named jobs, shared by processes on any
number of machines (see ``ingest.manifest.jobs`` for claims, leases, fencing and the walk).

Driver: psycopg 3. Its synchronous connection keeps the ``Manifest`` contract's reads synchronous and
cheap (as SQLite's are), and the writer runs in a worker thread exactly as SQLite's does; the async
driver asyncpg would have forced every read of the contract to become a coroutine. ``executemany``
pipelines a whole group of statements in one round trip, which is what makes group commit pay here.

Leases are timed by the server's clock (``clock_timestamp()``), never by the workers' clocks: machines
disagree about the time, the database is one.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from itertools import groupby
from typing import Any
from urllib.parse import unquote

import psycopg

from ingest.errors import ConfigError
from ingest.manifest.base import FileRecord, Owner
from ingest.manifest.groupcommit import GroupCommit, Stmt, Write
from ingest.manifest.jobs import UNFINISHED, Claim, WalkState, WorkerInfo
from ingest.manifest.location import PostgresLocation, scrub
from ingest.models import FileItem, FileState, Receipt

__all__ = ["SCHEMA_VERSION", "PostgresManifest"]

SCHEMA_VERSION = 2

#: ``version -> statements`` applied in order, under a lock, to a database of an older version.
_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE ingest_jobs (
            name text PRIMARY KEY, source text, target text, created_at double precision NOT NULL,
            walk integer NOT NULL DEFAULT 0, last_path text, walked bigint NOT NULL DEFAULT 0,
            walk_done boolean NOT NULL DEFAULT false, fingerprint text, planner text)""",
        """CREATE TABLE ingest_meta (
            job text NOT NULL, key text NOT NULL, value text NOT NULL, PRIMARY KEY (job, key))""",
        """CREATE TABLE ingest_runs (
            id bigserial PRIMARY KEY, job text NOT NULL, command text NOT NULL,
            started_at double precision NOT NULL, finished_at double precision, status text NOT NULL,
            summary text)""",
        """CREATE TABLE ingest_files (
            job text NOT NULL, path text NOT NULL, size bigint, mtime_ns bigint, md5 text,
            state text NOT NULL, remote_id text, task_id text, extra text,
            attempts integer NOT NULL DEFAULT 0, last_error text, dedup boolean NOT NULL DEFAULT false,
            run_id bigint, created_at double precision NOT NULL, updated_at double precision NOT NULL,
            owner text, lease_until timestamptz, fence bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (job, path))""",
        # Claims read only these two small partial indexes: rows nobody holds, and held rows by expiry.
        # A finished row clears its owner, so it leaves both.
        """CREATE INDEX ingest_files_free ON ingest_files (job)
            WHERE owner IS NULL AND state IN ('pending', 'uploading', 'processing')""",
        "CREATE INDEX ingest_files_held ON ingest_files (job, lease_until) WHERE owner IS NOT NULL",
        "CREATE INDEX ingest_files_owner ON ingest_files (job, owner) WHERE owner IS NOT NULL",
        "CREATE INDEX ingest_files_state ON ingest_files (job, state)",
        """CREATE TABLE ingest_workers (
            job text NOT NULL, id text NOT NULL, host text NOT NULL, pid integer NOT NULL,
            started_at double precision NOT NULL, heartbeat_at double precision NOT NULL,
            claimed bigint NOT NULL DEFAULT 0, done bigint NOT NULL DEFAULT 0,
            takeovers bigint NOT NULL DEFAULT 0, lost bigint NOT NULL DEFAULT 0,
            stopped boolean NOT NULL DEFAULT false, PRIMARY KEY (job, id))""",
    ],
    # Convergence (ingest.manifest.versions): earlier versions still on the platform, delete intents.
    2: [
        """CREATE TABLE ingest_versions (
            job text NOT NULL, path text NOT NULL, remote_id text NOT NULL,
            state text NOT NULL DEFAULT 'retired', reason text NOT NULL, run_id bigint,
            created_at double precision NOT NULL, PRIMARY KEY (job, path, remote_id))""",
        "CREATE INDEX ingest_versions_remote ON ingest_versions (job, remote_id)",
        "CREATE INDEX ingest_files_remote ON ingest_files (job, remote_id)",
    ],
}
#: Keeps the remote id of a file's current version in ``ingest_versions`` before the statement it prefixes
#: overwrites it (a data-modifying CTE sees the row as it was): replace on change deletes that version
#: once the new one is done. Parameters: run_id, now, job, path, the id about to be recorded (or NULL).
_RETIRE = (
    "WITH retired AS (INSERT INTO ingest_versions (job, path, remote_id, reason, run_id, created_at)"
    " SELECT job, path, remote_id, 'replaced', %s, %s FROM ingest_files WHERE job = %s AND path = %s"
    " AND remote_id IS NOT NULL AND remote_id IS DISTINCT FROM %s::text ON CONFLICT DO NOTHING) "
)
#: Serialises migrations of one database by concurrent first runs (an arbitrary constant).
_MIGRATION_LOCK = 0x1A6E57

_COLUMNS = "path, size, mtime_ns, md5, state, remote_id, task_id, extra, attempts, last_error, run_id, updated_at"
_UNFINISHED_SQL = "('" + "', '".join(UNFINISHED) + "')"
_LEASE = "clock_timestamp() + make_interval(secs => %s)"
#: Transient conflicts between concurrent transactions: the whole group is simply committed again.
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def _record(row: Sequence[Any]) -> FileRecord:
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


def _fence(owner: Owner | None, path: str) -> tuple[str, tuple[Any, ...], str | None]:
    """The condition that makes a write apply only while ``owner`` still holds ``path``."""
    if owner is None or path not in owner.fences:
        return " AND %s", (True,), None
    return " AND owner = %s AND fence = %s", (owner.worker, owner.fences[path]), path


class PostgresManifest:
    """One job of a PostgreSQL database, with the ``Manifest`` and ``JobStore`` contracts."""

    def __init__(self, location: PostgresLocation, job: str) -> None:
        self.location = location
        self.job = job
        self.path = location.redacted  # what summaries and messages show
        self._lockconn: psycopg.Connection[Any] | None = None
        try:
            self._wconn = self._connect(autocommit=False)
            self._rconn = self._connect(autocommit=True)
            self._migrate()
        except psycopg.Error as exc:
            raise self._error(exc) from None
        self._writer = GroupCommit(self._commit)

    def _connect(self, *, autocommit: bool) -> psycopg.Connection[Any]:
        conninfo = self.location.conninfo
        if "connect_timeout" not in conninfo:
            conninfo += ("&" if "?" in conninfo else "?") + "connect_timeout=10"
        return psycopg.connect(conninfo, autocommit=autocommit, application_name="ingest")

    def _error(self, exc: BaseException) -> ConfigError:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1 if "Connection refused" in str(exc) else 0]
        for secret in {self.location.password, unquote(self.location.password or "")}:
            first = scrub(first, secret or None)
        return ConfigError(
            f"manifest database {self.location.redacted} cannot be used ({first.strip()}); "
            "check --manifest and that PostgreSQL is running and reachable"
        )

    def _migrate(self) -> None:
        conn = self._wconn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS ingest_schema (version integer NOT NULL)")
            row = conn.execute("SELECT max(version) FROM ingest_schema").fetchone()
            version = int(row[0]) if row and row[0] is not None else 0
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"manifest database {self.location.redacted} has schema version {version}; this ingest "
                    f"reads up to {SCHEMA_VERSION}: upgrade ingest"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute("INSERT INTO ingest_schema VALUES (%s)", (target,))
            conn.execute(
                "INSERT INTO ingest_jobs (name, created_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (self.job, time.time()),
            )

    def describe(self) -> str:
        return f"{self.location.redacted} job {self.job}"

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self._rconn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # ----- meta -----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        value = self._one("SELECT value FROM ingest_meta WHERE job = %s AND key = %s", (self.job, key))
        return None if value is None else str(value)

    def set_meta(self, key: str, value: str) -> None:
        self._rconn.execute(
            "INSERT INTO ingest_meta VALUES (%s, %s, %s) ON CONFLICT (job, key) DO UPDATE SET value = excluded.value",
            (self.job, key, value),
        )

    def bind(self, source: str, target: str) -> None:
        """Tie this job to one source and destination; a job of that name bound elsewhere is a clash."""
        self._rconn.execute(
            "UPDATE ingest_jobs SET source = %s, target = %s WHERE name = %s AND source IS NULL",
            (source, target, self.job),
        )
        row = self._rconn.execute("SELECT source, target FROM ingest_jobs WHERE name = %s", (self.job,)).fetchone()
        assert row is not None
        if (row[0], row[1]) != (source, target):
            raise ConfigError(
                f"job {self.job!r} in {self.location.redacted} records {row[0]} -> {row[1]}, not {source} -> "
                f"{target}; choose another job name (--job NAME or ?job=NAME)"
            )
        self.set_meta("source", source)
        self.set_meta("target", target)

    # ----- runs -----------------------------------------------------------------------------------

    def start_run(self, command: str) -> int:
        return int(
            self._one(
                "INSERT INTO ingest_runs (job, command, started_at, status)"
                " VALUES (%s, %s, %s, 'running') RETURNING id",
                (self.job, command, time.time()),
            )
        )

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None:
        self._rconn.execute(
            "UPDATE ingest_runs SET finished_at = %s, status = %s, summary = %s WHERE id = %s",
            (time.time(), status, json.dumps(summary), run_id),
        )

    def runs(self) -> list[dict[str, Any]]:
        rows = self._rconn.execute(
            "SELECT id, command, started_at, finished_at, status, summary FROM ingest_runs WHERE job = %s ORDER BY id",
            (self.job,),
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
        row = self._rconn.execute(
            f"SELECT {_COLUMNS} FROM ingest_files WHERE job = %s AND path = %s", (self.job, path)
        ).fetchone()
        return None if row is None else _record(row)

    def lookup_many(self, paths: Sequence[str]) -> dict[str, FileRecord]:
        rows = self._rconn.execute(
            f"SELECT {_COLUMNS} FROM ingest_files WHERE job = %s AND path = ANY(%s)", (self.job, list(paths))
        ).fetchall()
        return {r[0]: _record(r) for r in rows}

    def is_empty(self) -> bool:
        return self._one("SELECT 1 FROM ingest_files WHERE job = %s LIMIT 1", (self.job,)) is None

    def counts(self) -> dict[str, int]:
        rows = self._rconn.execute(
            "SELECT state, count(*) FROM ingest_files WHERE job = %s GROUP BY state", (self.job,)
        ).fetchall()
        found = {r[0]: int(r[1]) for r in rows}
        return {state.value: found.get(state.value, 0) for state in FileState}

    def iter_files(
        self, *, states: Sequence[FileState] = (), run_id: int | None = None, page: int = 1000
    ) -> Iterator[FileRecord]:
        """Every matching record in path order, read in pages (keyset) so memory stays flat."""
        where = ["job = %s"]
        params: list[Any] = [self.job]
        if states:
            where.append("state = ANY(%s)")
            params.append([s.value for s in states])
        if run_id is not None:
            where.append("run_id = %s")
            params.append(run_id)
        last = ""
        while True:
            rows = self._rconn.execute(
                f"SELECT {_COLUMNS} FROM ingest_files WHERE {' AND '.join(where)} AND path > %s ORDER BY path LIMIT %s",
                (*params, last, page),
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
    async def writer(self) -> AsyncIterator[PostgresManifest]:
        async with self._writer.running():
            yield self

    def _commit(self, writes: list[Write]) -> None:
        for attempt in range(8):
            try:
                self._commit_once(writes)
                return
            except _RETRYABLE:
                self._wconn.rollback()
                for write in writes:
                    write.lost.clear()
                if attempt == 7:
                    raise
                time.sleep(0.01 * (attempt + 1))

    def _commit_once(self, writes: list[Write]) -> None:
        # Statements of one kind go in one pipelined executemany: one round trip for the whole group.
        # Sorting by SQL (then path) also gives every transaction the same lock order: no deadlocks
        # between workers committing overlapping groups.
        stmts = sorted(
            ((sql, params, fenced, write) for write in writes for sql, params, fenced in write.stmts),
            key=lambda s: (s[0], s[2] or ""),
        )
        conn = self._wconn
        try:
            with conn.cursor() as cur:
                for sql, group_iter in groupby(stmts, key=lambda s: s[0]):
                    group = list(group_iter)
                    fenced_any = any(s[2] is not None for s in group)
                    if not fenced_any:
                        cur.executemany(sql, [s[1] for s in group])
                        continue
                    cur.executemany(sql + " RETURNING 1", [s[1] for s in group], returning=True)
                    for _, _, fenced, write in group:
                        if cur.fetchone() is None and fenced is not None:
                            write.lost.add(fenced)
                        cur.nextset()
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    async def mark_uploading(
        self, items: Sequence[FileItem], run_id: int, *, dedup: bool, owner: Owner | None = None
    ) -> set[str]:
        """The intent record: committed before any byte of these files is sent."""
        now = time.time()
        stmts: list[Stmt] = []
        for item in items:
            cond, fparams, fenced = _fence(owner, item.rel_path)
            retire = (run_id, now, self.job, item.rel_path, None)
            stmts.append(
                (
                    _RETIRE
                    + "INSERT INTO ingest_files AS f (job, path, size, mtime_ns, state, attempts, dedup, run_id,"
                    " created_at, updated_at) VALUES (%s, %s, %s, %s, 'uploading', 1, %s, %s, %s, %s)"
                    " ON CONFLICT (job, path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
                    " state = 'uploading', attempts = f.attempts + 1, dedup = excluded.dedup,"
                    " run_id = excluded.run_id, last_error = NULL, remote_id = NULL, task_id = NULL,"
                    " extra = NULL, md5 = NULL, updated_at = excluded.updated_at WHERE true"
                    + cond.replace("owner", "f.owner").replace("fence", "f.fence"),
                    (*retire, self.job, item.rel_path, item.size, item.mtime_ns, dedup, run_id, now, now, *fparams),
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
            retire = (run_id, now, self.job, r.rel_path, r.remote_id)  # a retry may bring a new id
            stmts.append(
                (
                    _RETIRE + "UPDATE ingest_files SET state = 'processing', remote_id = %s, task_id = %s, extra = %s,"
                    f" md5 = COALESCE(%s, md5), run_id = %s, updated_at = %s{bump} WHERE job = %s AND path = %s" + cond,
                    (
                        *retire,
                        r.remote_id,
                        r.task_id,
                        extra,
                        r.extra.get("md5"),
                        run_id,
                        now,
                        self.job,
                        r.rel_path,
                        *fparams,
                    ),
                    fenced,
                )
            )
        return await self._writer.write(stmts)

    async def mark_done(self, paths: Sequence[str], run_id: int, *, owner: Owner | None = None) -> set[str]:
        now = time.time()
        stmts: list[Stmt] = []
        for path in paths:
            cond, fparams, fenced = _fence(owner, path)
            stmts.append(
                (
                    "UPDATE ingest_files SET state = 'done', last_error = NULL, run_id = %s, updated_at = %s,"
                    " owner = NULL, lease_until = NULL WHERE job = %s AND path = %s" + cond,
                    (run_id, now, self.job, path, *fparams),
                    fenced,
                )
            )
        return await self._writer.write(stmts)

    async def mark_failed(
        self, failures: Sequence[tuple[str, str]], run_id: int, *, owner: Owner | None = None
    ) -> set[str]:
        now = time.time()
        stmts: list[Stmt] = []
        for path, reason in failures:
            cond, fparams, fenced = _fence(owner, path)
            stmts.append(
                (
                    "INSERT INTO ingest_files AS f (job, path, state, last_error, run_id, created_at, updated_at)"
                    " VALUES (%s, %s, 'failed', %s, %s, %s, %s) ON CONFLICT (job, path) DO UPDATE SET"
                    " state = 'failed', last_error = excluded.last_error, run_id = excluded.run_id,"
                    " updated_at = excluded.updated_at, owner = NULL, lease_until = NULL WHERE true"
                    + cond.replace("owner", "f.owner").replace("fence", "f.fence"),
                    (self.job, path, reason, run_id, now, now, *fparams),
                    fenced,
                )
            )
        return await self._writer.write(stmts)

    async def note_error(self, path: str, reason: str, *, owner: Owner | None = None) -> None:
        cond, fparams, fenced = _fence(owner, path)
        await self._writer.write(
            [
                (
                    "UPDATE ingest_files SET last_error = %s, updated_at = %s WHERE job = %s AND path = %s" + cond,
                    (reason, time.time(), self.job, path, *fparams),
                    fenced,
                )
            ]
        )

    async def confirm(self, paths: Sequence[str]) -> set[str]:
        return set()  # without an owner this manifest is used as one process's: it holds every file

    # ----- the shared job (ingest.manifest.jobs) --------------------------------------------------

    async def register_worker(self, worker: str, host: str, pid: int) -> None:
        now = time.time()
        await self._writer.write(
            [
                (
                    "INSERT INTO ingest_workers (job, id, host, pid, started_at, heartbeat_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (self.job, worker, host, pid, now, now),
                    None,
                )
            ]
        )

    async def heartbeat(self, worker: str, lease: float, *, claimed: int, done: int, lost: int) -> int:
        def beat() -> int:
            conn = self._wconn
            try:
                extended = conn.execute(
                    f"UPDATE ingest_files SET lease_until = {_LEASE} WHERE job = %s AND owner = %s",
                    (lease, self.job, worker),
                ).rowcount
                conn.execute(
                    "UPDATE ingest_workers SET heartbeat_at = %s, claimed = %s, done = %s, lost = %s"
                    " WHERE job = %s AND id = %s",
                    (time.time(), claimed, done, lost, self.job, worker),
                )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return int(extended)

        return await self._writer.run_sync(beat)

    async def stop_worker(self, worker: str) -> None:
        await self._writer.write(
            [
                (
                    "UPDATE ingest_files SET owner = NULL, lease_until = NULL WHERE job = %s AND owner = %s",
                    (self.job, worker),
                    None,
                ),
                (
                    "UPDATE ingest_workers SET stopped = true, heartbeat_at = %s WHERE job = %s AND id = %s",
                    (time.time(), self.job, worker),
                    None,
                ),
            ]
        )
        if self._lockconn is not None:
            self._lockconn.close()  # gives up the planner role, if this process held it
            self._lockconn = None

    async def claim(self, worker: str, limit: int, lease: float) -> list[Claim]:
        def take() -> list[Claim]:
            conn = self._wconn
            claims: list[Claim] = []
            try:
                # Rows nobody holds first, then rows whose holder's lease expired (taken over). SKIP
                # LOCKED: concurrent claimers pass over each other's rows instead of queueing on them.
                for which in (
                    f"owner IS NULL AND state IN {_UNFINISHED_SQL}",
                    "owner IS NOT NULL AND lease_until < clock_timestamp()",
                ):
                    if len(claims) >= limit:
                        break
                    rows = conn.execute(
                        f"WITH picked AS (SELECT path, owner AS previous FROM ingest_files"
                        f" WHERE job = %s AND {which} LIMIT %s FOR UPDATE SKIP LOCKED)"
                        f" UPDATE ingest_files f SET owner = %s, lease_until = {_LEASE}, fence = f.fence + 1"
                        f" FROM picked WHERE f.job = %s AND f.path = picked.path"
                        f" RETURNING {', '.join('f.' + c.strip() for c in _COLUMNS.split(','))}, f.fence,"
                        " picked.previous",
                        (self.job, limit - len(claims), worker, lease, self.job),
                    ).fetchall()
                    claims += [Claim(_record(r), int(r[12]), r[13] is not None and r[13] != worker) for r in rows]
                taken = sum(c.taken_over for c in claims)
                if taken:
                    conn.execute(
                        "UPDATE ingest_workers SET takeovers = takeovers + %s WHERE job = %s AND id = %s",
                        (taken, self.job, worker),
                    )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return claims

        return await self._writer.run_sync(take)

    async def confirm_lease(self, owner: Owner, paths: Sequence[str], lease: float) -> set[str]:
        stmts: list[Stmt] = []
        for path in paths:
            cond, fparams, fenced = _fence(owner, path)
            stmts.append(
                (
                    f"UPDATE ingest_files SET lease_until = {_LEASE} WHERE job = %s AND path = %s" + cond,
                    (lease, self.job, path, *fparams),
                    fenced,
                )
            )
        return await self._writer.write(stmts)

    def unfinished(self, *, besides: str) -> int:
        return int(
            self._one(
                f"SELECT count(*) FROM ingest_files WHERE job = %s AND state IN {_UNFINISHED_SQL}"
                " AND owner IS DISTINCT FROM %s",
                (self.job, besides),
            )
        )

    def workers(self) -> list[WorkerInfo]:
        now = time.time()
        rows = self._rconn.execute(
            "SELECT id, host, pid, started_at, heartbeat_at, claimed, done, takeovers, lost, stopped"
            " FROM ingest_workers WHERE job = %s ORDER BY started_at",
            (self.job,),
        ).fetchall()
        return [WorkerInfo(r[0], r[1], r[2], r[3], now - r[4], r[5], r[6], r[7], r[8], r[9]) for r in rows]

    async def try_lead(self, worker: str, lease: float) -> bool:
        """The planner role is a session advisory lock: the server frees it the moment the holder's
        connection dies, so a killed planner is replaced without waiting for any lease."""
        if self._lockconn is not None:
            return True

        def attempt() -> bool:
            conn = self._connect(autocommit=True)
            got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", ("ingest:" + self.job,))
            row = got.fetchone()
            if not (row and row[0]):
                conn.close()
                return False
            conn.execute("UPDATE ingest_jobs SET planner = %s WHERE name = %s", (worker, self.job))
            self._lockconn = conn
            return True

        return await self._writer.run_sync(attempt)

    def walk_state(self) -> WalkState:
        row = self._rconn.execute(
            "SELECT walk, last_path, walked, walk_done, fingerprint, planner FROM ingest_jobs WHERE name = %s",
            (self.job,),
        ).fetchone()
        assert row is not None
        return WalkState(row[0], row[1], row[2], row[3], row[4], row[5])

    async def begin_walk(self, worker: str, fingerprint: str, *, fresh: bool) -> WalkState:
        reset = ", walk = walk + 1, last_path = NULL, walked = 0, walk_done = false" if fresh else ""
        await self._writer.write(
            [
                (
                    f"UPDATE ingest_jobs SET fingerprint = %s, planner = %s{reset} WHERE name = %s",
                    (fingerprint, worker, self.job),
                    None,
                )
            ]
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
                "INSERT INTO ingest_files AS f (job, path, size, mtime_ns, state, run_id, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, 'pending', %s, %s, %s) ON CONFLICT (job, path) DO UPDATE SET"
                " state = 'pending', size = excluded.size, mtime_ns = excluded.mtime_ns, last_error = NULL,"
                " owner = NULL, lease_until = NULL, updated_at = excluded.updated_at"
                " WHERE f.state IN ('done', 'failed')",
                (self.job, item.rel_path, item.size, item.mtime_ns, run_id, now, now),
                None,
            )
            for item in pending
        ]
        stmts += [
            (
                "INSERT INTO ingest_files AS f (job, path, state, last_error, run_id, created_at, updated_at)"
                " VALUES (%s, %s, 'failed', %s, %s, %s, %s) ON CONFLICT (job, path) DO UPDATE SET"
                " state = 'failed', last_error = excluded.last_error, updated_at = excluded.updated_at"
                " WHERE f.owner IS NULL",
                (self.job, path, reason, run_id, now, now),
                None,
            )
            for path, reason in failed
        ]
        stmts.append(
            (
                "UPDATE ingest_jobs SET last_path = %s, walked = %s WHERE name = %s",
                (last_path, walked, self.job),
                None,
            )
        )
        await self._writer.write(stmts)

    async def finish_walk(self, walked: int) -> None:
        await self._writer.write(
            [("UPDATE ingest_jobs SET walk_done = true, walked = %s WHERE name = %s", (walked, self.job), None)]
        )

    def close(self) -> None:
        for conn in (self._rconn, self._wconn, self._lockconn):
            if conn is not None:
                conn.close()
        self._lockconn = None

    def __enter__(self) -> PostgresManifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
