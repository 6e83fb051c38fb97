"""Group commit, shared by the backends: one writer task turns many small writes into few transactions.

Callers ``await`` their write and return once the transaction carrying it is committed; every write
queued while a commit runs rides in the next one. The backend supplies ``commit(writes)``, which runs
all statements of a group in one transaction (in a worker thread: the drivers are synchronous) and
fills in, per write, the fenced paths a statement did not change.
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

    def __init__(self, commit: Callable[[list[Write]], None]) -> None:
        self._commit = commit
        self._send: MemoryObjectSendStream[_Group] | None = None
        self._next: _Group | None = None
        # The connection is used from worker threads, one at a time.
        self.limiter = anyio.CapacityLimiter(1)
        self.commits = 0

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
                async for group in receive:
                    if self._next is group:
                        self._next = None  # closed: later writes start the next group
                    await anyio.to_thread.run_sync(self._commit, group.writes, limiter=self.limiter)
                    self.commits += 1
                    group.done.set()

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
