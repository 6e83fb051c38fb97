"""Workers: take a file (or a batch of small files), record the intent durably, stream the bodies
and hand the platform's receipts to the poller.

One worker gathers a batch at a time, so batches come out full even while the walk is starting; a
file that breaks its batch's body fails alone and the others are sent again; a batch the platform
refuses is split so the one file it objects to is found.
"""

from __future__ import annotations

import time

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest import _failpoints
from ingest.engine.breaker import PlatformUnreachable
from ingest.engine.handoff import receive_now, send_now
from ingest.engine.state import RunState, Tracked, Work, track
from ingest.errors import CapacityError, PermanentError, SourceFileError, TransientError
from ingest.models import Receipt
from ingest.retry import retrying

__all__ = ["BATCH_LINGER", "worker"]

#: Longest a worker waits for more small files to fill a batch once the queue runs dry (seconds).
BATCH_LINGER = 0.02


async def worker(
    run: RunState, work: MemoryObjectReceiveStream[Work], to_poller: MemoryObjectSendStream[Tracked]
) -> None:
    carry: Work | None = None
    async with work, to_poller:
        while True:
            try:
                batch, carry = await _next_batch(run, work, carry)
            except anyio.EndOfStream:
                return
            if run.stop_sending:
                run.completion.finish(len(batch))  # not sent, not recorded: the next run sends them
                continue
            await _send(run, batch, to_poller)


async def _next_batch(
    run: RunState, work: MemoryObjectReceiveStream[Work], carry: Work | None
) -> tuple[list[Work], Work | None]:
    """The next batch to send, and a file taken that did not fit in it. Raises ``EndOfStream``.

    One worker gathers at a time: the others wait instead of each grabbing a single file, so batches
    come out full even while the walker is just starting. With ``full_batches`` the worker also takes
    its first file while gathering, so no other worker holds a lone file the batch needed.
    """
    if run.full_batches:
        async with run.gathering:
            batch = [carry if carry is not None else await receive_now(work)]
            return batch, await _fill_batch(run, work, batch) if run.batchable(batch[0].item) else None
    batch = [carry if carry is not None else await receive_now(work)]
    if not run.batchable(batch[0].item):
        return batch, None
    async with run.gathering:
        return batch, await _fill_batch(run, work, batch)


async def _fill_batch(run: RunState, work: MemoryObjectReceiveStream[Work], batch: list[Work]) -> Work | None:
    """Add queued small files to ``batch`` until it is full; return a file that did not fit, if any.

    Takes what is already queued at once; when the queue runs dry, lingers up to ``BATCH_LINGER`` for
    more (as Kafka's ``linger.ms`` does), so a walker that is only slightly slower than the workers
    still yields full batches. Under backpressure the queue is never dry and nobody waits. A target
    with ``full_batches`` waits until the batch is full or the walk is over.
    """
    size = sum(w.item.size for w in batch)
    deadline = time.monotonic() + BATCH_LINGER
    while len(batch) < run.batch_files:
        nxt = await _next_within(run, work, deadline)
        if nxt is None:
            return None
        if not (run.batchable(nxt.item) and run.fits(batch, size, nxt.item)):
            return nxt
        batch.append(nxt)
        size += nxt.item.size
    return None


async def _next_within(run: RunState, work: MemoryObjectReceiveStream[Work], deadline: float) -> Work | None:
    """The next queued file, waiting no later than ``deadline`` (and not at all once the walk is over)."""
    try:
        return work.receive_nowait()
    except anyio.EndOfStream:
        return None
    except anyio.WouldBlock:
        pass
    while not run.completion.walk_over:
        remaining = BATCH_LINGER if run.full_batches else deadline - time.monotonic()
        if remaining <= 0:
            return None
        with anyio.move_on_after(remaining):
            try:
                return await work.receive()
            except anyio.EndOfStream:
                return None
    # The walk ended while we waited: take what it queued last, if anything.
    try:
        return work.receive_nowait()
    except (anyio.EndOfStream, anyio.WouldBlock):
        return None


