"""Benchmark: is ``PREFETCH_MAX`` (``ingest.sources.reader``, 64 KiB) the right size limit for fetching
bucket bodies ahead?

``--files`` objects of ``--size`` bytes in a moto S3 server go into a fresh MOI emulator per run
(``bench_bucket.py``'s setup) with ``ingest run s3://…``, once per limit in ``--limits`` (bytes; 0: no
prefetch). Each limit runs from a copy of the package with only that constant changed, rounds
interleaved. Printed per run: wall time (start-up included) and the client's peak RSS sampled from
``/proc`` every 10 ms. Every object must be stored once with the right md5. Usage::

    python benchmarks/bench_prefetch.py --files 2000 --size 4096 --limits 0,65536
    python benchmarks/bench_prefetch.py --files 800 --size 262144 --limits 65536,1048576
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_bucket import KEYS, check_stored, fill_bucket, ingest_cmd, start_moto  # noqa: E402
from bench_moi import API_KEY, Emulator, child_env  # noqa: E402

PACKAGE = HERE.parent / "ingest"


def package_with(limit: int, root: Path) -> Path:
    """A copy of ``ingest`` whose ``PREFETCH_MAX`` is ``limit``; the folder to put on PYTHONPATH."""
    shutil.copytree(PACKAGE, root / "ingest", ignore=shutil.ignore_patterns("__pycache__"))
    reader = root / "ingest" / "sources" / "reader.py"
    text, n = re.subn(r"(?m)^PREFETCH_MAX = .*$", f"PREFETCH_MAX = {limit}", reader.read_text())
    if n != 1:
        raise RuntimeError("PREFETCH_MAX not found in ingest/sources/reader.py")
    reader.write_text(text)
    return root


def peak_rss_run(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, sampled) of one client process."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.communicate()))
    reader.start()
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                peak = max([peak, *(int(line.split()[1]) for line in f if line.startswith("VmRSS"))])
        except OSError:
            pass
        time.sleep(0.01)
    reader.join()
    if proc.returncode != 0:
        raise RuntimeError(f"ingest run exited {proc.returncode}: {output[1][-2000:]}")
    return time.monotonic() - started, peak / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--limits", default="0,65536", help="PREFETCH_MAX values to compare, in bytes")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    limits = [int(x) for x in args.limits.split(",")]
    moto, s3_url = start_moto()
    results: dict[int, list[tuple[float, float]]] = {limit: [] for limit in limits}
    try:
        expected = fill_bucket(s3_url, "bench-src", args.files, args.size)
        with tempfile.TemporaryDirectory(prefix="bench-prefetch-") as tmp:
            roots = {limit: package_with(limit, Path(tmp) / f"pkg-{limit}") for limit in limits}
            for round_no in range(args.repeat):
                for limit in limits:
                    work = Path(tmp) / f"run-{limit}-{round_no}"
                    work.mkdir()
                    env = {**child_env(), **KEYS, "MOI_KEY": API_KEY, "PYTHONPATH": str(roots[limit])}
                    source = ["--source-endpoint", s3_url, "--source-path-style"]
                    with Emulator(work / "data", latency_ms=20, task_delay_ms=50) as emu:
                        cmd = ingest_cmd("s3://bench-src/docs", emu.url, args.concurrency, source)
                        results[limit].append(peak_rss_run(cmd, cwd=work, env=env))
                        check_stored(emu.url, expected)
                    seconds, rss = results[limit][-1]
                    print(f"round {round_no + 1} PREFETCH_MAX={limit}: {seconds:.2f} s, peak RSS {rss:.0f} MiB")
    finally:
        moto.terminate()
        moto.wait()
    print(f"\n{args.files} x {args.size} B objects, moto S3 -> MOI emulator, --concurrency {args.concurrency}")
    for limit, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs)
        print(f"  PREFETCH_MAX={limit:>8}: median {seconds:6.2f} s, peak RSS {rss:4.0f} MiB  (runs: {runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
