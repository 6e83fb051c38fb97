"""The Ray side of ``ingest run --ray``: each actor runs one worker of a shared job in its own process,
in-process (no subprocess to orphan when Ray kills the actor), and returns its summary.

Ray restarts a dead actor and retries its call (``max_restarts=-1``, ``max_task_retries=-1``); the
manifest's leases make that safe: the restarted worker takes the dead one's claims over once they
expire, exactly as a worker on another machine would.
"""

from __future__ import annotations

import os
from typing import Any

from ingest.config import RunConfig

__all__ = ["run_actors", "work"]


def work(config: RunConfig, cwd: str) -> dict[str, Any]:
    """One worker of the job (``config`` is already a shared, quiet worker's); its summary as JSON."""
    import anyio

    from ingest.engine.run import run

    os.chdir(cwd)
    summary = anyio.run(lambda: run(config, handle_signals=False))
    return summary.to_json()


def run_actors(ray: Any, config: RunConfig, n: int, address: str | None) -> list[dict[str, Any]]:
    """Start ``n`` worker actors on the cluster at ``address`` (a local one when empty); their summaries."""
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)

    @ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0.5)
    class Worker:
        def run(self, config: RunConfig, cwd: str) -> dict[str, Any]:
            return work(config, cwd)

    actors = [Worker.remote() for _ in range(n)]  # type: ignore[attr-defined]
    run_actors.actors = actors  # type: ignore[attr-defined]  # tests reach them to kill one
    return list(ray.get([a.run.remote(config, os.getcwd()) for a in actors]))
