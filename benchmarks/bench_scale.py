"""Benchmark: one job across processes (``ingest run --processes N``), and the PostgreSQL manifest alone.

(1) scale-out: ``ingest serve moi --latency-ms 50`` in its own process (a fresh one per run), a tree of
    small files, and ``ingest run --processes N`` for N = 1, 2, 4 with the same ``--concurrency`` per
    worker and ``--batch-files 1``, so every file is its own request and the request latency, not the
    CPU, bounds each worker. N = 1 runs with ``--shared``: the same claim path as the others. The
    manifest is SQLite (default) or PostgreSQL (``--pg``). Throughput is measured two ways: over the
    whole command's wall time (process start-up included), and over the engine phase (from the first
    worker's run start, as recorded in the manifest, to the last file marked done). Ratios are to the
    N = 1 run of the same invocation. ``/_emulator/files`` is checked: every file stored exactly once.

(2) claim-and-commit: the PostgreSQL backend with no platform at all. A job of ``--claim-files`` pending
    rows; W worker processes each loop: claim a batch (``FOR UPDATE SKIP LOCKED``, a lease), then for
    every file of the batch, concurrently, a fenced ``mark_uploading``, ``mark_processing`` and
    ``mark_done`` (one write per file, as the engine issues them; group commit folds the batch's writes
    of one kind into one set-based statement). Files/s = files / (time until every row is done).

PostgreSQL: ``--pg postgresql://…`` (any database you own; each run uses its own job name), or a private
server started for the run (``initdb`` + ``pg_ctl`` in a temporary folder, as the tests do). Usage::

    python benchmarks/bench_scale.py [--files 800] [--concurrency 2] [--processes 1,2,4] [--latency-ms 50]
                                     [--task-delay-ms 50] [--manifest sqlite|postgres] [--repeat 1]
                                     [--claim-files 20000] [--claim-batch 64] [--claim-workers 1,2,4]
                                     [--pg URL] [--skip-scale] [--skip-claims]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from ingest.manifest import Owner, open_manifest, parse_location  # noqa: E402
from ingest.models import FileItem, Receipt  # noqa: E402

API_KEY = "bench-key"
VOLUME = "1001"
TARGET_AT_2 = 1.8
TARGET_AT_4 = 3.2
TARGET_CLAIMS = 5000.0


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("INGEST_FAILPOINT", None)
    return env | extra


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def verdict(value: float, target: float) -> str:
    return f"{'met' if value >= target else 'MISSED'} (goal ≥ {target:g})"


@contextmanager
def private_pg() -> Iterator[Any]:
    from tests.pg import pg_server

    with pg_server() as server:
        yield server


# ----- (1) scale-out ------------------------------------------------------------------------------------


@contextmanager
def emulator(data: Path, latency_ms: int, task_delay_ms: int) -> Iterator[str]:
    cmd = [sys.executable, "-m", "ingest", "serve", "moi", "--port", "0", "--data-dir", str(data),
           "--api-key", API_KEY, "--volume", VOLUME, "--latency-ms", str(latency_ms),
           "--task-delay-ms", str(task_delay_ms)]  # fmt: skip
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=child_env())
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            if "http://" not in line:
                raise RuntimeError(f"the emulator did not start: {line!r}")
            yield line[line.index("http://") :].split()[0]
        finally:
            proc.terminate()
            proc.wait(10)
            proc.stdout.close()


def make_tree(root: Path, count: int, size: int) -> None:
    for i in range(count):
        path = root / f"d{i % 10}" / f"f{i:06d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((f"{i:08d}".encode() * (size // 8 + 1))[:size])


def stored_once(url: str, count: int) -> bool:
    with urllib.request.urlopen(url + "/_emulator/files", timeout=30) as reply:
        files = json.load(reply)
    return len(files) == count and all(f["uploads"] == 1 for f in files)


def engine_seconds(location: str) -> float:
    """From the first worker's run start to the last file marked done, as the manifest records them."""
    with open_manifest(parse_location(location)) as m:
        started = min(r["started_at"] for r in m.runs())
        last = max(r.updated_at for r in m.iter_files())
    return float(last - started)


