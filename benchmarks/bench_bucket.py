"""Benchmark: a bucket into the MOI emulator, ``ingest run s3://…`` versus the two-step alternative.

A moto S3 server (its own process, 127.0.0.1) holds ``--files`` objects of ``--size`` bytes under
nested prefixes (default 2,000 x 4 KiB). Each scenario runs against a fresh MOI emulator (the one of
``bench_moi.py``, same latency and task delay):

  (a) ingest run s3://bucket/prefix --concurrency 32     streamed from the bucket into MOI's uploads
  (b) two steps: ``aws s3 cp --recursive s3://bucket/prefix DIR`` (or, without the aws CLI, a boto3
      download of the prefix with 32 threads: the output says which), then ``ingest run DIR
      --concurrency 32``: the time of both steps together

Each client is a child process timed from start to exit (start-up included). After each run every
object must be stored once with the right md5 (``/_emulator/files``). Scenarios run ``--repeat``
times, interleaved; the table shows medians and the ratio (b)/(a). Usage::

    python benchmarks/bench_bucket.py [--files 2000] [--size 4096] [--latency-ms 20] [--task-delay-ms 50]
                                      [--concurrency 32] [--repeat 3] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_moi import API_KEY, VOLUME, Emulator, child_env  # noqa: E402

REGION = "us-east-1"
KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": REGION}
MOTO_SERVER = (
    "import logging, sys\n"
    "import moto.backends\n"
    "from moto.server import ThreadedMotoServer\n"
    "logging.getLogger('werkzeug').setLevel(logging.WARNING)\n"
    "modules = tuple(moto.backends.list_of_moto_modules())\n"
    "moto.backends.list_of_moto_modules = lambda: modules\n"
    "server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
    "server.start()\n"
    "print('http://%s:%d' % server.get_host_and_port(), flush=True)\n"
    "sys.stdin.read()\n"
)
DOWNLOAD = """
import sys, os, boto3
from concurrent.futures import ThreadPoolExecutor
url, bucket, prefix, dest = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=url)
keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in p.get("Contents", []) if not o["Key"].endswith("/")]
def get(key):
    path = os.path.join(dest, key[len(prefix):])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s3.download_file(bucket, key, path)
with ThreadPoolExecutor(32) as pool:
    list(pool.map(get, keys))
"""


def start_moto() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", MOTO_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"moto did not start: {url!r}")
    return proc, url


def fill_bucket(url: str, bucket: str, files: int, size: int) -> dict[str, str]:
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    s3 = boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    s3.create_bucket(Bucket=bucket)
    expected: dict[str, str] = {}
    objects: list[tuple[str, bytes]] = []
    for i in range(files):
        rel = f"d{i % 10}/e{i % 7}/f{i:05d}.txt"
        data = (f"{i:08d}".encode() * (size // 8 + 1))[:size]
        expected[rel] = hashlib.md5(data).hexdigest()
        objects.append((f"docs/{rel}", data))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects))
    return expected


def timed(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}… exited {result.returncode}: {result.stderr[-2000:]}")
    return elapsed


def check_stored(url: str, expected: dict[str, str]) -> None:
    with urllib.request.urlopen(url + "/_emulator/files", timeout=30) as reply:
        stored = {f["path"]: f["md5"] for f in json.load(reply)}
    if stored != expected:
        missing = len(set(expected) - set(stored))
        raise RuntimeError(f"stored {len(stored)} files, expected {len(expected)} ({missing} missing or wrong)")


def ingest_cmd(source: str, emu_url: str, concurrency: int, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "ingest", "run", source, *extra, "--target", "moi", "--endpoint", emu_url,
        "--volume-id", VOLUME, "--concurrency", str(concurrency), "--manifest", "m.db", "-q",
    ]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--latency-ms", type=int, default=20)
    p.add_argument("--task-delay-ms", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()

    aws = shutil.which("aws")
    if aws is not None and subprocess.run([aws, "--version"], capture_output=True).returncode != 0:
        aws = None
    moto, s3_url = start_moto()
    results: dict[str, list[float]] = {"bucket": [], "download": [], "two-step": []}
    try:
        expected = fill_bucket(s3_url, "bench-src", args.files, args.size)
        env = {**child_env(), **KEYS, "MOI_KEY": API_KEY}
        with tempfile.TemporaryDirectory(prefix="bench-bucket-") as tmp:
            for round_no in range(args.repeat):
                for scenario in ("bucket", "two-step"):
                    work = Path(tmp) / f"{scenario}-{round_no}"
                    work.mkdir()
                    with Emulator(work / "data", latency_ms=args.latency_ms, task_delay_ms=args.task_delay_ms) as emu:
                        if scenario == "bucket":
                            source = ["s3://bench-src/docs", "--source-endpoint", s3_url, "--source-path-style"]
                            cmd = ingest_cmd(source[0], emu.url, args.concurrency, source[1:])
                            results["bucket"].append(timed(cmd, cwd=work, env=env))
                        else:
                            dest = work / "docs"
                            if aws is not None:
                                fetch = [aws, "s3", "cp", "--recursive", "--only-show-errors",
                                         "--endpoint-url", s3_url, "s3://bench-src/docs/", str(dest)]  # fmt: skip
                            else:
                                fetch = [sys.executable, "-c", DOWNLOAD, s3_url, "bench-src", "docs/", str(dest)]
                            t1 = timed(fetch, cwd=work, env=env)
                            t2 = timed(ingest_cmd("docs", emu.url, args.concurrency, []), cwd=work, env=env)
                            results["download"].append(t1)
                            results["two-step"].append(t1 + t2)
                        check_stored(emu.url, expected)
                    print(f"round {round_no + 1} {scenario}: {results[scenario][-1]:.2f} s", flush=True)
    finally:
        moto.terminate()
        moto.wait()
    med = {k: statistics.median(v) for k, v in results.items()}
    how = "aws s3 cp --recursive" if aws else "boto3 download (32 threads; no working aws CLI)"
    print()
    emulator = f"--latency-ms {args.latency_ms} --task-delay-ms {args.task_delay_ms}"
    print(f"{args.files} x {args.size} B objects, moto S3 -> MOI emulator ({emulator}),")
    print(f"--concurrency {args.concurrency}, median of {args.repeat}")
    print(f"  (a) ingest run s3://…                       {med['bucket']:7.2f} s")
    print(f"  (b) {how:<38} {med['download']:7.2f} s")
    print(f"      + ingest run DIR (total two-step)       {med['two-step']:7.2f} s")
    print(f"  ratio (b) two-step / (a) bucket source:     {med['two-step'] / med['bucket']:.2f}x")
    if args.json_out:
        args.json_out.write_text(json.dumps({"settings": vars(args) | {"json_out": None}, "download": how,
                                             "runs": results, "median": med}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
