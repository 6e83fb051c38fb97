"""Earlier versions and delete intents: the manifest's record of documents it created that are not (or no
longer) the current version of a file, in both backends.

A row is written in the same transaction that overwrites a file's remote id (``mark_uploading`` of a
changed file, a retry that brings a new id: ``_retire`` in ``ingest.manifest.sqlite`` and the
``retired`` step of the set-based writes in ``ingest.manifest.postgres``), when ``--delete`` finds
a file gone from the source (``remove_files``), or when a failed file is gone from it (``forget_failed``).
It lives until the platform confirmed the document gone. States:

- ``retired``: an earlier version, still on the platform; deleted once its successor is done
  (``version_ids == "new"``: make before break) or before the successor is sent (``"same"``).
- ``deleting``: the delete intent is committed; the call may or may not have happened. A crash here is
  resumed by the next run: ``Target.delete`` is idempotent.

Reasons: ``replaced`` (a new version of the same path), ``attempt`` (a failed or cut-short send of it),
``removed`` (the path left the source), ``duplicate`` (found by ``ingest verify`` next to the current
version, deleted by ``--fix``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ingest.manifest.base import FileRecord, Manifest
from ingest.manifest.groupcommit import Stmt

__all__ = ["Version", "VersionStore"]


@dataclass(frozen=True, slots=True)
class Version:
    path: str
    remote_id: str
    state: str
    reason: str


class VersionStore:
    """The ``versions`` rows of one manifest (SQLite ``versions``, PostgreSQL ``ingest_versions``)."""

    def __init__(self, manifest: Manifest) -> None:
        from ingest.manifest.sqlite import SqliteManifest

        self.manifest: Any = manifest
        self._sqlite = isinstance(manifest, SqliteManifest)
        self._params: tuple[Any, ...] = ()
        if self._sqlite:
            self._table, self._files, self._scope = "versions", "files", ""
        else:
            job = manifest.job  # type: ignore[attr-defined]
            self._table, self._files, self._scope, self._params = (
                "ingest_versions",
                "ingest_files",
                "job = ? AND ",
                (job,),
            )

    def _sql(self, sql: str) -> str:
        return sql if self._sqlite else sql.replace("?", "%s")

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return list(self.manifest._rconn.execute(self._sql(sql), tuple(params)).fetchall())

    async def _write(self, stmts: list[Stmt]) -> None:
        await self.manifest._writer.write([(self._sql(sql), params, fenced) for sql, params, fenced in stmts])

    # ----- reads ----------------------------------------------------------------------------------

    def iter(self, *, paths: Sequence[str] | None = None, page: int = 500) -> Iterator[Version]:
        """Every row (or the rows of ``paths``), in (path, remote_id) order, read in pages."""
        cols = "path, remote_id, state, reason"
        if paths is not None:
            for start in range(0, len(paths), page):
                chunk = list(paths[start : start + page])
                marks = ",".join("?" * len(chunk))
                rows = self._rows(
                    f"SELECT {cols} FROM {self._table} WHERE {self._scope}path IN ({marks}) ORDER BY path, remote_id",
                    (*self._params, *chunk),
                )
                yield from (Version(*r) for r in rows)
            return
        last = ("", "")
        while True:
            rows = self._rows(
                f"SELECT {cols} FROM {self._table} WHERE {self._scope}(path > ? OR (path = ? AND remote_id > ?))"
                " ORDER BY path, remote_id LIMIT ?",
                (*self._params, last[0], last[0], last[1], page),
            )
            if not rows:
                return
            yield from (Version(*r) for r in rows)
            last = (rows[-1][0], rows[-1][1])

    def count(self) -> dict[str, int]:
        rows = self._rows(
            f"SELECT reason, COUNT(*) FROM {self._table} WHERE {self._scope}1 = 1 GROUP BY reason", self._params
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def by_remote_id(self, remote_id: str) -> Version | None:
        rows = self._rows(
            f"SELECT path, remote_id, state, reason FROM {self._table} WHERE {self._scope}remote_id = ? LIMIT 1",
            (*self._params, remote_id),
        )
        return Version(*rows[0]) if rows else None

    def file_by_remote_id(self, remote_id: str) -> FileRecord | None:
        rows = self._rows(
            f"SELECT path FROM {self._files} WHERE {self._scope}remote_id = ? LIMIT 1", (*self._params, remote_id)
        )
        return self.manifest.lookup(rows[0][0]) if rows else None

    # ----- writes (each awaits its commit) ----------------------------------------------------------

    async def intend(self, versions: Sequence[Version]) -> None:
        """The delete intent: committed before ``Target.delete`` is called."""
        now = time.time()
        if self._sqlite:
            sql = (
                "INSERT INTO versions (path, remote_id, state, reason, created_at) VALUES (?, ?, 'deleting', ?, ?)"
                " ON CONFLICT(path, remote_id) DO UPDATE SET state = 'deleting'"
            )
        else:
            sql = (
                "INSERT INTO ingest_versions (job, path, remote_id, state, reason, created_at)"
                " VALUES (?, ?, ?, 'deleting', ?, ?)"
                " ON CONFLICT (job, path, remote_id) DO UPDATE SET state = 'deleting'"
            )
        await self._write([(sql, (*self._params, v.path, v.remote_id, v.reason, now), None) for v in versions])

    async def forget(self, versions: Sequence[Version]) -> None:
        """The platform confirmed these gone (or they turned out to be the current version)."""
        sql = f"DELETE FROM {self._table} WHERE {self._scope}path = ? AND remote_id = ?"
        await self._write([(sql, (*self._params, v.path, v.remote_id), None) for v in versions])

    async def remove_files(self, paths: Sequence[str], run_id: int) -> None:
        """Files gone from the source, under ``--delete``: their documents become ``removed`` versions and
        their file rows go, in one transaction (the documents are deleted after the run's sends)."""
        await self._remove(paths, run_id, reason="removed", only_failed=False)

    async def forget_failed(self, paths: Sequence[str], run_id: int) -> None:
        """Failed files gone from the source: their failure no longer applies, so their rows go. A document
        the platform holds for one (it failed there) is a failed ``attempt``, cleaned up like any other.
        A row that is no longer ``failed`` (a concurrent walk found the file back) is left alone."""
        await self._remove(paths, run_id, reason="attempt", only_failed=True)

    async def _remove(self, paths: Sequence[str], run_id: int, *, reason: str, only_failed: bool) -> None:
        now = time.time()
        ignore = "OR IGNORE " if self._sqlite else ""
        conflict = "" if self._sqlite else " ON CONFLICT DO NOTHING"
        cols = "job, path" if not self._sqlite else "path"
        failed = " AND state = 'failed'" if only_failed else ""
        stmts: list[Stmt] = []
        for path in paths:
            stmts.append(
                (
                    f"INSERT {ignore}INTO {self._table} ({cols}, remote_id, state, reason, run_id, created_at)"
                    f" SELECT {cols}, remote_id, 'retired', ?, ?, ? FROM {self._files}"
                    f" WHERE {self._scope}path = ? AND remote_id IS NOT NULL{failed}{conflict}",
                    (reason, run_id, now, *self._params, path),
                    None,
                )
            )
            stmts.append(
                (f"DELETE FROM {self._files} WHERE {self._scope}path = ?{failed}", (*self._params, path), None)
            )
        if not self._sqlite:
            # The PostgreSQL writer orders a group's statements by their text: keep each pair together.
            stmts = [
                (f"WITH moved AS ({s[0]}) {d[0]}", (*s[1], *d[1]), None)
                for s, d in zip(stmts[::2], stmts[1::2], strict=True)
            ]
        await self._write(stmts)

    async def note_meta(self, values: dict[str, str]) -> None:
        """Meta entries written through the writer (``set_meta`` is for before the writer starts)."""
        if self._sqlite:
            sql = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
        else:
            sql = "INSERT INTO ingest_meta VALUES (?, ?, ?) ON CONFLICT (job, key) DO UPDATE SET value = excluded.value"
        await self._write([(sql, (*self._params, k, v), None) for k, v in values.items()])

    async def forget_remote(self, path: str) -> None:
        """Mark a file's current document missing: the next send makes a new one (``verify --fix``)."""
        await self._write(
            [
                (
                    f"UPDATE {self._files} SET state = 'failed', remote_id = NULL, task_id = NULL,"
                    f" last_error = 'missing on the platform (ingest verify)' WHERE {self._scope}path = ?",
                    (*self._params, path),
                    None,
                )
            ]
        )