def scale_run(work: Path, args: argparse.Namespace, n: int, pg: Any) -> dict[str, Any]:
    run_dir = work / f"run-{n}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir()
    location = pg.url(f"bench-{uuid.uuid4().hex[:10]}") if pg is not None else str(run_dir / "m.db")
    with emulator(run_dir / "data", args.latency_ms, args.task_delay_ms) as url:
        fan = ["--processes", str(n)] if n > 1 else ["--shared"]
        cmd = [sys.executable, "-m", "ingest", "run", str(work / "src"), "--target", "moi", "--endpoint", url,
               "--volume-id", VOLUME, "--manifest", location, *fan, "--concurrency", str(args.concurrency),
               "--batch-files", "1", "--poll-initial", "0.05", "--poll-max", "0.2", "--json", "-q"]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(cmd, cwd=run_dir, env=child_env(MOI_KEY=API_KEY), capture_output=True, text=True)
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"ingest run --processes {n} failed ({done.returncode}): {done.stderr[-2000:]}")
        ok = stored_once(url, args.files)
    summary = json.loads(done.stdout)
    return {"processes": n, "wall_s": wall, "engine_s": engine_seconds(location), "done": summary["done"], "ok": ok}


def bench_scale(work: Path, args: argparse.Namespace, pg: Any) -> tuple[str, bool]:
    make_tree(work / "src", args.files, args.size)
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.processes}
    for _ in range(args.repeat):
        for n in args.processes:  # interleaved, so background noise spreads over all of them
            r = scale_run(work, args, n, pg)
            print(f"  --processes {n}: {r['wall_s']:.1f} s wall, {r['engine_s']:.1f} s engine", file=sys.stderr)
            runs[n].append(r)
    med = {n: sorted(rs, key=lambda r: r["engine_s"])[len(rs) // 2] for n, rs in runs.items()}
    base = med[args.processes[0]]
    rows = []
    for n in args.processes:
        r = med[n]
        wall_fps, eng_fps = args.files / r["wall_s"], args.files / r["engine_s"]
        ratio = base["engine_s"] / r["engine_s"]
        goal = {2: TARGET_AT_2, 4: TARGET_AT_4}.get(n)
        rows.append(
            [
                str(n),
                f"{r['wall_s']:.1f}",
                f"{wall_fps:.0f}",
                f"{base['wall_s'] / r['wall_s']:.2f}×",
                f"{r['engine_s']:.1f}",
                f"{eng_fps:.0f}",
                f"{ratio:.2f}×",
                verdict(ratio, goal) if goal else "",
                "yes" if r["ok"] else "NO",
            ]
        )
    table = md_table(
        ["processes", "wall s", "files/s (wall)", "× (wall)", "engine s", "files/s (engine)", "× (engine)",
         "goal", "each file once"],
        rows,
    )  # fmt: skip
    return table, all(r["ok"] for rs in runs.values() for r in rs)


# ----- (2) claim-and-commit -----------------------------------------------------------------------------


async def _seed(location: str, files: int) -> int:
    m = open_manifest(parse_location(location))
    try:
        run_id = m.start_run("bench")
        async with m.writer():
            await m.begin_walk("seed", "bench", fresh=False)
            step = 5000
            for start in range(0, files, step):
                items = [
                    FileItem(f"d{i % 100}/f{i:08d}.txt", Path("/nonexistent"), 4096, 1)
                    for i in range(start, min(files, start + step))
                ]
                await m.record_walk(items, [], run_id=run_id, last_path=items[-1].rel_path, walked=start + len(items))
            await m.finish_walk(files)
        return run_id
    finally:
        m.close()


async def _work(location: str, worker: str, batch: int, run_id: int) -> int:
    """One worker's loop: claim a batch, then per file (concurrently) the three fenced writes."""
    m = open_manifest(parse_location(location))
    done = 0
    try:
        async with m.writer():
            await m.register_worker(worker, platform.node(), os.getpid())
            while claims := await m.claim(worker, batch, 30.0):
                owner = Owner(worker, {c.record.path: c.fence for c in claims})

                async def one(path: str, size: int, owner: Owner = owner) -> None:
                    item = FileItem(path, Path("/nonexistent"), size, 1)
                    lost = await m.mark_uploading([item], run_id, dedup=True, owner=owner)
                    lost |= await m.mark_processing([Receipt(path, "r-" + path, "t-" + path)], run_id, owner=owner)
                    lost |= await m.mark_done([path], run_id, owner=owner)
                    assert not lost, lost

                await asyncio.gather(*(one(c.record.path, c.record.size or 0) for c in claims))
                done += len(claims)
            await m.stop_worker(worker)
    finally:
        m.close()
    return done


def _work_process(location: str, worker: str, batch: int, run_id: int, start: Any, out: Any) -> None:
    start.wait()
    out.put(asyncio.run(_work(location, worker, batch, run_id)))


def claim_run(pg: Any, files: int, batch: int, workers: int) -> dict[str, Any]:
    location = pg.url(f"claims-{uuid.uuid4().hex[:10]}")
    run_id = asyncio.run(_seed(location, files))
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_work_process, args=(location, f"w{i}", batch, run_id, start, out)) for i in range(workers)
    ]
    for p in procs:
        p.start()
    time.sleep(2.0)  # every worker imported and waiting
    began = time.monotonic()
    start.set()
    done = [out.get(timeout=600) for _ in procs]
    elapsed = time.monotonic() - began
    for p in procs:
        p.join(30)
    with open_manifest(parse_location(location)) as m:
        counts = m.counts()
    ok = sum(done) == files and counts["done"] == files
    return {"workers": workers, "elapsed_s": elapsed, "fps": files / elapsed, "ok": ok}


