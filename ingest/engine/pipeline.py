"""The engine: one task group that owns every task of a run.

::

    planner ──► work stream (bounded) ──► N workers ──► receipts ──► poller
       │   (asks the manifest: skip, poll, send)  │                      │
       └───────────────────────────── manifest ◄──┴──────────────────────┘

- The **planner** reads the source, asks the manifest what each file needs (``manifest.decide``) and
  feeds the work stream; it blocks when workers are busy (backpressure) and when ``max_in_flight``
  files are already between "queued" and "finished".
- **Workers** take a file, or a batch of small files when the target allows it (greedily: whatever is
  already queued, never waiting for more), record the intent durably, stream the bodies, record the
  platform's ids and hand the receipts to the poller.
- The **poller** follows every accepted file until the platform says done or failed, polling due files
  together with a growing interval per file, and retries failures through the platform (or by
  sending again) up to ``max_attempts``.

The run ends when the walk is over and every file it admitted reached ``done`` or ``failed``.
Nothing here knows a platform: targets speak through ``ingest.platforms.base.Target``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest import _failpoints
from ingest._aio import first_leaf
from ingest.config import EngineConfig
from ingest.errors import (
    CapacityError,
    ConfigError,
    PermanentError,
    SourceFileError,
    TransientError,
)
from ingest.manifest.sqlite import Decision, Manifest, decide
from ingest.models import FileItem, Receipt, RemoteState
from ingest.platforms.base import Target
from ingest.progress import Progress
from ingest.retry import AdaptiveLimiter, RetryPolicy, retrying
from ingest.sources.local import Rejected

__all__ = ["EngineStats", "run_engine"]

log = logging.getLogger("ingest.engine.pipeline")

#: Receipts per ``Target.poll`` call.
POLL_CHUNK = 500
#: Longest a worker waits for more small files to fill a batch once the queue runs dry (seconds).
BATCH_LINGER = 0.02
#: Polls are cheap to repeat later: a short retry, then the files are simply polled again next round.
POLL_RETRY = RetryPolicy(attempts=3, initial_delay=0.2, max_delay=2.0)


@dataclass(slots=True)
class EngineStats:
    """Counts for the summary; the manifest holds the per-file truth."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    resumed: int = 0
    sent_files: int = 0
    sent_bytes: int = 0
    platform_retries: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    stopped_reason: str | None = None


@dataclass(slots=True)
class _Work:
    item: FileItem
    dedup: bool
    attempts: int = 0


@dataclass(slots=True)
class _Tracked:
    item: FileItem
    receipt: Receipt
    attempts: int
    deadline: float
    next_poll: float
    interval: float


class _Completion:
    """Counts files admitted but not yet finished; ``all_done`` fires when the walk is over and none
    remain. Also owns the in-flight limit."""

    def __init__(self, max_in_flight: int) -> None:
        self.outstanding = 0
        self.walk_over = False
        self.all_done = anyio.Event()
        self.slots = anyio.Semaphore(max_in_flight)

    async def admit(self) -> None:
        await self.slots.acquire()
        self.outstanding += 1

    def finish(self, n: int = 1) -> None:
        for _ in range(n):
            self.slots.release()
        self.outstanding -= n
        self._check()

    def end_walk(self) -> None:
        self.walk_over = True
        self._check()

    def _check(self) -> None:
        if self.walk_over and self.outstanding == 0:
            self.all_done.set()


