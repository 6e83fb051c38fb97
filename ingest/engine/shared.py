"""One worker process of a shared job: heartbeat, the planner role when elected, and the engine over
the files it claims (``claimed``). Several of these (``--processes``, ``--ray``, or the same command
on several machines) share one job through the manifest and nothing else.
"""

from __future__ import annotations

import os
import socket
import uuid

import anyio

from ingest.config import EngineConfig
from ingest.engine.claimed import ClaimSource, FencedManifest
from ingest.engine.pipeline import run_engine
from ingest.engine.walk import check_fingerprint, fingerprint, lead_walk
from ingest.manifest.jobs import JobStore
from ingest.platforms.base import Target
from ingest.progress import Progress
from ingest.report import RunSummary
from ingest.sources.base import Source

__all__ = ["DEFAULT_LEASE", "new_worker_id", "run_worker"]

#: Seconds a claim lasts without a heartbeat; a dead worker's files are taken over after this.
DEFAULT_LEASE = 30.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def run_worker(
    *,
    store: JobStore,
    source: Source,
    target: Target,
    run_id: int,
    config: EngineConfig,
    progress: Progress,
    summary: RunSummary,
    lease: float = DEFAULT_LEASE,
    worker: str | None = None,
) -> RunSummary:
    """Work the job until the walk is over and no unfinished file is left to anyone."""
    worker = worker or new_worker_id()
    mine = await fingerprint(source)
    others_alive = any(not w.stopped and w.heartbeat_age < lease for w in store.workers())
    start = store.walk_state()
    check_fingerprint(store, mine, source)
    await store.register_worker(worker, socket.gethostname(), os.getpid())
    # A finished job run again walks again (to find new and changed files), unless it is still being
    # finished by others: then this process just helps. So it does when it cannot take the planner role
    # now: a planner paused or stalled (its heartbeat stale) still holds it, on PostgreSQL for as long as
    # its connection lives; a fresh walk would wait for that role, and this worker's claims for a walk
    # nobody makes (tests/test_manifest_shared.py).
    fresh = start.done and not others_alive and await store.try_lead(worker, lease)
    fenced = FencedManifest(store, worker, lease)
    # A fresh walk is numbered one past the finished one: only its end (or a later walk's) ends this worker.
    walk = start.walk + 1 if fresh else start.walk
    claims = ClaimSource(source, fenced, batch=max(4, config.concurrency), walk=walk)
    try:
        async with anyio.create_task_group() as tg:

            async def heartbeat() -> None:
                while True:
                    await fenced.beat()
                    check_fingerprint(store, mine, source)
                    await anyio.sleep(lease / 3)

            async def plan() -> None:
                await lead_walk(
                    store,
                    source,
                    worker=worker,
                    run_id=run_id,
                    lease=lease,
                    fresh=fresh,
                    mine=mine,
                    summary=summary,
                    walk=walk,
                )

            tg.start_soon(heartbeat)
            tg.start_soon(plan)
            await run_engine(
                target=target,
                manifest=fenced,
                run_id=run_id,
                source=claims,
                config=config,
                progress=progress,
                summary=summary,
            )
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await fenced.beat()  # the final counters (claimed, done, lost) for `ingest status`
            await store.stop_worker(worker)
    summary.resumed += fenced.taken_over
    return summary