def bench_claims(args: argparse.Namespace, pg: Any) -> tuple[str, bool]:
    rows, ok = [], True
    for w in args.claim_workers:
        rs = [claim_run(pg, args.claim_files, args.claim_batch, w) for _ in range(args.repeat)]
        r = sorted(rs, key=lambda x: x["elapsed_s"])[len(rs) // 2]
        print(f"  claim-and-commit, {w} workers: {r['fps']:.0f} files/s", file=sys.stderr)
        ok &= all(x["ok"] for x in rs)
        spread = f"{min(x['fps'] for x in rs):.0f}–{max(x['fps'] for x in rs):.0f}" if len(rs) > 1 else ""
        rows.append(
            [
                str(w),
                str(args.claim_files),
                str(args.claim_batch),
                f"{r['elapsed_s']:.2f}",
                f"{r['fps']:.0f}",
                spread,
                verdict(r["fps"], TARGET_CLAIMS),
                "yes" if r["ok"] else "NO",
            ]
        )
    headers = ["worker processes", "files", "claim batch", "s", "files/s", "range", "goal", "all done once"]
    return md_table(headers, rows), ok


# ----- main ---------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--files", type=int, default=800, help="files in the scale-out tree (default 800)")
    p.add_argument("--size", type=int, default=1024, help="bytes per file (default 1024)")
    p.add_argument("--concurrency", type=int, default=2, help="--concurrency of every worker (default 2)")
    p.add_argument("--processes", type=_ints, default=[1, 2, 4], help="process counts (default 1,2,4)")
    p.add_argument("--latency-ms", type=int, default=50, help="emulator latency per request (default 50)")
    p.add_argument("--task-delay-ms", type=int, default=50, help="emulator task processing time (default 50)")
    p.add_argument("--manifest", choices=["sqlite", "postgres"], default="sqlite", help="scale-out manifest")
    p.add_argument("--repeat", type=int, default=1, help="runs of each; the median is shown (default 1)")
    p.add_argument("--claim-files", type=int, default=20000, help="rows in the claim benchmark (default 20000)")
    p.add_argument("--claim-batch", type=int, default=64, help="files per claim (default 64)")
    p.add_argument("--claim-workers", type=_ints, default=[1, 2, 4], help="worker processes (default 1,2,4)")
    p.add_argument("--pg", default=None, help="a postgresql:// database to use (default: a private server)")
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--skip-claims", action="store_true")
    args = p.parse_args(argv)

    need_pg = not args.skip_claims or args.manifest == "postgres"
    print(f"# bench_scale: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"command: python benchmarks/bench_scale.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    ok = True
    with (_given_pg(args.pg) if args.pg else private_pg()) if need_pg else nullcontext() as pg:
        if not args.skip_scale:
            work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
            try:
                table, good = bench_scale(work, args, pg if args.manifest == "postgres" else None)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            ok &= good
            print(f"## scale-out: {args.files} x {args.size} B, --concurrency {args.concurrency} per worker,"
                  f" --batch-files 1, emulator --latency-ms {args.latency_ms} --task-delay-ms"
                  f" {args.task_delay_ms}, {args.manifest} manifest\n")  # fmt: skip
            print(table + "\n")
        if not args.skip_claims:
            table, good = bench_claims(args, pg)
            ok &= good
            print("## claim-and-commit, PostgreSQL backend alone (fenced uploading → processing → done)\n")
            print(table + "\n")
    return 0 if ok else 1


class _GivenPg:
    def __init__(self, url: str) -> None:
        self.base = url.split("?", 1)[0]

    def url(self, job: str) -> str:
        return f"{self.base}?job={job}"


@contextmanager
def _given_pg(url: str) -> Iterator[_GivenPg]:
    yield _GivenPg(url)


if __name__ == "__main__":
    sys.exit(main())
