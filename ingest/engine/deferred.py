"""A target whose destination is started the first time the run needs it.

The embedded default (``ingest run DIR`` with no ``--target``) runs an emulator in a child process. Starting
it (an interpreter, its imports, its store) took about a second of every run, also of the rerun that finds
every file unchanged and sends nothing: most of the wall time of a no-op rerun of 100,000 files
(benchmarks/README.md). Wrapped in ``StartedOnFirstUse``, the destination is started, and the target
opened, just before the first call that talks to the platform; a run that never does never starts it.

What needs no platform (the name, the features, ``refuse``, ``describe``, ``identity``, ``preflight``,
which only looks at the source) is answered at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import anyio

from ingest.models import FileItem, Receipt, RemoteStatus
from ingest.platforms.base import ForwardingTarget, RemoteDocument, Target

__all__ = ["StartedOnFirstUse"]


class StartedOnFirstUse(ForwardingTarget):
    """``inner``, with ``start()`` (the destination) and ``open()`` (the target) run once, before the first
    platform call. A failure is raised to that call and to every later one: the run stops with it."""

    def __init__(
        self, inner: Target, start: Callable[[], Awaitable[None]], open_target: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(inner)
        self._start = start
        self._open = open_target
        self._lock = anyio.Lock()
        self._ready = False
        self._failure: BaseException | None = None

    async def _ensure(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._ready:
                return
            try:
                await self._start()
                await self._open()
            except Exception as exc:
                self._failure = exc
                raise
            self._ready = True

    # Every call that talks to the platform starts it first; the rest are forwarded as they are.

    async def open(self) -> None:
        await self._ensure()

    async def submit(self, items: Sequence[FileItem], *, dedup: bool) -> list[Receipt]:
        await self._ensure()
        return await self.inner.submit(items, dedup=dedup)

    async def poll(self, receipts: Sequence[Receipt]) -> list[RemoteStatus]:
        await self._ensure()
        return await self.inner.poll(receipts)

    async def retry(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        await self._ensure()
        return await self.inner.retry(receipts)

    async def find_existing(self, item: FileItem) -> Receipt | None:
        await self._ensure()
        return await self.inner.find_existing(item)

    async def list_documents(self) -> AsyncIterator[RemoteDocument]:
        await self._ensure()
        async for document in self.inner.list_documents():
            yield document

    async def delete(self, remote_ids: Sequence[str]) -> list[str]:
        await self._ensure()
        return await self.inner.delete(remote_ids)
