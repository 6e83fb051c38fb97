"""One worker's view of a shared job: the files it claimed are its source, and its manifest writes are
fenced by the claims (``ingest.manifest.jobs``).

The engine (``pipeline.run_engine``) runs unchanged on top: ``ClaimSource`` yields the claimed files as
``entries()``, so the engine's planner applies the one resume rule (``decide``) to each claimed record
(a file taken over mid-upload is sent with dedup or looked up with ``find_existing``; a file taken
over while processing is only polled), and ``FencedManifest`` turns every write into a fenced one and
reports the files this worker lost, which the engine then drops.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

from ingest.manifest.base import FileRecord, Owner, StoredState
from ingest.manifest.jobs import Claim, JobStore
from ingest.models import FileItem, FileState, Receipt
from ingest.sources.base import Rejected, Source

__all__ = ["ClaimSource", "FencedManifest"]

#: Longest wait between claims when there is nothing to claim yet (the walk is behind, or other
#: workers hold the rest and may yet die).
IDLE_MAX = 1.0


class FencedManifest:
    """The ``Manifest`` the engine of one worker writes through: every write is fenced by the claim."""

    def __init__(self, store: JobStore, worker: str, lease: float) -> None:
        self.store = store
        self.worker = worker
        self.lease = lease
        self.fences: dict[str, int] = {}
        self._claimed: dict[str, FileRecord] = {}
        #: Until when (monotonic) the last heartbeat vouches for every lease this worker holds.
        self.valid_until = 0.0
        self.claimed = self.done = self.lost = self.taken_over = 0

    @property
    def owner(self) -> Owner:
        return Owner(self.worker, self.fences)

    def hold(self, claim: Claim) -> None:
        self.fences[claim.record.path] = claim.fence
        self._claimed[claim.record.path] = claim.record
        self.claimed += 1
        self.taken_over += claim.taken_over

    def _drop(self, lost: set[str]) -> set[str]:
        for path in lost:
            self.fences.pop(path, None)
        self.lost += len(lost)
        return lost

    def _finished(self, paths: Sequence[str], lost: set[str]) -> set[str]:
        for path in paths:
            self.fences.pop(path, None)
        self.lost += len(lost)
        return lost

    # ----- reads: the store's, except the claimed record (read once, at claim time) ----------------

    def get_meta(self, key: str) -> str | None:
        return self.store.get_meta(key)

    def set_meta(self, key: str, value: str) -> None:
        self.store.set_meta(key, value)

    def bind(self, source: str, target: str) -> None:
        self.store.bind(source, target)

    def start_run(self, command: str) -> int:
        return self.store.start_run(command)

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None:
        self.store.finish_run(run_id, status, summary)

    def runs(self) -> list[dict[str, Any]]:
        return self.store.runs()

    def lookup(self, path: str) -> FileRecord | None:
        found = self._claimed.pop(path, None)
        return found if found is not None else self.store.lookup(path)

    def lookup_many(self, paths: Sequence[str]) -> dict[str, FileRecord]:
        found = {p: r for p in paths if (r := self._claimed.pop(p, None)) is not None}
        rest = [p for p in paths if p not in found]
        return found | (self.store.lookup_many(rest) if rest else {})

    def lookup_states(self, paths: Sequence[str]) -> dict[str, StoredState]:
        # A claimed file is read from its claim (kept for the ``lookup_many`` that follows unless skipped).
        found: dict[str, StoredState] = {}
        rest: list[str] = []
        for p in paths:
            r = self._claimed.get(p)
            if r is None:
                rest.append(p)
            else:
                found[p] = (p, r.size, r.mtime_ns, r.state.value)
        return found | (self.store.lookup_states(rest) if rest else {})

    def is_empty(self) -> bool:
        return False  # claimed rows exist by definition: look each one up

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    def file_count(self) -> int:
        return self.store.file_count()

    def iter_files(
        self, *, states: Sequence[FileState] = (), run_id: int | None = None, page: int = 1000
    ) -> Iterator[FileRecord]:
        return self.store.iter_files(states=states, run_id=run_id, page=page)

    def writer(self) -> AbstractAsyncContextManager[Any]:
        return self.store.writer()

    # ----- fenced writes --------------------------------------------------------------------------

    async def mark_uploading(self, items: Sequence[FileItem], run_id: int, *, dedup: bool) -> set[str]:
        return self._drop(await self.store.mark_uploading(items, run_id, dedup=dedup, owner=self.owner))

    async def mark_processing(self, receipts: Sequence[Receipt], run_id: int, *, retried: bool = False) -> set[str]:
        return self._drop(await self.store.mark_processing(receipts, run_id, retried=retried, owner=self.owner))

    async def mark_done(self, paths: Sequence[str], run_id: int) -> set[str]:
        lost = await self.store.mark_done(paths, run_id, owner=self.owner)
        self.done += len(paths) - len(lost)
        return self._finished(paths, lost)

    async def mark_failed(self, failures: Sequence[tuple[str, str]], run_id: int) -> set[str]:
        lost = await self.store.mark_failed(failures, run_id, owner=self.owner)
        return self._finished([p for p, _ in failures], lost)

    async def note_error(self, path: str, reason: str) -> None:
        await self.store.note_error(path, reason, owner=self.owner)

    async def confirm(self, paths: Sequence[str]) -> set[str]:
        """Free while the last heartbeat vouches for the leases; after a pause (SIGSTOP, a stalled
        machine) the database is asked, and a file someone else took is not sent."""
        if time.monotonic() < self.valid_until:
            return set()
        return self._drop(await self.store.confirm_lease(self.owner, paths, self.lease))

    def close(self) -> None:
        self.store.close()

    async def beat(self) -> None:
        """Extend every lease this worker holds; vouch for them until half a lease from now, unless
        fewer rows were extended than held (some were taken over: ask per file before sending)."""
        started = time.monotonic()
        held = len(self.fences)
        extended = await self.store.heartbeat(
            self.worker, self.lease, claimed=self.claimed, done=self.done, lost=self.lost
        )
        self.valid_until = started + self.lease / 2 if extended >= held else 0.0


class ClaimSource:
    """The files a worker claims from the job, as a ``Source``: claims a batch when the engine wants
    more, ends when the walk is over and no unfinished file is left to anyone else.

    ``walk`` is the number of the walk whose end counts: a worker that starts a finished job again
    (a fresh walk) must not end on the old walk's "done" before the new walk has even begun."""

    def __init__(self, source: Source, manifest: FencedManifest, batch: int, *, walk: int = 0) -> None:
        self.source = source
        self.manifest = manifest
        self.batch = batch
        self.walk = walk

    def identity(self) -> str:
        return self.source.identity()

    def describe(self) -> str:
        return self.source.describe()

    async def entries(self) -> AsyncIterator[FileItem | Rejected]:
        async for batch in self.entry_batches():
            for entry in batch:
                yield entry

    async def entry_batches(self) -> AsyncIterator[list[FileItem | Rejected]]:
        """One batch per claim, yielded at once: claimed files are this worker's alone to send, so
        holding them back (until a chunk fills) would stall the job until their leases expire."""
        store, worker = self.manifest.store, self.manifest.worker
        idle = 0.05
        while True:
            claims = await store.claim(worker, self.batch, self.manifest.lease)
            if claims:
                idle = 0.05
                for claim in claims:
                    self.manifest.hold(claim)
                yield [await self.source.lookup(claim.record.path) for claim in claims]
                continue
            state = store.walk_state()
            if state.done and state.walk >= self.walk and store.unfinished(besides=worker) == 0:
                return
            await anyio.sleep(idle)
            idle = min(idle * 2, IDLE_MAX)

    async def refresh(self, item: FileItem) -> FileItem | str:
        return await self.source.refresh(item)

    async def lookup(self, rel_path: str) -> FileItem | Rejected:
        return await self.source.lookup(rel_path)

    def passed_over(self) -> Mapping[str, int]:
        return {}
