"""The manifest in PostgreSQL: one database, any number of named jobs, shared by processes on any
number of machines (see ``ingest.manifest.jobs`` for claims, leases, fencing and the walk).

Driver: psycopg 3. Its synchronous connection keeps the ``Manifest`` contract's reads synchronous and
cheap (as SQLite's are), and the writer runs in a worker thread exactly as SQLite's does; the async
driver asyncpg would have forced every read of the contract to become a coroutine. Group commit pays
here through set-based writes: all the rows of one kind of write in a group go as arrays in one
statement (``_SetWrite``), committed on its own in one round trip.

Leases are timed by the server's clock (``clock_timestamp()``), never by the workers' clocks: machines
disagree about the time, the database is one.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from itertools import groupby
from typing import Any
from urllib.parse import unquote

import psycopg

from ingest.errors import ConfigError
from ingest.manifest.base import FileRecord, JsonObject, Owner, StoredState, states_by_range
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
#: Serialises migrations of one database by concurrent first runs (an arbitrary constant).
_MIGRATION_LOCK = 0x1A6E57

_COLUMNS = "path, size, mtime_ns, md5, state, remote_id, task_id, extra, attempts, last_error, run_id, updated_at"
_UNFINISHED_SQL = "('" + "', '".join(UNFINISHED) + "')"
_LEASE = "clock_timestamp() + make_interval(secs => %s)"
#: Transient conflicts between concurrent transactions: the whole group is simply committed again.
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


#: Every set-based row starts with these: the job and path (the primary key), and the owner and fence it
#: is fenced on (NULL: not fenced). The job is a column of the rows, not a constant of the statement: the
#: planner then joins the group's rows to the table by primary key, one index lookup per row, whatever
#: its statistics say about the job (a constant ``job = %s`` lets it believe a job just walked is a few
#: rows and scan the whole job through one of the ``(job, …)`` indexes for every group). The writer's
#: connection also rules out hash and merge joins, which a table of some 10,000s of rows would get.
_KEY = (("job", "text"), ("path", "text"), ("owner", "text"), ("fence", "bigint"))
#: The fence of a set-based write, per row: what ``_fence`` adds to a single-row statement.
_FENCED = "(v.owner IS NULL OR (f.owner = v.owner AND f.fence = v.fence))"


def _unnest(cols: Sequence[tuple[str, str]]) -> str:
    """``unnest(%(job)b::text[], %(path)b::text[], …) AS v(job, path, …)``: a group's rows, one array per
    column, sent in binary (half the client's time of the text form: no quoting, no float formatting)."""
    every = (*_KEY, *cols)
    arrays = ", ".join(f"%({name})b::{type_}[]" for name, type_ in every)
    return f"unnest({arrays}) AS v({', '.join(name for name, _ in every)})"


@dataclass(frozen=True, slots=True)
class _SetWrite:
    """One kind of write applied to all the rows of a group in one statement (rather than one statement
    per row). ``update`` takes every row, fenced per row, and returns the paths it changed: a fenced path
    not returned is lost. An upsert kind (the row may not exist yet) also has ``upsert``, for the
    unfenced rows: ``INSERT … ON CONFLICT DO UPDATE``, as the single-row statement; its ``update`` then
    only gets fenced rows, updates those the owner holds and inserts those that do not exist, as the
    single-row statement does (a row held by another owner or fence is left alone and reported lost)."""

    cols: tuple[tuple[str, str], ...]
    update: str
    upsert: str | None = None

    def params(self, rows: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
        """The rows ``(job, path, owner, fence, *cols)`` as one array per column."""
        names = [name for name, _ in (*_KEY, *self.cols)]
        return {name: list(column) for name, column in zip(names, zip(*rows, strict=True), strict=True)}


def _with_v(cols: tuple[tuple[str, str], ...], retire: str | None) -> str:
    """``WITH v AS (the group's rows)``, and with ``retire`` (the remote id the write records, or NULL)
    a ``retired`` step keeping each row's current remote id in ``ingest_versions`` first, to be deleted
    once the new version is done (``ingest.manifest.versions``). Every step of one statement reads the
    rows as they were before it, so the id kept is the one the write replaces. Unfenced: the version
    exists whoever holds the row."""
    sql = f"WITH v AS MATERIALIZED (SELECT * FROM {_unnest(cols)})"
    if retire is not None:
        sql += (
            ", retired AS (INSERT INTO ingest_versions (job, path, remote_id, reason, run_id, created_at)"
            " SELECT g.job, g.path, g.remote_id, CASE WHEN g.state = 'done' THEN 'replaced' ELSE 'attempt' END,"
            " v.run_id, v.ts FROM v JOIN ingest_files g ON g.job = v.job AND g.path = v.path"
            f" WHERE g.remote_id IS NOT NULL AND g.remote_id IS DISTINCT FROM {retire} ON CONFLICT DO NOTHING)"
        )
    return sql


def _set_update(cols: tuple[tuple[str, str], ...], assign: str, retire: str | None = None) -> str:
    if retire is None:
        return (
            f"UPDATE ingest_files f SET {assign} FROM {_unnest(cols)}"
            f" WHERE f.job = v.job AND f.path = v.path AND {_FENCED} RETURNING f.path"
        )
    return (
        f"{_with_v(cols, retire)} UPDATE ingest_files f SET {assign} FROM v"
        f" WHERE f.job = v.job AND f.path = v.path AND {_FENCED} RETURNING f.path"
    )


def _set_upsert(cols: tuple[tuple[str, str], ...], assign: str, insert: str, values: str, retire: str | None) -> str:
    """The fenced rows of an upsert kind: the held rows updated, the absent ones inserted (both steps see
    the rows as they were before the statement: a row is either updated or inserted, never both)."""
    return (
        f"{_with_v(cols, retire)},"
        f" changed AS (UPDATE ingest_files f SET {assign} FROM v WHERE f.job = v.job AND f.path = v.path"
        f" AND {_FENCED} RETURNING f.path),"
        f" added AS (INSERT INTO ingest_files ({insert}) SELECT {values} FROM v WHERE NOT EXISTS"
        " (SELECT FROM ingest_files g WHERE g.job = v.job AND g.path = v.path)"
        " ON CONFLICT (job, path) DO NOTHING RETURNING path)"
        " SELECT path FROM changed UNION ALL SELECT path FROM added"
    )


_UPLOADING_COLS = (
    ("size", "bigint"), ("mtime_ns", "bigint"), ("dedup", "boolean"), ("run_id", "bigint"), ("ts", "float8"),
)  # fmt: skip
_UPLOADING_INSERT = "job, path, size, mtime_ns, state, attempts, dedup, run_id, created_at, updated_at"
_UPLOADING_VALUES = "v.job, v.path, v.size, v.mtime_ns, 'uploading', 1, v.dedup, v.run_id, v.ts, v.ts"
_MARK_UPLOADING = _SetWrite(
    _UPLOADING_COLS,
    _set_upsert(
        _UPLOADING_COLS,
        "size = v.size, mtime_ns = v.mtime_ns, state = 'uploading', attempts = f.attempts + 1, dedup = v.dedup,"
        " run_id = v.run_id, last_error = NULL, remote_id = NULL, task_id = NULL, extra = NULL, md5 = NULL,"
        " updated_at = v.ts",
        _UPLOADING_INSERT,
        _UPLOADING_VALUES,
        "NULL",
    ),
    f"{_with_v(_UPLOADING_COLS, 'NULL')} INSERT INTO ingest_files AS f ({_UPLOADING_INSERT})"
    f" SELECT {_UPLOADING_VALUES} FROM v"
    " ON CONFLICT (job, path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, state = 'uploading',"
    " attempts = f.attempts + 1, dedup = excluded.dedup, run_id = excluded.run_id, last_error = NULL,"
    " remote_id = NULL, task_id = NULL, extra = NULL, md5 = NULL, updated_at = excluded.updated_at",
)
_PROCESSING_COLS = (
    ("remote_id", "text"), ("task_id", "text"), ("extra", "text"), ("md5", "text"), ("run_id", "bigint"),
    ("ts", "float8"), ("bump", "integer"),
)  # fmt: skip
_MARK_PROCESSING = _SetWrite(
    _PROCESSING_COLS,
    _set_update(
        _PROCESSING_COLS,
        "state = 'processing', remote_id = v.remote_id, task_id = v.task_id, extra = v.extra,"
        " md5 = COALESCE(v.md5, f.md5), run_id = v.run_id,"
        " updated_at = v.ts, attempts = f.attempts + v.bump",
        "v.remote_id",  # a retry may bring a new id
    ),
)
_DONE_COLS = (("run_id", "bigint"), ("ts", "float8"))
_MARK_DONE = _SetWrite(
    _DONE_COLS,
    _set_update(
        _DONE_COLS,
        "state = 'done', last_error = NULL, run_id = v.run_id, updated_at = v.ts, owner = NULL, lease_until = NULL",
    ),
)
_FAILED_COLS = (("reason", "text"), ("run_id", "bigint"), ("ts", "float8"))
_FAILED_INSERT = "job, path, state, last_error, run_id, created_at, updated_at"
_FAILED_VALUES = "v.job, v.path, 'failed', v.reason, v.run_id, v.ts, v.ts"
_MARK_FAILED = _SetWrite(
    _FAILED_COLS,
    _set_upsert(
        _FAILED_COLS,
        "state = 'failed', last_error = v.reason, run_id = v.run_id, updated_at = v.ts, owner = NULL,"
        " lease_until = NULL",
        _FAILED_INSERT,
        _FAILED_VALUES,
        None,
    ),
    f"INSERT INTO ingest_files AS f ({_FAILED_INSERT}) SELECT {_FAILED_VALUES} FROM {_unnest(_FAILED_COLS)}"
    " ON CONFLICT (job, path) DO UPDATE SET state = 'failed', last_error = excluded.last_error,"
    " run_id = excluded.run_id, updated_at = excluded.updated_at, owner = NULL, lease_until = NULL",
)
_ERROR_COLS = (("reason", "text"), ("ts", "float8"))
_NOTE_ERROR = _SetWrite(_ERROR_COLS, _set_update(_ERROR_COLS, "last_error = v.reason, updated_at = v.ts"))
_LEASE_COLS = (("lease", "float8"),)
_CONFIRM_LEASE = _SetWrite(
    _LEASE_COLS, _set_update(_LEASE_COLS, "lease_until = clock_timestamp() + make_interval(secs => v.lease)")
)
#: Up to ``limit`` rows, nobody's first, then rows whose holder's lease expired (taken over): the outer
#: LIMIT stops the UNION ALL before it reads the second kind when the first fills the batch. SKIP LOCKED:
#: concurrent claimers pass over each other's rows instead of queueing on them. Each kind is read
#: through its partial index (the expiry is computed once, not per row, so it is an index condition on
#: ``ingest_files_held``: only expired leases are read, not every held row). The claimant's takeover
#: count is bumped in the same statement.
_CLAIM = (
    "WITH picked AS (SELECT * FROM (SELECT path, owner AS previous FROM ingest_files WHERE job = %(job)s"
    f" AND owner IS NULL AND state IN {_UNFINISHED_SQL} LIMIT %(limit)s FOR UPDATE SKIP LOCKED) free"
    " UNION ALL SELECT * FROM (SELECT path, owner FROM ingest_files WHERE job = %(job)s AND owner IS NOT NULL"
    " AND lease_until < (SELECT clock_timestamp()) LIMIT %(limit)s FOR UPDATE SKIP LOCKED) expired"
    " LIMIT %(limit)s),"
    " claimed AS (UPDATE ingest_files f SET owner = %(worker)s,"
    " lease_until = clock_timestamp() + make_interval(secs => %(lease)s), fence = f.fence + 1"
    " FROM picked WHERE f.job = %(job)s AND f.path = picked.path"
    f" RETURNING {', '.join('f.' + c.strip() for c in _COLUMNS.split(','))}, f.fence, picked.previous),"
    " counted AS (UPDATE ingest_workers SET takeovers = takeovers + t.n"
    " FROM (SELECT count(*) AS n FROM claimed WHERE previous <> %(worker)s) t"
    " WHERE job = %(job)s AND id = %(worker)s AND t.n > 0)"
    " SELECT * FROM claimed"
)
#: A statement of a ``Write`` whose SQL is one of these is a row ``(path, owner, fence, *cols)`` of that kind.
_SET_WRITES = {
    kind.update: kind
    for kind in (_MARK_UPLOADING, _MARK_PROCESSING, _MARK_DONE, _MARK_FAILED, _NOTE_ERROR, _CONFIRM_LEASE)
}


def _record(row: Sequence[Any]) -> FileRecord:
    return FileRecord(
        path=row[0],
        size=row[1],
        mtime_ns=row[2],
        md5=row[3],
        state=FileState(row[4]),
        remote_id=row[5],
        task_id=row[6],
        extra=JsonObject(row[7]),
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


#: A statement of a group, queued for the commit: SQL, parameters, fenced path, and its caller's write.
_Queued = tuple[str, tuple[Any, ...], str | None, Write]


def _row(kind: _SetWrite, job: str, owner: Owner | None, path: str, *values: Any) -> Stmt:
    """One row of a set-based write, fenced like ``_fence``: ``(job, path, owner, fence, *values)``."""
    if owner is None or path not in owner.fences:
        return kind.update, (job, path, None, None, *values), None
    return kind.update, (job, path, owner.worker, owner.fences[path], *values), path


class PostgresManifest:
    """One job of a PostgreSQL database, with the ``Manifest`` and ``JobStore`` contracts."""

    def __init__(self, location: PostgresLocation, job: str) -> None:
        self.location = location
        self.job = job
        self.path = location.redacted  # what summaries and messages show
        self._lockconn: psycopg.Connection[Any] | None = None
        try:
            # Autocommit: a single statement commits on its own; several go in ``transaction()``.
            self._wconn = self._connect(autocommit=True)
            self._rconn = self._connect(autocommit=True)
            self._migrate()
            # Everything the writer's connection runs touches a few rows found by key (a group's rows,
            # a claim's batch, one worker's leases): never let the planner hash or merge a group with
            # the whole job (it would for a table of some 10,000s of rows, or a job its statistics have
            # not seen yet), but look each row up by primary key.
            self._wconn.execute("SET enable_hashjoin = off")
            self._wconn.execute("SET enable_mergejoin = off")
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

    def lookup_states(self, paths: Sequence[str]) -> dict[str, StoredState]:
        return states_by_range(paths, self._states_between, self._states_in)

    def _states_between(self, lo: str, hi: str, limit: int) -> list[StoredState]:
        # In the database's collation, which may order paths otherwise than Python: ``states_by_range``
        # reads whatever this range missed by name.
        rows = self._rconn.execute(
            "SELECT path, size, mtime_ns, state FROM ingest_files WHERE job = %s AND path BETWEEN %s AND %s LIMIT %s",
            (self.job, lo, hi, limit),
        ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def _states_in(self, paths: Sequence[str]) -> dict[str, StoredState]:
        rows = self._rconn.execute(
            "SELECT path, size, mtime_ns, state FROM ingest_files WHERE job = %s AND path = ANY(%s)",
            (self.job, list(paths)),
        ).fetchall()
        return {r[0]: (r[0], r[1], r[2], r[3]) for r in rows}

    def is_empty(self) -> bool:
        return self._one("SELECT 1 FROM ingest_files WHERE job = %s LIMIT 1", (self.job,)) is None

    def counts(self) -> dict[str, int]:
        rows = self._rconn.execute(
            "SELECT state, count(*) FROM ingest_files WHERE job = %s GROUP BY state", (self.job,)
        ).fetchall()
        found = {r[0]: int(r[1]) for r in rows}
        return {state.value: found.get(state.value, 0) for state in FileState}

    def file_count(self) -> int:
        return int(self._one("SELECT count(*) FROM ingest_files WHERE job = %s", (self.job,)))

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
        # One statement per kind of write for the whole group (``_SET_WRITES``: the rows go as arrays
        # through ``unnest``): each caller's rows are all of one kind, so each kind's statement commits
        # on its own, in autocommit: one round trip, and the server never holds a row lock waiting for
        # this process (a worker paused mid-commit would otherwise keep its rows from being taken
        # over). Any other statements (the walk, a worker's stop: several statements of one caller)
        # go together in one transaction, one executemany per SQL text. Sorting by SQL, then path,
        # gives every statement the same lock order: no deadlocks between workers committing
        # overlapping groups (one that happens anyway is retried: nothing of it was committed).
        stmts = sorted(
            ((sql, params, fenced, write) for write in writes for sql, params, fenced in write.stmts),
            key=lambda s: (s[0], s[1][1] if s[0] in _SET_WRITES else s[2] or ""),
        )
        others: list[_Queued] = []
        for sql, group_iter in groupby(stmts, key=lambda s: s[0]):
            group = list(group_iter)
            kind = _SET_WRITES.get(sql)
            if kind is None:
                others += group
                continue
            planned = self._plan_set(kind, group)
            for write, path in self._retrying(partial(self._run_set, planned)):
                write.lost.add(path)
        if others:
            for write, path in self._retrying(partial(self._run_others, others)):
                write.lost.add(path)

    def _retrying(self, run: Callable[[], list[tuple[Write, str]]]) -> list[tuple[Write, str]]:
        """``run()`` (one statement, or one transaction), again after a transient conflict; the lost
        paths it reports, once it committed."""
        for attempt in range(8):
            try:
                return run()
            except _RETRYABLE:
                if attempt == 7:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _plan_set(self, kind: _SetWrite, group: list[_Queued]) -> list[tuple[str, list[_Queued]]]:
        """The statements of one kind (rows sorted by path): usually one. A path written twice in one
        group goes in a second round, after the first, as single-row statements did; an upsert kind's
        unfenced rows take ``upsert``."""
        rounds: list[list[_Queued]] = []
        seen: dict[str, int] = {}
        for stmt in group:
            n = seen.get(stmt[1][1], 0)
            seen[stmt[1][1]] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(stmt)
        planned: list[tuple[str, list[_Queued]]] = []
        for stmts in rounds:
            if kind.upsert is not None and (free := [s for s in stmts if s[2] is None]):
                planned.append((kind.upsert, free))
                stmts = [s for s in stmts if s[2] is not None]
            if stmts:
                planned.append((kind.update, stmts))
        return planned

    def _run_set(self, planned: list[tuple[str, list[_Queued]]]) -> list[tuple[Write, str]]:
        conn = self._wconn
        lost: list[tuple[Write, str]] = []
        # Several statements (rare) are one transaction, as one caller's write must be.
        with conn.transaction() if len(planned) > 1 else nullcontext():
            for sql, stmts in planned:
                cur = conn.execute(sql, _SET_WRITES[stmts[0][0]].params([s[1] for s in stmts]))
                if sql == _SET_WRITES[stmts[0][0]].upsert:
                    continue  # unfenced rows: nothing to lose
                changed = {r[0] for r in cur.fetchall()}
                lost += [(write, path) for _, _, path, write in stmts if path is not None and path not in changed]
        return lost

    def _run_others(self, stmts: list[_Queued]) -> list[tuple[Write, str]]:
        conn = self._wconn
        lost: list[tuple[Write, str]] = []
        with conn.transaction(), conn.cursor() as cur:
            for sql, group_iter in groupby(stmts, key=lambda s: s[0]):
                group = list(group_iter)
                if all(s[2] is None for s in group):
                    cur.executemany(sql, [s[1] for s in group])
                    continue
                cur.executemany(sql + " RETURNING 1", [s[1] for s in group], returning=True)
                for _, _, fenced, write in group:
                    if cur.fetchone() is None and fenced is not None:
                        lost.append((write, fenced))
                    cur.nextset()
        return lost

    async def mark_uploading(
        self, items: Sequence[FileItem], run_id: int, *, dedup: bool, owner: Owner | None = None
    ) -> set[str]:
        """The intent record: committed before any byte of these files is sent."""
        now = time.time()
        # The statement keeps each row's current remote id as an earlier version first (``_with_v``).
        stmts = [
            _row(_MARK_UPLOADING, self.job, owner, item.rel_path, item.size, item.mtime_ns, dedup, run_id, now)
            for item in items
        ]
        return await self._writer.write(stmts)

    async def mark_processing(
        self, receipts: Sequence[Receipt], run_id: int, *, retried: bool = False, owner: Owner | None = None
    ) -> set[str]:
        now = time.time()
        bump = 1 if retried else 0
        # The statement keeps a row's remote id as an earlier version when a retry brings a new one.
        stmts = [
            _row(
                _MARK_PROCESSING,
                self.job,
                owner,
                r.rel_path,
                r.remote_id,
                r.task_id,
                json.dumps(r.extra) if r.extra else None,
                r.extra.get("md5"),
                run_id,
                now,
                bump,
            )
            for r in receipts
        ]
        return await self._writer.write(stmts)

    async def mark_done(self, paths: Sequence[str], run_id: int, *, owner: Owner | None = None) -> set[str]:
        now = time.time()
        return await self._writer.write([_row(_MARK_DONE, self.job, owner, path, run_id, now) for path in paths])

    async def mark_failed(
        self, failures: Sequence[tuple[str, str]], run_id: int, *, owner: Owner | None = None
    ) -> set[str]:
        now = time.time()
        return await self._writer.write(
            [_row(_MARK_FAILED, self.job, owner, path, reason, run_id, now) for path, reason in failures]
        )

    async def note_error(self, path: str, reason: str, *, owner: Owner | None = None) -> None:
        await self._writer.write([_row(_NOTE_ERROR, self.job, owner, path, reason, time.time())])

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
            # One statement, committed on its own (autocommit): no window in which this process holds
            # the locks of all its rows while the server waits for it.
            row = self._wconn.execute(
                f"WITH extended AS (UPDATE ingest_files SET lease_until = {_LEASE} WHERE job = %s AND owner = %s"
                " RETURNING 1)"
                " UPDATE ingest_workers SET heartbeat_at = %s, claimed = %s, done = %s, lost = %s"
                " WHERE job = %s AND id = %s RETURNING (SELECT count(*) FROM extended)",
                (lease, self.job, worker, time.time(), claimed, done, lost, self.job, worker),
            ).fetchone()
            if row is not None:
                return int(row[0])
            return int(  # a worker never registered: still extend its leases
                self._wconn.execute(
                    f"UPDATE ingest_files SET lease_until = {_LEASE} WHERE job = %s AND owner = %s",
                    (lease, self.job, worker),
                ).rowcount
            )

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
            # One statement, committed on its own (autocommit): one round trip, and no window in which
            # this process holds the claimed rows' locks while the server waits for it.
            params = {"job": self.job, "worker": worker, "limit": limit, "lease": lease}
            rows = self._wconn.execute(_CLAIM, params).fetchall()
            return [Claim(_record(r), int(r[12]), r[13] is not None and r[13] != worker) for r in rows]

        return await self._writer.run_sync(take)

    async def confirm_lease(self, owner: Owner, paths: Sequence[str], lease: float) -> set[str]:
        return await self._writer.write([_row(_CONFIRM_LEASE, self.job, owner, path, lease) for path in paths])

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