async def _send(run: RunState, batch: list[Work], to_poller: MemoryObjectSendStream[Tracked]) -> None:
    ready: list[Work] = []
    gone: list[tuple[str, str]] = []
    for work in batch:
        # The walk may be minutes old: look at the file again just before sending it.
        refreshed = await run.source.refresh(work.item)
        if isinstance(refreshed, str):
            gone.append((work.item.rel_path, refreshed))
        else:
            work.item = refreshed
            ready.append(work)
    await run.fail(gone)
    run.completion.finish(len(gone))
    if not ready:
        return
    dedup = any(w.dedup for w in ready)
    ready = _keep(run, ready, await run.manifest.mark_uploading([w.item for w in ready], run.run_id, dedup=dedup))
    for w in ready:
        w.attempts += 1
    _failpoints.failpoint("after-intent")
    if not ready:
        return
    items = [w.item for w in ready]
    what = f"upload of {items[0].rel_path}" + (f" and {len(items) - 1} more" if len(items) > 1 else "")
    sent_before = run.summary.sent_bytes

    async def confirm_then_submit() -> list[Receipt]:
        nonlocal ready, items
        # A shared job: this process may have been paused past its lease since the intent, or have waited
        # that long for an upload slot (the adaptive limiter lowers their number on 429s) or in a retry's
        # backoff. So the lease is confirmed here, inside the slot, just before each attempt's bytes are sent:
        # never send a file another worker has taken over (it resends with dedup itself).
        ready = _keep(run, ready, await run.manifest.confirm([w.item.rel_path for w in ready]))
        items = [w.item for w in ready]
        return await run.target.submit(items, dedup=dedup) if items else []

    def on_retry(attempt: int, exc: TransientError, delay: float) -> None:
        # Bytes of the failed attempt will be sent again: keep the byte bar honest.
        run.progress.unsent(run.summary.sent_bytes - sent_before)

    try:
        receipts = await retrying(
            confirm_then_submit,
            run.policy,
            what=what,
            limiter=run.limiter,
            rng=run.rng,
            on_retry=on_retry,
            breaker=run.breaker,
        )
    except SourceFileError as exc:
        # One file broke the body (changed, unreadable): fail it, send the others again. Their
        # request was aborted mid-body, so the platform stored none of it; dedup guards anyway.
        culprit = [w for w in ready if w.item.rel_path == exc.path]
        rest = [w for w in ready if w.item.rel_path != exc.path]
        if not culprit:  # the error named a file outside this batch: never loop
            await _give_up(run, ready, str(exc))
            return
        await _give_up(run, culprit, exc.reason)
        for w in rest:
            w.dedup = True
        if rest:
            await _send(run, rest, to_poller)
        return
    except PlatformUnreachable as exc:
        # Not the files' fault: they stay recorded as interrupted uploads, which the next run sends again
        # (with dedup); nothing more is sent in this run.
        run.stop_sending = True
        run.summary.stopped_reason = str(exc)
        run.completion.finish(len(ready))
        run.progress.finished(len(ready))
        return
    except CapacityError as exc:
        run.stop_sending = True
        run.summary.stopped_reason = exc.detail
        await _give_up(run, ready, exc.detail)
        return
    except PermanentError as exc:
        if len(ready) > 1:
            # Find the file the platform objects to: send each alone rather than fail them all.
            for w in ready:
                w.dedup = True
                await _send(run, [w], to_poller)
            return
        await _give_up(run, ready, exc.detail)
        return
    except TransientError as exc:
        await _give_up(run, ready, f"{exc.detail} (gave up after {run.policy.attempts} attempts)")
        return
    if not ready:
        return  # every file was taken over by another worker before it was sent
    _failpoints.failpoint("after-submit")
    run.summary.sent_files += len(items)
    accepted = [r for r in receipts if r.error is None]
    refused = [(r.rel_path, r.error) for r in receipts if r.error is not None]
    lost = await run.manifest.mark_processing(accepted, run.run_id)
    _failpoints.failpoint("after-receipt")
    await run.fail([(p, e) for p, e in refused if e is not None])
    run.completion.finish(len(refused))
    by_path = {w.item.rel_path: w for w in ready}
    if lost:
        run.completion.finish(len(lost))  # taken over by another worker, which follows them now
        run.progress.finished(len(lost))
        accepted = [r for r in accepted if r.rel_path not in lost]
    for receipt in accepted:
        w = by_path[receipt.rel_path]
        # The receipt stream is unbounded (admission bounds it): never a wait, so no loop round per file.
        await send_now(to_poller, track(run, w.item, receipt, attempts=w.attempts))


def _keep(run: RunState, works: list[Work], lost: set[str]) -> list[Work]:
    """``works`` without the files the manifest says another worker took over: dropped from this run."""
    if not lost:
        return works
    run.completion.finish(len(lost))
    run.progress.finished(len(lost))
    return [w for w in works if w.item.rel_path not in lost]


async def _give_up(run: RunState, works: list[Work], reason: str) -> None:
    await run.fail([(w.item.rel_path, reason) for w in works])
    run.completion.finish(len(works))
