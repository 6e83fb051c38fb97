"""Benchmark: how many uploads each client keeps in flight at the MOI emulator, and when.

``run.py``'s ``moi`` part says how fast each client is; this says why: a client with 32 slots that keeps
only 20 uploads at the emulator leaves a third of its concurrency unused, whatever it costs per request.
The emulator runs in this process (the same app ``ingest serve moi --latency-ms 20 --task-delay-ms 50``
serves, as ``run.py`` runs it) with one more middleware that counts the upload requests between their
arrival and their answer; a sampler reads the count every 5 ms while one client runs:

- ``curl``: ``curl --parallel --parallel-max 32``, one multipart request per file (``run.py``'s baseline);
- ``ingest``: ``ingest run --batch-files 1 --concurrency 32``;
- ``batched``: ``ingest run --concurrency 32`` (20 files per request).

Printed per client: wall time, when its first request arrived (start-up), the span with requests
arriving, the mean number of uploads in flight over that span, the share of samples with none, the
tail (from the last upload's answer to the client's exit: the wait for the last tasks, the summary,
the exit) with the requests it sent, and the timeline (mean uploads in flight per 100 ms)::

    python benchmarks/bench_inflight.py [--files 2000] [--repeat 1] [--only curl,ingest,batched]

Loopback only. The emulator shares this process with the sampler (~1 % of a core), and the two cores
with the client: read the numbers side by side within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_moi as moi

from ingest.emulators.kit.server import serve_in_background
from ingest.emulators.moi import MoiEmulatorConfig, create_moi_app

CLIENTS = ("curl", "ingest", "batched")
SAMPLE_S = 0.005


@dataclass
class Trace:
    client: str
    wall_s: float = 0.0
    #: (seconds since the client started, uploads in flight) every ``SAMPLE_S``.
    samples: list[tuple[float, int]] = field(default_factory=list)
    first_request_s: float | None = None
    last_request_s: float = 0.0
    #: When the last upload was answered; after it, the client only waits for its tasks (polls) and exits.
    last_upload_answered_s: float = 0.0
    #: Requests arriving after ``last_upload_answered_s`` (the tail's polls).
    tail_requests: int = 0

    def tail_s(self) -> float:
        return self.wall_s - self.last_upload_answered_s

    def active(self) -> list[int]:
        if self.first_request_s is None:
            return []
        return [n for t, n in self.samples if self.first_request_s <= t <= self.last_request_s]

    def timeline(self) -> str:
        buckets: dict[int, list[int]] = {}
        for t, n in self.samples:
            buckets.setdefault(int(t * 10), []).append(n)
        return " ".join(f"{sum(v) / len(v):.0f}" for _, v in sorted(buckets.items()))


def client_command(client: str, src: Path, url: str, run_dir: Path) -> list[str]:
    if client == "curl":
        config = run_dir / "curl.cfg"
        config.write_text(moi.curl_config(url, sorted(src.iterdir())))
        return ["curl", "--parallel", "--parallel-max", "32", "--config", str(config)]
    extra = ["--batch-files", "1"] if client == "ingest" else []
    return moi.ingest_cmd(src, url, run_dir, 32, extra)


async def trace_one(client: str, src: Path, work: Path) -> Trace:
    trace = Trace(client)
    in_flight = 0
    started = 0.0
    app = create_moi_app(
        MoiEmulatorConfig(
            data_dir=work / "data", api_key=moi.API_KEY, volumes=(moi.VOLUME,), latency_ms=20, task_delay_ms=50
        )
    )

    @web.middleware
    async def count_uploads(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        nonlocal in_flight
        now = time.monotonic() - started
        if trace.first_request_s is None:
            trace.first_request_s = now
        trace.last_request_s = now
        if not request.path.endswith("/connectors/upload"):
            if in_flight == 0 and trace.last_upload_answered_s:
                trace.tail_requests += 1  # reset by a later upload: counts only what follows the last one
            return await handler(request)
        in_flight += 1
        trace.tail_requests = 0
        try:
            return await handler(request)
        finally:
            in_flight -= 1
            trace.last_upload_answered_s = time.monotonic() - started

    app.middlewares.insert(0, count_uploads)  # outermost: the latency the emulator adds is in flight too
    async with serve_in_background(app, moi.HOST) as url:
        run_dir = work / "run"
        run_dir.mkdir()
        cmd = client_command(client, src, url, run_dir)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=run_dir,
            env=moi.child_env(MOI_KEY=moi.API_KEY),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        waiting = asyncio.ensure_future(proc.wait())
        while not waiting.done():
            trace.samples.append((time.monotonic() - started, in_flight))
            await asyncio.wait({waiting}, timeout=SAMPLE_S)
        trace.wall_s = time.monotonic() - started
        assert proc.stderr is not None
        err = await proc.stderr.read()
        if proc.returncode != 0:
            raise RuntimeError(f"{client}: exit {proc.returncode}: {err.decode(errors='replace').strip()[-300:]}")
    return trace


def report(traces: Sequence[Trace]) -> str:
    head = (
        "| client | wall s | first request s | span s | uploads in flight (mean) | samples with none "
        "| tail s (last upload answered to exit) | requests in the tail |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for t in traces:
        active = t.active()
        mean = sum(active) / len(active) if active else 0.0
        none = sum(1 for n in active if n == 0) / len(active) if active else 0.0
        span = t.last_request_s - (t.first_request_s or 0.0)
        lines.append(
            f"| {t.client} | {t.wall_s:.2f} | {t.first_request_s or 0.0:.2f} | {span:.2f} | {mean:.1f} | {none:.0%} "
            f"| {t.tail_s():.3f} | {t.tail_requests} |"
        )
    lines.append("")
    lines += [f"{t.client} (uploads in flight, mean per 100 ms from the start): {t.timeline()}" for t in traces]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--files", type=int, default=2000, help="files of 4 KiB (default 2,000, as run.py)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each client, interleaved")
    p.add_argument("--only", default=",".join(CLIENTS), help=f"comma-separated clients (default {','.join(CLIENTS)})")
    args = p.parse_args(argv)
    clients = [c.strip() for c in args.only.split(",") if c.strip()]
    if unknown := sorted(set(clients) - set(CLIENTS)):
        p.error(f"unknown client(s) {', '.join(unknown)}: choose from {', '.join(CLIENTS)}")
    if "curl" in clients and shutil.which("curl") is None:
        p.error("curl is required for the curl client")
    with tempfile.TemporaryDirectory(prefix="bench-inflight-") as tmp:
        src = Path(tmp) / "src"
        moi.make_small_files(src, args.files, 4096)
        traces = []
        for i in range(args.repeat):
            for client in clients:
                work = Path(tmp) / f"{client}-{i}"
                work.mkdir()
                traces.append(asyncio.run(trace_one(client, src, work)))
                shutil.rmtree(work, ignore_errors=True)
    print(report(traces))
    return 0


if __name__ == "__main__":
    sys.exit(main())
