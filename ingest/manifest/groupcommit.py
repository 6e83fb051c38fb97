"""Group commit, shared by the backends: one writer task turns many small writes into few transactions.

Callers ``await`` their write and return once the transaction carrying it is committed; every write
queued while a commit runs rides in the next one. The backend supplies ``commit(writes)``, which runs
all statements of a group in one transaction (in a worker thread: the drivers are synchronous) and
fills in, per write, the fenced paths a statement did not change.

A write whose loss in a crash the next run repairs (``write_later``: the record that the platform
accepted a file, which falls back to "uploading", resent with dedup) is not waited for: it rides in the
next commit someone waits for, or after ``LATER_LINGER`` seconds, and always before the writer stops.
Each commit is a thread hop and a transaction; a file's three writes were most of a commit each.

A backend whose commit is short and local (SQLite: no fsync per commit in WAL mode) also supplies
``commit_here(writes)``, which commits a small group (``HERE_MAX_STMTS``) on the event loop's own thread
unless it would have to wait for the database (another process holds its write lock) and then says so:
the commit goes to a worker thread as before. A thread hop was ~3 ms of a file's wait for its intent
record, for a 0.5 ms transaction, and each hop's hand-over (``Condition.notify`` for the thread, the GIL
back and forth) was ~8 % of the event loop's time with one file per request (benchmarks/README.md,
Issue 11 item 20). Nor does a commit on the loop do SQLite's slow work (the log's checkpoint, an fsync):
every ``HERE_STREAK_MAX``-th commit in a row goes to a worker thread, where that happens.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["GroupCommit", "Stmt", "Write"]

T = TypeVar("T")

#: Longest a ``write_later`` waits for a commit to ride in (seconds).
LATER_LINGER = 1.0

#: Most statements a commit may hold to run on the event loop's thread (``commit_here``). A bigger one
#: (a batch's intents, a poll's done files) goes to a worker thread, where the driver releases the GIL
#: while SQLite works: on the loop it held up the planner, and batches went out part-filled.
HERE_MAX_STMTS = 24
#: After this many commits in a row on the loop's thread, the next goes to a worker thread all the same.
#: A commit there may checkpoint the log (SQLite's automatic checkpoint, an fsync of the database: 10-30 ms
#: seen), which a commit on the loop never does (``commit_here``'s contract); without this, a run of small
#: commits would let the log grow for ever. 128 small commits write a few hundred log pages, against the
#: 1,000 at which SQLite checkpoints.
HERE_STREAK_MAX = 128

#: One statement: SQL, parameters, and the path it is fenced on (``None``: not fenced). A fenced
#: statement that changes no row means the file is no longer this process's.
Stmt = tuple[str, tuple[Any, ...], str | None]


@dataclass(slots=True)
class Write:
    stmts: list[Stmt]
    lost: set[str] = field(default_factory=set)


class _Group:
    """The writes queued for the next commit, and one event for all of them."""

    __slots__ = ("done", "writes")

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.done = anyio.Event()


class GroupCommit:
    """The writer of one manifest connection. ``running()`` runs it for the duration of a block and
    drains it on exit (normal, error or cancellation), so an interrupted run leaves a consistent manifest.

    Writers join the group being formed (``_next``) and wait on its one event; the writer task takes a
    group off the stream, so writes arriving during its commit form the next one."""

    def __init__(
        self, commit: Callable[[list[Write]], None], commit_here: Callable[[list[Write]], bool] | None = None
    ) -> None:
        self._commit = commit
        self._commit_here = commit_here
        self._send: MemoryObjectSendStream[_Group] | None = None
        self._next: _Group | None = None
        #: ``write_later`` writes not committed yet: they go first in the next commit.
        self._later: list[Write] = []
        # The connection is used from worker threads, one at a time.
        self.limiter = anyio.CapacityLimiter(1)
        self.commits = 0
        #: Commits in a row made by ``commit_here`` (see ``HERE_STREAK_MAX``).
        self._here_streak = 0

    async def run_sync(self, fn: Callable[[], T]) -> T:
        """Run other work on the writer's connection (claims, the walk), between commits."""
        return await anyio.to_thread.run_sync(fn, limiter=self.limiter)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        send, receive = anyio.create_memory_object_stream[_Group](math.inf)
        self._send = send
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._loop, receive)
            try:
                yield
            finally:
                self._send = None
                with anyio.CancelScope(shield=True):
                    await send.aclose()

    async def _loop(self, receive: MemoryObjectReceiveStream[_Group]) -> None:
        with anyio.CancelScope(shield=True):
            # Shielded: the loop ends when the stream closes, after draining, never half-way.
            async with receive:
                while True:
                    group: _Group | None = None
                    try:
                        with anyio.move_on_after(LATER_LINGER):
                            group = await receive.receive()
                    except anyio.EndOfStream:
                        await self._commit_group(None)  # what write_later left
                        return
                    if group is not None or self._later:
                        await self._commit_group(group)

    async def _commit_group(self, group: _Group | None) -> None:
        if group is not None and self._next is group:
            self._next = None  # closed: later writes start the next group
        # The waiting-free writes first: each was made before any write of a group not yet committed.
        writes, self._later = self._later, []
        if group is not None:
            writes.extend(group.writes)
        if writes:
            await self._commit_writes(writes)
            self.commits += 1
        if group is not None:
            group.done.set()

    async def _commit_writes(self, writes: list[Write]) -> None:
        if (
            self._commit_here is None
            or sum(len(w.stmts) for w in writes) > HERE_MAX_STMTS
            or self._here_streak >= HERE_STREAK_MAX
        ):
            self._here_streak = 0
            await anyio.to_thread.run_sync(self._commit, writes, limiter=self.limiter)
            return
        # The connection is also used from worker threads (claims, the walk): hold it like they do.
        try:
            self.limiter.acquire_nowait()
        except anyio.WouldBlock:
            await self.limiter.acquire()
        try:
            if self._commit_here(writes):
                self._here_streak += 1
            else:
                self._here_streak = 0
                await anyio.to_thread.run_sync(self._commit, writes)  # the limiter is held: any thread will do
        finally:
            self.limiter.release()

    async def write_later(self, stmts: list[Stmt]) -> None:
        """Commit unfenced ``stmts`` with the next commit, without waiting for it (see the module
        docstring: only for a write a crash may lose). Outside a writer block it commits at once."""
        assert all(fenced is None for _, _, fenced in stmts), "a fenced write reports what it lost: wait for it"
        if self._send is None:
            await self.write(stmts)
        elif stmts:
            self._later.append(Write(stmts))

    async def write(self, stmts: list[Stmt]) -> set[str]:
        """Commit ``stmts`` (in the next group); return the fenced paths they did not change."""
        if not stmts:
            return set()
        write = Write(stmts)
        if self._send is None:
            # Outside a writer block (status tools, tests): commit directly.
            await anyio.to_thread.run_sync(self._commit, [write], limiter=self.limiter)
            return write.lost
        group = self._next
        if group is None:
            group = self._next = _Group()
            self._send.send_nowait(group)
        group.writes.append(write)
        await group.done.wait()
        return write.lost
