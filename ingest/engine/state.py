"""The state one engine run shares between its stages (all on one event loop: no locks needed)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import anyio

from ingest.config import EngineConfig
from ingest.engine.breaker import Breaker
from ingest.manifest.base import Manifest
from ingest.models import FileItem, Receipt
from ingest.platforms.base import Target
from ingest.progress import Progress
from ingest.report import RunSummary
from ingest.retry import AdaptiveLimiter, RetryPolicy
from ingest.sources.base import Source

__all__ = ["Completion", "RunState", "Tracked", "Work", "track"]


@dataclass(slots=True)
class Work:
    """One file on its way to a worker."""

    item: FileItem
    dedup: bool
    attempts: int = 0


@dataclass(slots=True)
class Tracked:
    """One file the platform accepted, followed by the poller."""

    item: FileItem
    receipt: Receipt
    attempts: int
    deadline: float
    next_poll: float
    interval: float


class Completion:
    """Counts files admitted but not yet finished; ``all_done`` fires when the walk is over and none
    remain. Also owns the in-flight limit."""

    def __init__(self, max_in_flight: int) -> None:
        self.outstanding = 0
        self.walk_over = False
        self.all_done = anyio.Event()
        self.slots = anyio.Semaphore(max_in_flight)

    async def admit(self) -> None:
        try:
            # Under the limit, no checkpoint: anyio's acquire() yields to the loop even then, a loop
            # round per file (the planner still yields when the work stream is full).
            self.slots.acquire_nowait()
        except anyio.WouldBlock:
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


class RunState:
    """The state of one engine run, shared by its tasks (all on one event loop: no locks needed)."""

    def __init__(
        self,
        *,
        source: Source,
        target: Target,
        manifest: Manifest,
        run_id: int,
        config: EngineConfig,
        progress: Progress,
        summary: RunSummary,
    ) -> None:
        self.source = source
        self.target = target
        self.manifest = manifest
        self.run_id = run_id
        self.config = config
        self.progress = progress
        self.summary = summary
        self.completion = Completion(config.max_in_flight)
        self.limiter = AdaptiveLimiter(config.concurrency)
        self.policy = RetryPolicy(attempts=config.request_retries + 1)
        self.breaker = Breaker(config.unreachable_after)
        self.rng = random.Random()
        features = target.features
        self.batch_files = max(1, min(config.batch_files or features.max_batch_files, features.max_batch_files))
        #: Wait for full batches (never more than can be admitted at once, or a batch could wait forever).
        self.full_batches = features.full_batches
        if self.full_batches:
            self.batch_files = min(self.batch_files, config.max_in_flight)
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
        lost = await self.manifest.mark_failed(failures, self.run_id)
        if lost:  # taken over by another worker meanwhile: its outcome is that worker's to record
            failures = [f for f in failures if f[0] not in lost]
            self.progress.finished(len(lost))
        self.summary.failed += len(failures)
        self.summary.failures.extend(failures[: max(0, 1000 - len(self.summary.failures))])
        for path, reason in failures:
            self.progress.message(f"failed: {path}: {reason}")
        self.progress.finished(len(failures))

    def batchable(self, item: FileItem) -> bool:
        return self.batch_files > 1 and item.size <= self.batch_file_limit

    def fits(self, batch: list[Work], size: int, item: FileItem) -> bool:
        return len(batch) < self.batch_files and (not self.batch_bytes or size + item.size <= self.batch_bytes)


def track(run: RunState, item: FileItem, receipt: Receipt, *, attempts: int) -> Tracked:
    now = time.monotonic()
    return Tracked(
        item=item,
        receipt=receipt,
        attempts=attempts,
        deadline=now + run.config.task_timeout,
        next_poll=now + run.config.poll_initial,
        interval=run.config.poll_initial,
    )