class _Run:
    """The state of one engine run, shared by its tasks (all on one event loop: no locks needed)."""

    def __init__(
        self,
        *,
        target: Target,
        manifest: Manifest,
        run_id: int,
        config: EngineConfig,
        progress: Progress,
        stats: EngineStats,
    ) -> None:
        self.target = target
        self.manifest = manifest
        self.run_id = run_id
        self.config = config
        self.progress = progress
        self.stats = stats
        self.completion = _Completion(config.max_in_flight)
        self.limiter = AdaptiveLimiter(config.concurrency)
        self.policy = RetryPolicy(attempts=config.request_retries + 1)
        self.rng = random.Random()
        features = target.features
        self.batch_files = max(1, min(config.batch_files or features.max_batch_files, features.max_batch_files))
        self.batch_bytes = config.batch_bytes or features.max_batch_bytes or 0
        self.batch_file_limit = features.max_batched_file_size or self.batch_bytes
        self.stop_sending = False
        self.gathering = anyio.Lock()
        #: A brand-new manifest has nothing to look up: skip the per-file query.
        self.fresh_manifest = manifest.is_empty()

    # ----- shared helpers ------------------------------------------------------------------------

    async def fail(self, failures: list[tuple[str, str]]) -> None:
        """Record files as failed for good (this run) and count them finished."""
        if not failures:
            return
        await self.manifest.mark_failed(failures, self.run_id)
        self.stats.failed += len(failures)
        self.stats.failures.extend(failures[: max(0, 1000 - len(self.stats.failures))])
        for path, reason in failures:
            self.progress.message(f"failed: {path}: {reason}")
        self.progress.finished(len(failures))

    def batchable(self, item: FileItem) -> bool:
        return self.batch_files > 1 and item.size <= self.batch_file_limit

    def fits(self, batch: list[_Work], size: int, item: FileItem) -> bool:
        return len(batch) < self.batch_files and (not self.batch_bytes or size + item.size <= self.batch_bytes)


# ----- planner ---------------------------------------------------------------------------------------


async def _plan(
    run: _Run,
    source: AsyncIterator[FileItem | Rejected],
    work: MemoryObjectSendStream[_Work],
    to_poller: MemoryObjectSendStream[_Tracked],
) -> None:
    dedup_mode = run.config.dedup
    server_dedup = run.target.features.server_dedup
    async with work, to_poller:
        async for entry in source:
            if run.stop_sending:
                break
            if isinstance(entry, Rejected):
                run.progress.discovered(0)
                await run.fail([(entry.rel_path, entry.reason)])
                continue
            refusal = run.target.refuse(entry)
            if refusal is not None:
                run.progress.discovered(0)
                await run.fail([(entry.rel_path, refusal)])
                continue
            record = None if run.fresh_manifest else run.manifest.lookup(entry.rel_path)
            decision = decide(record, entry)
            if decision is Decision.SKIP:
                run.stats.skipped += 1
                run.stats.skipped_bytes += entry.size
                continue
            await run.completion.admit()
            run.progress.discovered(entry.size)
            if decision is Decision.POLL:
                assert record is not None  # POLL is only decided for a recorded file
                run.stats.resumed += 1
                await to_poller.send(_track(run, entry, record.receipt(), attempts=record.attempts))
                continue
            dedup = dedup_mode == "always" or (dedup_mode == "resume" and decision is Decision.SEND_DEDUP)
            if dedup and not server_dedup:
                existing = await _find_existing(run, entry)
                if existing is not None:
                    run.stats.resumed += 1
                    await run.manifest.mark_processing([existing], run.run_id)
                    await to_poller.send(_track(run, entry, existing, attempts=1))
                    continue
                dedup = False
            await work.send(_Work(entry, dedup=dedup))
    run.completion.end_walk()


async def _find_existing(run: _Run, item: FileItem) -> Receipt | None:
    async def lookup() -> Receipt | None:
        return await run.target.find_existing(item)

    return await retrying(lookup, run.policy, what=f"looking up {item.rel_path}", rng=run.rng)


def _track(run: _Run, item: FileItem, receipt: Receipt, *, attempts: int) -> _Tracked:
    now = time.monotonic()
    return _Tracked(
        item=item,
        receipt=receipt,
        attempts=attempts,
        deadline=now + run.config.task_timeout,
        next_poll=now + run.config.poll_initial,
        interval=run.config.poll_initial,
    )


# ----- workers ---------------------------------------------------------------------------------------


