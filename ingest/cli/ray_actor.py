"""The Ray side of ``--ray``: each actor runs one shared-job worker in its own process, in-process
(no subprocess to orphan when Ray kills the actor), and returns its summary."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__all__ = ["run_actors", "work"]


def work(argv: Sequence[str], cwd: str) -> dict[str, Any]:
    """One worker of the job, as ``ingest run ARGV --shared`` would run it; its summary as JSON."""
    import anyio

    from ingest.cli.main import build_parser, config_from_args
    from ingest.engine.run import run

    os.chdir(cwd)
    args = build_parser(with_emulators=False).parse_args(list(argv))
    config = config_from_args(args)
    summary = anyio.run(lambda: run(config, handle_signals=False))
    return summary.to_json()


def run_actors(ray: Any, argv: Sequence[str], n: int, address: str | None) -> list[dict[str, Any]]:
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)

    @ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0.5)
    class Worker:
        def run(self, argv: list[str], cwd: str) -> dict[str, Any]:
            return work(argv, cwd)

    actors = [Worker.remote() for _ in range(n)]  # type: ignore[attr-defined]
    run_actors.actors = actors  # type: ignore[attr-defined]  # tests reach them to kill one
    return list(ray.get([a.run.remote(list(argv), os.getcwd()) for a in actors]))
