"""``ingest status`` for a shared job: each worker and the planner's position."""

from __future__ import annotations

import time
from typing import Any

from ingest.manifest.jobs import JobStore

__all__ = ["job_lines", "job_status"]


def job_status(store: JobStore) -> dict[str, Any]:
    walk = store.walk_state()
    workers = []
    for w in store.workers():
        elapsed = max(1e-9, (time.time() - w.heartbeat_age) - w.started_at)
        workers.append(
            {
                "id": w.id,
                "host": w.host,
                "pid": w.pid,
                "claimed": w.claimed,
                "done": w.done,
                "files_per_second": round(w.done / elapsed, 1),
                "heartbeat_age": round(w.heartbeat_age, 1),
                "takeovers": w.takeovers,
                "lost": w.lost,
                "stopped": w.stopped,
            }
        )
    return {
        "job": store.job,
        "walk": {"walk": walk.walk, "position": walk.last_path, "walked": walk.walked, "done": walk.done},
        "planner": walk.planner,
        "workers": workers,
    }


def job_lines(job: dict[str, Any]) -> list[str]:
    walk = job["walk"]
    lines = [
        f"job:         {job['job']}",
        f"walk:        #{walk['walk']} {'finished' if walk['done'] else 'at ' + repr(walk['position'])},"
        f" {walk['walked']} entries" + (f", planner {job['planner']}" if job["planner"] else ""),
    ]
    if job["workers"]:
        lines.append(
            f"  {'worker':<36} {'host':<16} {'pid':>7} {'claimed':>8} {'done':>8} {'files/s':>8}"
            f" {'beat age':>8} {'taken over':>10}"
        )
    for w in job["workers"]:
        age = "stopped" if w["stopped"] else f"{w['heartbeat_age']:.1f}s"
        lines.append(
            f"  {w['id'][:36]:<36} {w['host'][:16]:<16} {w['pid']:>7} {w['claimed']:>8} {w['done']:>8}"
            f" {w['files_per_second']:>8} {age:>8} {w['takeovers']:>10}"
        )
    return lines
