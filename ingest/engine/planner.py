"""The planner: reads the source, asks the manifest what each file needs and feeds the workers.

It blocks when the workers are busy (the work stream is bounded: backpressure) and when
``max_in_flight`` files are already between "queued" and "finished", so memory stays flat for a source
of any size. Files the platform accepted before an interruption go straight to the poller.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator

from anyio.streams.memory import MemoryObjectSendStream

from ingest.engine.handoff import send_now
from ingest.engine.state import RunState, Tracked, Work, track
from ingest.manifest.base import Decision, FileRecord, StoredState, decide, done_and_unchanged
from ingest.models import FileItem, Receipt
from ingest.retry import retrying
from ingest.sources.base import BatchedSource, Rejected, Row, RowSource, batched

__all__ = ["plan"]

log = logging.getLogger("ingest.engine.planner")

#: Walked files decided per manifest query.
LOOKUP_CHUNK = 256

#: What ``-v`` says about each file the manifest knows (a new or changed file is simply sent).
_DECISIONS = {
    Decision.SKIP: "done and unchanged since; skipped",
    Decision.POLL: "accepted by the platform before an interruption; following it",
    Decision.SEND_DEDUP: "caught mid-upload by an interruption; sending again with dedup",
}


async def plan(
    run: RunState,
    work: MemoryObjectSendStream[Work],
    to_poller: MemoryObjectSendStream[Tracked],
) -> None:
    dedup_mode = run.config.dedup
    server_dedup = run.target.features.server_dedup
    async with work, to_poller:
        async with contextlib.aclosing(_chunks(run)) as chunks:  # a stop closes the walk (and its folders) now
            async for chunk, stored in chunks:
                if run.stop_sending:
                    break
                if chunk:
                    await _plan_chunk(run, chunk, stored, work, to_poller, dedup_mode, server_dedup)
        run.summary.walk_finished = not run.stop_sending
    run.completion.end_walk()


#: A chunk of the walk to decide, and what the manifest says of its files when that was read already.
Chunk = tuple[list[FileItem | Rejected], dict[str, StoredState] | None]


async def _chunks(run: RunState) -> AsyncGenerator[Chunk, None]:
    """The walk in chunks of items to decide; from a ``RowSource``, without its done, unchanged files
    (counted as skipped here), with the stored states read to find them."""
    source = run.source
    if isinstance(source, RowSource):
        may_refuse = run.target.may_refuse()
        expected = 0 if run.fresh_manifest else run.manifest.file_count()
        async with contextlib.aclosing(source.row_batches(expected=expected)) as batches:
            async for rows in batches:
                if run.stop_sending:
                    return  # the files of a walk cut short are not counted as skipped
                yield _skip_rows(run, source, rows, may_refuse)
    elif isinstance(source, BatchedSource):
        async for batch in source.entry_batches():
            yield batch, None
    else:
        async for chunk in batched(source.entries(), LOOKUP_CHUNK):
            yield chunk, None


def _skip_rows(run: RunState, source: RowSource, rows: list[Row | Rejected], may_refuse: bool) -> Chunk:
    """Count the done and unchanged files of ``rows`` as skipped (the rule of ``_skips``, read off the raw
    row: no ``FileItem`` unless the target may refuse it) and return the others as items, in order, with
    the stored states, for ``_plan_chunk``. On a no-op rerun that is one manifest query per batch and
    nothing built per file."""
    known = [r[0] for r in rows if not isinstance(r, Rejected)]
    stored = {} if run.fresh_manifest or not known else run.manifest.lookup_states(known)
    run.summary.walk_known += len(stored)
    if not stored:
        return [r if isinstance(r, Rejected) else source.item(r) for r in rows], stored
    rest: list[FileItem | Rejected] = []
    skipped = skipped_bytes = 0
    refuse = run.target.refuse
    debug = log.isEnabledFor(logging.DEBUG)  # skipped files can be millions: said only at -vv
    for row in rows:
        if isinstance(row, Rejected):
            rest.append(row)
            continue
        found = stored.get(row[0])
        if found is None or not done_and_unchanged(found, row[1], row[2]):
            rest.append(source.item(row))
            continue
        if may_refuse:
            item = source.item(row)
            if refuse(item) is not None:
                rest.append(item)  # refused first, as ``_plan_one`` does
                continue
        if debug:
            log.debug("%s: %s", row[0], _DECISIONS[Decision.SKIP])
        skipped += 1
        skipped_bytes += row[1]
    run.summary.skipped += skipped
    run.summary.skipped_bytes += skipped_bytes
    return rest, stored


async def _plan_chunk(
    run: RunState,
    chunk: list[FileItem | Rejected],
    stored: dict[str, StoredState] | None,
    work: MemoryObjectSendStream[Work],
    to_poller: MemoryObjectSendStream[Tracked],
    dedup_mode: str,
    server_dedup: bool,
) -> None:
    """Decide a chunk of the walk in its order, with two manifest queries at most: what every known file's
    record says of it (``lookup_states``: on a rerun of a large unchanged tree the lookups were most of the
    time, benchmarks/README.md; ``stored`` when the walk read it already), then the whole records of the
    files that are not done and unchanged."""
    if stored is None:
        known = [e.rel_path for e in chunk if not isinstance(e, Rejected)]
        stored = {} if run.fresh_manifest or not known else run.manifest.lookup_states(known)
        run.summary.walk_known += len(stored)
    skips = [_skips(run, entry, stored.get(entry.rel_path)) for entry in chunk]
    wanted = [e.rel_path for e, skip in zip(chunk, skips, strict=True) if not skip and e.rel_path in stored]
    records = run.manifest.lookup_many(wanted) if wanted else {}
    debug = log.isEnabledFor(logging.DEBUG)  # skipped files can be millions: said only at -vv
    for entry, skip in zip(chunk, skips, strict=True):
        if run.stop_sending:
            break
        if skip:
            assert isinstance(entry, FileItem)  # a rejected entry is never skipped
            if debug:
                log.debug("%s: %s", entry.rel_path, _DECISIONS[Decision.SKIP])
            run.summary.skipped += 1
            run.summary.skipped_bytes += entry.size
            continue
        await _plan_one(run, entry, records.get(entry.rel_path), work, to_poller, dedup_mode, server_dedup)


def _skips(run: RunState, entry: FileItem | Rejected, stored: StoredState | None) -> bool:
    """Whether ``entry`` is skipped as done and unchanged: the same rule as ``_plan_one`` (refusal first,
    then ``decide``, here its SKIP condition read off the stored row), without a record or a coroutine per
    file; on a no-op rerun that is every file."""
    return (
        stored is not None
        and not isinstance(entry, Rejected)
        and done_and_unchanged(stored, entry.size, entry.mtime_ns)
        and run.target.refuse(entry) is None
    )


async def _plan_one(
    run: RunState,
    entry: FileItem | Rejected,
    record: FileRecord | None,
    work: MemoryObjectSendStream[Work],
    to_poller: MemoryObjectSendStream[Tracked],
    dedup_mode: str,
    server_dedup: bool,
) -> None:
    """Decide one walked file (``record``: what the manifest knows of it) and route it."""
    if isinstance(entry, Rejected):
        run.progress.discovered(0)
        await run.fail([(entry.rel_path, entry.reason)])
        return
    refusal = run.target.refuse(entry)
    if refusal is not None:
        run.progress.discovered(0)
        await run.fail([(entry.rel_path, refusal)])
        return
    decision = decide(record, entry)
    if decision is not Decision.SEND:  # skipped files can be millions: those only at -vv
        log.log(
            logging.DEBUG if decision is Decision.SKIP else logging.INFO, "%s: %s", entry.rel_path, _DECISIONS[decision]
        )
    if decision is Decision.SKIP:
        run.summary.skipped += 1
        run.summary.skipped_bytes += entry.size
        return
    await run.completion.admit()
    run.progress.discovered(entry.size)
    if decision is Decision.POLL:
        assert record is not None  # POLL is only decided for a recorded file
        run.summary.resumed += 1
        await send_now(to_poller, track(run, entry, record.receipt(), attempts=record.attempts))
        return
    dedup = dedup_mode == "always" or (dedup_mode == "resume" and decision is Decision.SEND_DEDUP)
    if dedup and not server_dedup:
        existing = await _find_existing(run, entry)
        if existing is not None:
            if await run.manifest.mark_processing([existing], run.run_id):
                run.completion.finish(1)  # taken over meanwhile: its new owner follows it
                return
            run.summary.resumed += 1
            await send_now(to_poller, track(run, entry, existing, attempts=1))
            return
        dedup = False
    await send_now(work, Work(entry, dedup=dedup))


async def _find_existing(run: RunState, item: FileItem) -> Receipt | None:
    async def lookup() -> Receipt | None:
        return await run.target.find_existing(item)

    return await retrying(lookup, run.policy, what=f"looking up {item.rel_path}", rng=run.rng, breaker=run.breaker)
