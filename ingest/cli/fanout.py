"""One job, many engine processes: ``ingest run … --processes N`` (this machine) and ``--ray [ADDRESS]
--workers N`` (a Ray cluster). Each process is an ordinary shared-job worker (``--shared``); they meet
only in the manifest. This process shows one progress display (from the manifest) and one summary.
A request budget (``--max-rps N``) is the job's: each of the N workers keeps N/workers of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ingest.config import RunConfig
from ingest.errors import ConfigError
from ingest.manifest import open_manifest, parse_location
from ingest.ratelimit import split_budget
from ingest.report import RunSummary

__all__ = ["RAY_SUMMARY_KEYS", "combine", "run_processes", "worker_argv"]

#: Flags of the parent that its workers must not see (their value follows unless it is a switch).
_PARENT_FLAGS = {
    "--processes": True,
    "--workers": True,
    "--max-rps": True,  # the job's budget: each worker is given its share instead
    "--json": False,
    "-q": False,
    "--quiet": False,
}
RAY_SUMMARY_KEYS = (
    "done",
    "failed",
    "skipped",
    "resumed",
    "sent_files",
    "sent_bytes",
    "platform_retries",
    "budget_requests",
    "budget_waits",
    "rate_limited",
)


def worker_argv(argv: Sequence[str], *, max_rps: float | None = None) -> list[str]:
    """The parent's ``run`` arguments for one worker: without the fan-out flags, with ``--shared``,
    quiet, the summary as JSON on stdout and ``max_rps``, the worker's share of the job's budget
    (a flag, so it also beats a budget in the ``--config`` file)."""
    out: list[str] = []
    skip_value = False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if name == "--ray":
            if "=" not in arg and i < len(args) and not args[i].startswith("-"):
                i += 1  # its optional ADDRESS
            continue
        if name in _PARENT_FLAGS:
            skip_value = _PARENT_FLAGS[name] and "=" not in arg
            continue
        out.append(arg)
    share = ["--max-rps", repr(max_rps)] if max_rps is not None else []
    return [*out, *share, "--shared", "--json", "-q", "--no-progress"]


def combine(parts: Sequence[dict[str, Any]], *, destination: str, manifest: str, elapsed: float) -> RunSummary:
    summary = RunSummary(destination=destination, manifest=manifest)
    for part in parts:
        for key in RAY_SUMMARY_KEYS:
            setattr(summary, key, getattr(summary, key) + int(part.get(key) or 0))
        summary.failures.extend((str(f[0]), str(f[1])) for f in part.get("failures") or [])
        if part.get("stopped_reason"):
            summary.stopped_reason = str(part["stopped_reason"])
    summary.elapsed = elapsed
    return summary


def _require_manifest(manifest: str | None) -> str:
    if not manifest:
        raise ConfigError(
            "--processes/--ray need a --manifest every process shares: a file (SQLite, one machine) "
            "or postgresql://…?job=NAME"
        )
    return manifest


def run_processes(
    argv: Sequence[str],
    n: int,
    *,
    manifest: str | None,
    job: str | None,
    show: bool,
    max_rps: float | None = None,
) -> RunSummary:
    """Start ``n`` worker processes of this job and wait for them; one progress line, one summary.
    ``max_rps`` is the job's request budget, split evenly between the workers."""
    location = parse_location(_require_manifest(manifest), job)
    if isinstance(location, Path):
        open_manifest(location).close()  # created (and migrated) once, before the workers race to it
    child = worker_argv(argv, max_rps=split_budget(max_rps, n))
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ingest", *child], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    try:
        _watch(procs, location, job, show)
        outputs = [p.communicate() for p in procs]
    except BaseException:
        for p in procs:
            p.terminate()  # SIGTERM: each worker stops cleanly and releases its claims
        for p in procs:
            p.wait(60)
        raise
    parts: list[dict[str, Any]] = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        if proc.returncode not in (0, 1):
            line = next((x for x in reversed(err.splitlines()) if x.strip()), f"exit {proc.returncode}")
            raise ConfigError(f"a worker process failed: {line.removeprefix('ingest: error: ')}")
        parts.append(json.loads(out))
    destination = str(parts[0].get("destination", "")) if parts else ""
    summary = combine(parts, destination=destination, manifest=str(location), elapsed=time.monotonic() - started)
    summary.max_rps = max_rps
    return summary


def _watch(procs: list[subprocess.Popen[str]], location: Any, job: str | None, show: bool) -> None:
    """Wait for the workers; with ``show``, one line of progress read from the manifest."""
    store = None
    while any(p.poll() is None for p in procs):
        if show:
            try:
                store = store or open_manifest(location, job)
                c = store.counts()
                total = sum(c.values())
                line = f"\r{c['done']}/{total} done, {c['failed']} failed, {len(procs)} processes"
                print(line, end="", file=sys.stderr, flush=True)
            except ConfigError:
                pass  # not created yet by a worker
        time.sleep(0.5)
    if show:
        print(file=sys.stderr)
    if store is not None:
        store.close()


def run_on_ray(config: RunConfig, n: int, address: str | None) -> RunSummary:
    """``n`` worker actors on a Ray cluster (a local one when ``address`` is empty). Ray restarts a dead
    actor and retries its call; the leases make that safe (the restarted worker takes over)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'ingest[ray]'") from None
    manifest = _require_manifest(str(config.manifest) if config.manifest is not None else None)
    from ingest.engine.ray_workers import run_actors

    engine = config.engine.model_copy(update={"max_rps": split_budget(config.engine.max_rps, n)})
    worker = config.model_copy(update={"shared": True, "quiet": True, "progress": False, "engine": engine})
    started = time.monotonic()
    parts = run_actors(ray, worker, n, address)
    destination = str(parts[0].get("destination", "")) if parts else ""
    summary = combine(
        parts, destination=destination, manifest=str(parse_location(manifest or "")), elapsed=time.monotonic() - started
    )
    summary.max_rps = config.engine.max_rps
    return summary