async def _worker(
    run: _Run, work: MemoryObjectReceiveStream[_Work], to_poller: MemoryObjectSendStream[_Tracked]
) -> None:
    carry: _Work | None = None
    async with work, to_poller:
        while True:
            if carry is not None:
                first, carry = carry, None
            else:
                try:
                    first = await work.receive()
                except anyio.EndOfStream:
                    return
            batch = [first]
            if run.batchable(first.item):
                # One worker gathers at a time: the others wait here instead of each grabbing a
                # single file, so batches come out full even while the walker is just starting.
                async with run.gathering:
                    carry = await _fill_batch(run, work, batch)
            if run.stop_sending:
                run.completion.finish(len(batch))  # not sent, not recorded: the next run sends them
                continue
            await _send(run, batch, to_poller)


async def _fill_batch(run: _Run, work: MemoryObjectReceiveStream[_Work], batch: list[_Work]) -> _Work | None:
    """Add queued small files to ``batch`` until it is full; return a file that did not fit, if any.

    Takes what is already queued at once; when the queue runs dry, lingers up to ``BATCH_LINGER`` for
    more (as Kafka's ``linger.ms`` does), so a walker that is only slightly slower than the workers
    still yields full batches. Under backpressure the queue is never dry and nobody waits.
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


async def _next_within(run: _Run, work: MemoryObjectReceiveStream[_Work], deadline: float) -> _Work | None:
    """The next queued file, waiting no later than ``deadline`` (and not at all once the walk is over)."""
    try:
        return work.receive_nowait()
    except anyio.EndOfStream:
        return None
    except anyio.WouldBlock:
        pass
    remaining = deadline - time.monotonic()
    if remaining <= 0 or run.completion.walk_over:
        return None
    with anyio.move_on_after(remaining):
        try:
            return await work.receive()
        except anyio.EndOfStream:
            return None
    return None


def _refresh(work: _Work) -> _Work | str:
    """Re-stat a file just before sending; the walk may be minutes old. Returns a reason if gone."""
    try:
        st = os.stat(work.item.abs_path)
    except FileNotFoundError:
        return "file disappeared between the walk and the upload"
    except OSError as exc:
        return f"cannot read file information: {exc.strerror or exc}"
    if st.st_size != work.item.size or st.st_mtime_ns != work.item.mtime_ns:
        work.item = replace(work.item, size=st.st_size, mtime_ns=st.st_mtime_ns)
    return work


async def _send(run: _Run, batch: list[_Work], to_poller: MemoryObjectSendStream[_Tracked]) -> None:
    ready: list[_Work] = []
    gone: list[tuple[str, str]] = []
    for work in batch:
        refreshed = _refresh(work)
        if isinstance(refreshed, str):
            gone.append((work.item.rel_path, refreshed))
        else:
            ready.append(refreshed)
    await run.fail(gone)
    run.completion.finish(len(gone))
    if not ready:
        return
    items = [w.item for w in ready]
    dedup = any(w.dedup for w in ready)
    await run.manifest.mark_uploading(items, run.run_id, dedup=dedup)
    for w in ready:
        w.attempts += 1
    _failpoints.failpoint("after-intent")
    what = f"upload of {items[0].rel_path}" + (f" and {len(items) - 1} more" if len(items) > 1 else "")
    sent_before = run.stats.sent_bytes

    def on_retry(attempt: int, exc: TransientError, delay: float) -> None:
        # Bytes of the failed attempt will be sent again: keep the byte bar honest.
        run.progress.unsent(run.stats.sent_bytes - sent_before)

    try:
        receipts = await retrying(
            lambda: run.target.submit(items, dedup=dedup),
            run.policy,
            what=what,
            limiter=run.limiter,
            rng=run.rng,
            on_retry=on_retry,
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
    except CapacityError as exc:
        run.stop_sending = True
        run.stats.stopped_reason = exc.detail
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
    _failpoints.failpoint("after-submit")
    run.stats.sent_files += len(items)
    accepted = [r for r in receipts if r.error is None]
    refused = [(r.rel_path, r.error) for r in receipts if r.error is not None]
    await run.manifest.mark_processing(accepted, run.run_id)
    _failpoints.failpoint("after-receipt")
    await run.fail([(p, e) for p, e in refused if e is not None])
    run.completion.finish(len(refused))
    by_path = {w.item.rel_path: w for w in ready}
    for receipt in accepted:
        w = by_path[receipt.rel_path]
        await to_poller.send(_track(run, w.item, receipt, attempts=w.attempts))


async def _give_up(run: _Run, works: list[_Work], reason: str) -> None:
    await run.fail([(w.item.rel_path, reason) for w in works])
    run.completion.finish(len(works))


# ----- poller ----------------------------------------------------------------------------------------


async def _poller(
    run: _Run,
    incoming: MemoryObjectReceiveStream[_Tracked],
    resubmit: MemoryObjectSendStream[_Work],
) -> None:
    outstanding: dict[str, _Tracked] = {}
    arrived = anyio.Event()

    async def intake() -> None:
        nonlocal arrived
        async with incoming:
            async for tracked in incoming:
                outstanding[tracked.item.rel_path] = tracked
                arrived.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(intake)
        while not run.completion.all_done.is_set():
            now = time.monotonic()
            due = [t for t in outstanding.values() if t.next_poll <= now]
            if not due:
                wake = min((t.next_poll for t in outstanding.values()), default=now + 1.0)
                arrived = anyio.Event()
                with anyio.move_on_after(max(0.0, wake - now)):
                    await _first_of(arrived, run.completion.all_done)
                continue
            for start in range(0, len(due), POLL_CHUNK):
                await _poll_round(run, due[start : start + POLL_CHUNK], outstanding, resubmit)
            run.progress.in_flight(len(outstanding))
        tg.cancel_scope.cancel()


async def _first_of(*events: anyio.Event) -> None:
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(wait, event)


async def _poll_round(
    run: _Run,
    due: list[_Tracked],
    outstanding: dict[str, _Tracked],
    resubmit: MemoryObjectSendStream[_Work],
) -> None:
    try:
        statuses = await retrying(
            lambda: run.target.poll([t.receipt for t in due]), POLL_RETRY, what="polling", rng=run.rng
        )
    except TransientError as exc:
        # The platform is unreachable for now: try these again later rather than failing them.
        log.warning("polling failed, will retry: %s", exc)
        for t in due:
            t.next_poll = time.monotonic() + run.config.poll_max
        return
    now = time.monotonic()
    done: list[_Tracked] = []
    failed: list[tuple[_Tracked, str]] = []
    to_retry: list[tuple[_Tracked, str]] = []
    seen: set[str] = set()
    for status in statuses:
        found = outstanding.get(status.rel_path)
        if found is None:
            continue
        t = found
        seen.add(status.rel_path)
        if status.state is RemoteState.DONE:
            done.append(t)
        elif status.state is RemoteState.FAILED:
            reason = status.reason or "the platform reported a failure"
            if t.attempts < run.config.max_attempts:
                to_retry.append((t, reason))
            else:
                failed.append((t, f"{reason} (after {t.attempts} attempts)"))
        elif now > t.deadline:
            failed.append((t, f"not finished by the platform within {run.config.task_timeout:g}s"))
        else:
            t.interval = min(t.interval * 1.5, run.config.poll_max)
            t.next_poll = now + t.interval
    # No news of a file this round (a transient error on its lookup): ask again later, within its deadline.
    for t in due:
        if t.item.rel_path not in seen:
            if now > t.deadline:
                failed.append((t, f"no status from the platform within {run.config.task_timeout:g}s"))
            else:
                t.interval = min(t.interval * 1.5, run.config.poll_max)
                t.next_poll = now + t.interval
    if done:
        await run.manifest.mark_done([t.item.rel_path for t in done], run.run_id)
        _failpoints.failpoint("after-done")
        run.stats.done += len(done)
        run.progress.finished(len(done))
    if failed:
        await run.fail([(t.item.rel_path, reason) for t, reason in failed])
    for t in [*done, *(t for t, _ in failed)]:
        outstanding.pop(t.item.rel_path, None)
    run.completion.finish(len(done) + len(failed))
    if to_retry:
        await _retry(run, to_retry, outstanding, resubmit)


async def _retry(
    run: _Run,
    to_retry: list[tuple[_Tracked, str]],
    outstanding: dict[str, _Tracked],
    resubmit: MemoryObjectSendStream[_Work],
) -> None:
    for t, reason in to_retry:
        await run.manifest.note_error(t.item.rel_path, reason)
    if run.target.features.server_retry:
        try:
            receipts = await retrying(
                lambda: run.target.retry([t.receipt for t, _ in to_retry]),
                POLL_RETRY,
                what="retrying failed files",
                rng=run.rng,
            )
        except TransientError:
            receipts = []  # nothing retried this round: the next poll finds them failed and asks again
        except PermanentError as exc:
            await run.fail([(t.item.rel_path, f"{reason}; retry refused: {exc.detail}") for t, reason in to_retry])
            for t, _ in to_retry:
                outstanding.pop(t.item.rel_path, None)
            run.completion.finish(len(to_retry))
            return
        run.stats.platform_retries += len(receipts)
        await run.manifest.mark_processing(receipts, run.run_id, retried=True)
        by_path = {r.rel_path: r for r in receipts}
        now = time.monotonic()
        for t, _ in to_retry:
            t.interval = (
                run.config.poll_initial if t.item.rel_path in by_path else min(t.interval * 1.5, run.config.poll_max)
            )
            t.next_poll = now + t.interval
            if t.item.rel_path in by_path:
                t.receipt = by_path[t.item.rel_path]
                t.attempts += 1
                t.deadline = now + run.config.task_timeout
        return
    run.stats.platform_retries += len(to_retry)
    # No server-side retry: send the file again. It stays admitted (counted outstanding) throughout.
    for t, _ in to_retry:
        outstanding.pop(t.item.rel_path, None)
        await resubmit.send(_Work(t.item, dedup=False, attempts=t.attempts))


# ----- the run ---------------------------------------------------------------------------------------


async def run_engine(
    *,
    target: Target,
    manifest: Manifest,
    run_id: int,
    source: AsyncIterator[FileItem | Rejected],
    config: EngineConfig,
    progress: Progress,
    stats: EngineStats,
) -> EngineStats:
    """Send everything ``source`` yields through ``target``, recording every step in ``manifest``.

    Returns when every admitted file is done or failed. Raises ``ConfigError``/``AuthError`` when the
    platform refuses the configuration (nothing more can succeed); cancellation leaves the manifest
    consistent (the writer drains before the manifest block exits).
    """
    run = _Run(target=target, manifest=manifest, run_id=run_id, config=config, progress=progress, stats=stats)
    buffer = config.concurrency * max(2, run.batch_files)
    work_send, work_recv = anyio.create_memory_object_stream[_Work](buffer)
    # Receipts are bounded by max_in_flight (admission), so an unbounded buffer cannot grow past it.
    rcpt_send, rcpt_recv = anyio.create_memory_object_stream[_Tracked](math.inf)
    try:
        async with anyio.create_task_group() as tg:
            _start(tg, run, source, work_send, work_recv, rcpt_send, rcpt_recv)
    except BaseExceptionGroup as group:
        raise first_leaf(group, (ConfigError, Exception)) from None
    return stats


def _start(
    tg: TaskGroup,
    run: _Run,
    source: AsyncIterator[FileItem | Rejected],
    work_send: MemoryObjectSendStream[_Work],
    work_recv: MemoryObjectReceiveStream[_Work],
    rcpt_send: MemoryObjectSendStream[_Tracked],
    rcpt_recv: MemoryObjectReceiveStream[_Tracked],
) -> None:
    tg.start_soon(_plan, run, source, work_send.clone(), rcpt_send.clone())
    for _ in range(run.config.concurrency):
        tg.start_soon(_worker, run, work_recv.clone(), rcpt_send.clone())

    async def poll_then_close() -> None:
        async with work_send:  # the poller's resubmit channel; closing it lets idle workers exit
            await _poller(run, rcpt_recv, work_send)

    tg.start_soon(poll_then_close)
    # Each stage holds its own clone; drop the originals so streams end when their users do.
    work_recv.close()
    rcpt_send.close()
