"""The poller: follows every accepted file until the platform says done or failed.

Due files are polled together (``POLL_CHUNK`` receipts per ``Target.poll``) with a growing interval per
file, bounded by the task timeout; failures are retried through the platform (``Target.retry``) or by
sending the file again, up to ``max_attempts``. Rounds start at most every ``poll_initial`` seconds, so
files submitted one after another are polled together (a platform that answers for many files in one
request, such as MOI's task list, then needs a request a round rather than one a file).

A round starts sooner only when every followed file is already due. Waiting could group nothing more then:
a file submitted later is first due ``poll_initial`` after its submission, so after the next round would
start anyway. This is what ends a run: its last files are polled when due, not up to ``poll_initial`` later.
Such an early round polls every followed file, each of which is then next due no sooner than its own
interval (``poll_initial``, growing to ``poll_max``), so a steady stream of files, where some are always
waiting to become due, never starts one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest import _failpoints
from ingest.engine.breaker import PlatformUnreachable
from ingest.engine.handoff import receive_now, send_now
from ingest.engine.state import RunState, Tracked, Work
from ingest.errors import PermanentError, TransientError
from ingest.models import RemoteState
from ingest.retry import RetryPolicy, retrying

__all__ = ["POLL_CHUNK", "all_due", "next_start", "poller"]

log = logging.getLogger("ingest.engine.poller")

#: Receipts per ``Target.poll`` call.
POLL_CHUNK = 500
#: Polls are cheap to repeat later: a short retry, then the files are simply polled again next round.
POLL_RETRY = RetryPolicy(attempts=3, initial_delay=0.2, max_delay=2.0)


async def poller(
    run: RunState,
    incoming: MemoryObjectReceiveStream[Tracked],
    resubmit: MemoryObjectSendStream[Work],
) -> None:
    outstanding: dict[str, Tracked] = {}
    # The poller sleeps until its next round; it is woken early only by a file due before then, or by the
    # end of the run. (Waking on every arrival cost a wake-up, a task group and two tasks per file.)
    wake = anyio.Event()
    planned = math.inf

    async def intake() -> None:
        async with incoming:
            while True:
                try:
                    tracked = await receive_now(incoming)  # ``async for`` took a loop round per receipt
                except anyio.EndOfStream:
                    return
                outstanding[tracked.item.rel_path] = tracked
                if tracked.next_poll < planned:
                    wake.set()

    async def end_of_run() -> None:
        await run.completion.all_done.wait()
        wake.set()

    next_round = 0.0
    async with anyio.create_task_group() as tg:
        tg.start_soon(intake)
        tg.start_soon(end_of_run)
        while not run.completion.all_done.is_set():
            now = time.monotonic()
            if now >= next_round or all_due(outstanding.values(), now):
                due = [t for t in outstanding.values() if t.next_poll <= now]
            else:
                due = []
            if not due:
                planned = next_start(outstanding.values(), next_round)
                wake = anyio.Event()
                with anyio.move_on_after(planned - now):
                    await wake.wait()
                planned = math.inf
                continue
            next_round = now + run.config.poll_initial
            for start in range(0, len(due), POLL_CHUNK):
                if run.breaker.tripped:
                    _abandon(run, outstanding)
                    break
                await _poll_round(run, due[start : start + POLL_CHUNK], outstanding, resubmit)
            run.progress.in_flight(len(outstanding))
        tg.cancel_scope.cancel()


def all_due(followed: Collection[Tracked], now: float) -> bool:
    """Whether every followed file is due by ``now`` (then a round need not wait for the spacing)."""
    return bool(followed) and all(t.next_poll <= now for t in followed)


def next_start(followed: Collection[Tracked], next_round: float) -> float:
    """When the next round may start: when a file is due, no sooner than ``next_round`` (the spacing),
    unless every followed file is due before then; never, while nothing is followed."""
    if not followed:
        return math.inf
    earliest = min(t.next_poll for t in followed)
    latest = max(t.next_poll for t in followed)
    return min(max(next_round, earliest), latest)


async def _poll_round(
    run: RunState,
    due: list[Tracked],
    outstanding: dict[str, Tracked],
    resubmit: MemoryObjectSendStream[Work],
) -> None:
    try:
        statuses = await retrying(
            lambda: run.target.poll([t.receipt for t in due]),
            POLL_RETRY,
            what="polling",
            rng=run.rng,
            breaker=run.breaker,
        )
    except PlatformUnreachable:
        _abandon(run, outstanding)
        return
    except TransientError as exc:
        # The platform is unreachable for now: try these again later rather than failing them.
        log.warning("polling failed, will retry: %s", exc)
        for t in due:
            t.next_poll = time.monotonic() + run.config.poll_max
        return
    now = time.monotonic()
    done: list[Tracked] = []
    failed: list[tuple[Tracked, str]] = []
    to_retry: list[tuple[Tracked, str]] = []
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
        lost = await run.manifest.mark_done([t.item.rel_path for t in done], run.run_id)
        _failpoints.failpoint("after-done")
        run.summary.done += len(done) - len(lost)  # a file taken over is counted by its new owner
        run.progress.finished(len(done))
    if failed:
        await run.fail([(t.item.rel_path, reason) for t, reason in failed])
    for t in [*done, *(t for t, _ in failed)]:
        outstanding.pop(t.item.rel_path, None)
    run.completion.finish(len(done) + len(failed))
    if to_retry:
        await _retry(run, to_retry, outstanding, resubmit)


def _abandon(run: RunState, outstanding: dict[str, Tracked]) -> None:
    """The platform is unreachable: leave every followed file to the next run (it stays ``processing``,
    which resumes by polling), so the run can end."""
    run.stop_sending = True
    run.summary.stopped_reason = run.breaker.message
    run.completion.finish(len(outstanding))
    run.progress.finished(len(outstanding))
    outstanding.clear()


async def _retry(
    run: RunState,
    to_retry: list[tuple[Tracked, str]],
    outstanding: dict[str, Tracked],
    resubmit: MemoryObjectSendStream[Work],
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
                breaker=run.breaker,
            )
        except TransientError:
            receipts = []  # nothing retried this round: the next poll finds them failed and asks again
        except PermanentError as exc:
            await run.fail([(t.item.rel_path, f"{reason}; retry refused: {exc.detail}") for t, reason in to_retry])
            for t, _ in to_retry:
                outstanding.pop(t.item.rel_path, None)
            run.completion.finish(len(to_retry))
            return
        run.summary.platform_retries += len(receipts)
        lost = await run.manifest.mark_processing(receipts, run.run_id, retried=True)
        if lost:  # taken over by another worker meanwhile: it follows them now
            for path in lost:
                outstanding.pop(path, None)
            run.completion.finish(len(lost))
            to_retry = [(t, r) for t, r in to_retry if t.item.rel_path not in lost]
            receipts = [r for r in receipts if r.rel_path not in lost]
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
    run.summary.platform_retries += len(to_retry)
    # No server-side retry: send the file again. It stays admitted (counted outstanding) throughout.
    for t, _ in to_retry:
        outstanding.pop(t.item.rel_path, None)
        await send_now(resubmit, Work(t.item, dedup=False, attempts=t.attempts))
