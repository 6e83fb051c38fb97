"""The walk of a shared job: one elected process reads the source and records it as pending rows.

Election goes through the database (``JobStore.try_lead``); the walk's position is recorded with every
stretch it writes, so a successor skips what was recorded and continues. Workers claim the pending rows
while the walk goes on. Each row is decided once here with the one resume rule (``decide``): done and
unchanged files are never recorded again; a file somebody is working on is left to its claim.
"""

from __future__ import annotations

import hashlib

import anyio

from ingest import _failpoints
from ingest.errors import ConfigError
from ingest.manifest.base import Decision, decide
from ingest.manifest.jobs import UNFINISHED, JobStore
from ingest.models import FileItem
from ingest.report import RunSummary
from ingest.sources.base import Rejected, Source

__all__ = ["FINGERPRINT_ENTRIES", "check_fingerprint", "fingerprint", "lead_walk"]

#: Entries of the listing hashed into the source fingerprint: enough to tell two trees apart cheaply.
FINGERPRINT_ENTRIES = 64
#: Files recorded per transaction of the walk.
STRETCH = 100


async def fingerprint(source: Source) -> str:
    """What every worker must see: the source's identity and the start of its listing."""
    digest = hashlib.sha256(source.identity().encode())
    seen = 0
    async for entry in source.entries():
        if isinstance(entry, FileItem):
            digest.update(f"\0{entry.rel_path}\0{entry.size}\0{entry.mtime_ns}".encode())
        else:
            digest.update(f"\0{entry.rel_path}\0rejected".encode())
        seen += 1
        if seen >= FINGERPRINT_ENTRIES:
            break
    return digest.hexdigest()[:32]


def check_fingerprint(store: JobStore, mine: str, source: Source) -> None:
    recorded = store.walk_state()
    if recorded.fingerprint is not None and not recorded.done and recorded.fingerprint != mine:
        raise ConfigError(
            f"source {source.describe()} here differs from the one the planner of job {store.job!r} walked; "
            "every worker must see the same files: the same folder (mount the same share at the same path)"
            " or the same bucket and prefix, with the same --include/--exclude/--max-size"
        )


async def lead_walk(
    store: JobStore,
    source: Source,
    *,
    worker: str,
    run_id: int,
    lease: float,
    fresh: bool,
    mine: str,
    summary: RunSummary,
    walk: int | None = None,
) -> None:
    """Wait for the planner role while walk number ``walk`` is unfinished; when elected, walk (resuming
    from the recorded position) and return when the walk is over.

    ``walk``: the walk whose end this worker waits for (default: the recorded one, or one past it when
    ``fresh``). A fresh walk's worker must not take the finished walk's ``done`` for the end of its own
    while the old planner's role has not yet expired: it waits for the role like any other worker."""
    if walk is None:
        walk = store.walk_state().walk + (1 if fresh else 0)
    while not await store.try_lead(worker, lease):
        state = store.walk_state()
        if state.done and state.walk >= walk:
            return
        await anyio.sleep(max(0.1, lease / 4))
    state = store.walk_state()
    if state.done and state.walk >= walk:
        return  # finished by a planner before us
    state = await store.begin_walk(worker, mine, fresh=state.done)
    walked = await _walk(
        store, source, run_id=run_id, resume_after=state.last_path, walked=state.walked, summary=summary
    )
    if walked is None:  # the recorded position is gone from the source: walk all of it again
        walked = await _walk(store, source, run_id=run_id, resume_after=None, walked=0, summary=summary)
    await store.finish_walk(walked or 0)


async def _walk(
    store: JobStore, source: Source, *, run_id: int, resume_after: str | None, walked: int, summary: RunSummary
) -> int | None:
    """Record the listing after ``resume_after``; ``None`` if that path was never met."""
    skipping = resume_after is not None
    items: list[FileItem] = []
    failed: list[tuple[str, str]] = []
    last = resume_after or ""
    async for entry in source.entries():
        if skipping:
            skipping = entry.rel_path != resume_after
            continue
        walked += 1
        last = entry.rel_path
        if isinstance(entry, Rejected):
            failed.append((entry.rel_path, entry.reason))
        else:
            items.append(entry)
        if len(items) + len(failed) >= STRETCH:
            await _record(store, items, failed, run_id=run_id, last=last, walked=walked, summary=summary)
            items, failed = [], []
    if skipping:
        return None
    await _record(store, items, failed, run_id=run_id, last=last, walked=walked, summary=summary)
    return walked


async def _record(
    store: JobStore,
    items: list[FileItem],
    failed: list[tuple[str, str]],
    *,
    run_id: int,
    last: str,
    walked: int,
    summary: RunSummary,
) -> None:
    records = store.lookup_many([i.rel_path for i in items])
    pending: list[FileItem] = []
    for item in items:
        record = records.get(item.rel_path)
        if decide(record, item) is Decision.SKIP:
            summary.skipped += 1
            summary.skipped_bytes += item.size
        elif record is None or record.state.value not in UNFINISHED:
            pending.append(item)
        # else: unfinished and someone's (or claimable): its claim applies ``decide`` again.
    summary.failed += len(failed)
    summary.failures.extend(failed[: max(0, 1000 - len(summary.failures))])
    await store.record_walk(pending, failed, run_id=run_id, last_path=last, walked=walked)
    _failpoints.failpoint("walk-recorded")
