"""The on-disk state every emulator keeps: one SQLite database behind one lock, and a staging folder.

Synchronous on purpose: a store's methods run in worker threads (``anyio.to_thread``) under its one
lock, which also makes each check-then-write atomic against concurrent requests. Bodies are received
into ``<data_dir>/.staging`` and moved into place only once their request is valid.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import anyio

__all__ = ["STALE_STAGING_SECONDS", "SqliteStore", "discard_staged", "remove_stale_staging"]

T = TypeVar("T")

#: Staging entries untouched this long are leftovers of a killed emulator.
STALE_STAGING_SECONDS = 3600


class SqliteStore:
    """Opens ``<data_dir>/<db_name>`` (WAL, autocommit) with ``schema`` applied, and the staging folder.

    Subclasses keep their data in ``self._db``, read it under ``self._lock`` and write it in
    ``self._transaction()``.
    """

    def __init__(self, data_dir: Path, db_name: str, schema: str) -> None:
        self.data_dir = data_dir
        self.staging_dir = data_dir / ".staging"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(self.staging_dir)
        self._limiter: anyio.CapacityLimiter | None = None
        #: Calls waiting for the next group commit (``grouped``), with the futures of their callers.
        self._group: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._committing: asyncio.Task[None] | None = None
        #: What the open transaction does once committed (``after_commit``).
        self._after_commit: list[Callable[[], None]] = []
        # Re-entrant so that ``run`` can hold it around a method that takes it again.
        self._lock = threading.RLock()
        # One connection shared by the worker threads, serialised by the lock; transactions are explicit.
        self._db = sqlite3.connect(data_dir / db_name, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Each call of a group commit is a savepoint, and SQLite journals the pages a savepoint changes in
        # a statement journal that spills past 64 KiB to a temporary file in /var/tmp: with the group's
        # bodies in the database, that was a file created and removed per group and ~34 writes per small
        # upload (strace). In memory it holds what the group changes, which the group holds in memory
        # anyway; it only ever serves a ROLLBACK TO, so nothing durable depends on it.
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.executescript(schema)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def run(self, call: Callable[[], T]) -> T:
        """Run a short store call (a point lookup, one small request's commit) on the event loop when the
        lock is free, else in a worker thread.

        A worker-thread round trip (queue, wake-up, ``call_soon_threadsafe``) cost more CPU than the
        lookups themselves: two thirds of a status request's. Inline, the loop is blocked for the call's
        duration, so only calls that touch a bounded amount of data belong here; when another thread
        holds the lock the call hops as before, so the loop never waits for the lock.
        """
        if self._lock.acquire(blocking=False):
            try:
                return call()
            finally:
                self._lock.release()
        return await self.in_thread(call)

    async def in_thread(self, call: Callable[[], T]) -> T:
        """Run a store call in a worker thread, one such call at a time.

        They would run one at a time anyway (the lock); queued here, a burst of 32 uploads waits as 32
        cheap futures on the loop instead of 32 worker threads blocked on the lock, each woken in turn
        and each taking its own turn at the GIL.
        """
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)  # created here: it needs the running event loop
        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    async def grouped(self, call: Callable[[], T]) -> T:
        """Run a write call (one ``_transaction()``) in a worker thread together with every other such
        call waiting at that moment: one thread hop and one SQLite commit for the group.

        One small upload used to pay a hop there and back and a commit of its own, and a burst of 32
        uploads paid 32 of each, one after another (the lock serialised them anyway). In a group each
        call's ``_transaction()`` is a savepoint of the group's transaction, so a call that fails (an
        ``ApiError``) leaves no trace and the others still commit. No caller gets its result before the
        group's ``COMMIT``: an answer built from it promises only what is committed.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._group.append((call, future))
        if self._committing is None:
            self._committing = asyncio.get_running_loop().create_task(self._commit_groups())
        # Shielded, as ``anyio.to_thread.run_sync`` is: a cancelled request (a dropped connection) still
        # waits for its commit, so the caller's clean-up of staged bodies never races the commit's moves.
        with anyio.CancelScope(shield=True):
            result = await future
        return result

    async def _commit_groups(self) -> None:
        try:
            while self._group:
                group, self._group = self._group, []
                calls = [call for call, _ in group]
                try:
                    outcomes = await self.in_thread(functools.partial(self._commit_group, calls))
                except Exception as exc:  # the COMMIT itself failed: nothing of the group is stored
                    outcomes = [(False, exc)] * len(group)
                for (_, future), (ok, value) in zip(group, outcomes, strict=True):
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._committing = None

    def _commit_group(self, calls: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        """Every call in one transaction, each one's failure its own: (True, result) or (False, exception)."""
        outcomes: list[tuple[bool, Any]] = []
        with self._transaction():
            for call in calls:
                try:
                    outcomes.append((True, call()))
                except Exception as exc:
                    outcomes.append((False, exc))
        return outcomes

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock. ``BEGIN IMMEDIATE`` takes SQLite's write lock up front,
        so a read-then-write cannot fail half-way because another connection (a second emulator on the
        same data dir) started writing meanwhile. Inside a transaction already (a call of a ``grouped``
        commit) it is a savepoint instead: all or nothing for this call, committed with the group."""
        with self._lock:
            if self._db.in_transaction:
                yield from self._savepoint()
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                self._after_commit.clear()
                raise
            try:
                self._db.execute("COMMIT")
            finally:
                actions, self._after_commit = self._after_commit, []
            for action in actions:
                action()

    def _savepoint(self) -> Iterator[sqlite3.Connection]:
        planned = len(self._after_commit)
        self._db.execute("SAVEPOINT call")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK TO call")
            self._db.execute("RELEASE call")
            del self._after_commit[planned:]  # what the rolled-back call planned is not to happen
            raise
        self._db.execute("RELEASE call")

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the open transaction is committed, never if it is rolled back: for file
        system changes that must not happen before the rows that need them are durable (removing a body
        the committed rows no longer point at). ``action`` must not raise: the commit is done."""
        self._after_commit.append(action)


def remove_stale_staging(staging_dir: Path) -> None:
    """Remove bodies that killed emulators left in staging, half received or half fetched.

    Only old ones: another emulator on the same data dir may be receiving a body right now, and a body
    being received is written every few milliseconds, so an hour-old one belongs to no live request.
    """
    cutoff = time.time() - STALE_STAGING_SECONDS
    for entry in staging_dir.iterdir():
        with suppress(OSError):
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                entry.unlink()


def discard_staged(paths: Iterable[Path]) -> None:
    """Remove staged files that were not moved into place (moved ones are already gone)."""
    for path in paths:
        with suppress(FileNotFoundError):
            path.unlink()
