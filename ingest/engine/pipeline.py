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

import math

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest._aio import first_leaf
from ingest.config import EngineConfig
from ingest.engine.planner import plan
from ingest.engine.poller import poller
from ingest.engine.state import RunState, Tracked, Work
from ingest.engine.workers import worker
from ingest.errors import ConfigError
from ingest.manifest.base import Manifest
from ingest.platforms.base import Target
from ingest.progress import Progress
from ingest.report import RunSummary
from ingest.sources.base import Source

__all__ = ["run_engine"]


async def run_engine(
    *,
    target: Target,
    manifest: Manifest,
    run_id: int,
    source: Source,
    config: EngineConfig,
    progress: Progress,
    summary: RunSummary,
) -> RunSummary:
    """Send everything ``source`` yields through ``target``, recording every step in ``manifest``.

    Returns when every admitted file is done or failed. Raises ``ConfigError``/``AuthError`` when the
    platform refuses the configuration (nothing more can succeed); cancellation leaves the manifest
    consistent (the writer drains before the manifest block exits).
    """
    run = RunState(
        source=source,
        target=target,
        manifest=manifest,
        run_id=run_id,
        config=config,
        progress=progress,
        summary=summary,
    )
    buffer = config.concurrency * max(2, run.batch_files)
    work_send, work_recv = anyio.create_memory_object_stream[Work](buffer)
    # Receipts are bounded by max_in_flight (admission), so an unbounded buffer cannot grow past it.
    rcpt_send, rcpt_recv = anyio.create_memory_object_stream[Tracked](math.inf)
    try:
        async with anyio.create_task_group() as tg:
            _start(tg, run, work_send, work_recv, rcpt_send, rcpt_recv)
    except BaseExceptionGroup as group:
        raise first_leaf(group, (ConfigError, Exception)) from None
    return summary


def _start(
    tg: TaskGroup,
    run: RunState,
    work_send: MemoryObjectSendStream[Work],
    work_recv: MemoryObjectReceiveStream[Work],
    rcpt_send: MemoryObjectSendStream[Tracked],
    rcpt_recv: MemoryObjectReceiveStream[Tracked],
) -> None:
    tg.start_soon(plan, run, work_send.clone(), rcpt_send.clone())
    for _ in range(run.config.concurrency):
        tg.start_soon(worker, run, work_recv.clone(), rcpt_send.clone())

    async def poll_then_close() -> None:
        async with work_send:  # the poller's resubmit channel; closing it lets idle workers exit
            await poller(run, rcpt_recv, work_send)

    tg.start_soon(poll_then_close)
    # Each stage holds its own clone; drop the originals so streams end when their users do.
    work_recv.close()
    rcpt_send.close()
