"""Keyue and VikingDB against their baselines: small files one per request (goal 1) and one big file (goal 8).

Small files: ``ingest run --concurrency C`` against the minimal client of ``baseline_clients.py`` (the
same requests at the same concurrency, polling until done), interleaved, each run against a fresh
emulator. One big file: ``ingest run`` on a folder holding just it, against

  Keyue     ``curl -F file=@big.bin -F taskExtend={}`` to ``llm_document_import`` with the ``token``,
            ``uid`` and ``username`` headers (one request, no polling: like MOI's ``curl -F`` baseline);
  VikingDB  ``baseline_clients.py viking``: boto3's s3transfer multipart upload into the staging bucket
            (what ``aws s3 cp`` does: 8 MiB parts, 10 at a time), then ``doc/add`` and polling. curl
            cannot do this one: a multipart upload is several signed requests, and ``doc/add`` (which
            makes the emulator read the whole object back) must follow it for the runs to be equal.

VikingDB's big file is a ``.pdf`` (its only type allowed 1 GiB; ``.txt`` stops at 5 MiB). Every run is
checked through ``/_emulator/files`` (each file stored with its md5).
Used by ``run.py`` (parts ``targets`` and ``big``); the emulators and moto are on 127.0.0.1. Run alone,
one platform's big file against its baseline (``run.py --only big`` runs all three platforms'):

    python benchmarks/bench_targets.py big viking --mib 1024 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_moi as moi

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "baseline_clients.py"


@dataclass(frozen=True)
class Platform:
    key: str  # the harness name: "keyue" or "viking"
    label: str
    #: The emulator's request that carries a document (the others are status polls and set-up).
    upload_request: str
    big_name: str

    @property
    def harness(self) -> Any:
        from tests.harness import KEYUE, VIKING

        return KEYUE if self.key == "keyue" else VIKING

    def ingest_cmd(self, src: Path, url: str, run_dir: Path, concurrency: int) -> tuple[list[str], dict[str, str]]:
        flags, env = self.harness.cli(url)
        cmd = [sys.executable, "-m", "ingest", "run", str(src), *flags, "--manifest", str(run_dir / "m.db"),
               "--concurrency", str(concurrency), "--json", "--quiet"]  # fmt: skip
        return cmd, env

    def baseline_cmd(self, src: Path, url: str, concurrency: int) -> tuple[list[str], dict[str, str]]:
        h = self.harness
        cmd = [sys.executable, str(BASELINE), self.key, str(src), "--endpoint", url, "--concurrency", str(concurrency)]
        if self.key == "keyue":
            return [*cmd, "--uid", h.uid, "--username", h.username], {"KEYUE_TOKEN": h.token}
        from tests.harness import MOTO

        cmd += ["--region", MOTO.region, "--collection", h.collection, "--staging-endpoint", MOTO.url(),
                "--staging-bucket", MOTO.bucket]  # fmt: skip
        return cmd, {"VOLC_ACCESSKEY": h.access_key, "VOLC_SECRETKEY": h.secret_key}

    def curl_big_cmd(self, path: Path, url: str) -> tuple[list[str], dict[str, str]]:
        h = self.harness
        cmd = [
            "curl", "--silent", "--show-error", "--fail", "--output", "/dev/null",
            "-H", f"uid: {h.uid}", "-H", f"username: {h.username}", "-H", "@-",  # the token from stdin: not in argv
            "-F", f"file=@{path};type=application/octet-stream", "-F", "taskExtend={}",
            f"{url}/open/v1/api/v2/task/create/llm_document_import?dirId=0",
        ]  # fmt: skip
        return cmd, {}


KEYUE = Platform("keyue", "Keyue", "POST /open/v1/api/v2/task/create/llm_document_import", "big.bin")
VIKING = Platform("viking", "VikingDB", "POST /api/knowledge/doc/add", "big.pdf")
PLATFORMS = (KEYUE, VIKING)


class Server:
    """A fresh ``ingest serve`` of the platform (its own data dir), its CPU and its test hooks."""

    def __init__(self, platform: Platform, data_dir: Path) -> None:
        from tests.harness import ServerProcess

        self.process = ServerProcess(platform.harness.serve_command(data_dir), env=moi.child_env())
        self.url = self.process.url

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def get(self, path: str) -> Any:
        with moi._NO_PROXY_OPENER.open(self.url + path, timeout=120) as resp:
            return json.loads(resp.read())

    def requests(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.get("/_emulator/stats")["requests"].items() if "/_emulator" not in k}

    def stored(self) -> dict[str, tuple[int, str]]:
        """``{file name: (size, md5)}``: both clients send one folder's files, so names are paths."""
        return {Path(f["path"]).name: (int(f["size"]), str(f["md5"])) for f in self.get("/_emulator/files")}

    def stop(self) -> None:
        self.process.stop()


def run_one(
    platform: Platform,
    kind: str,
    *,
    work: Path,
    name: str,
    src: Path,
    expected: dict[str, str],
    concurrency: int,
) -> moi.Run:
    """One client run (``ingest``, ``baseline`` or ``curl``) into a fresh emulator."""
    run_dir = work / "runs" / name
    run_dir.mkdir(parents=True)
    paths = sorted(src.iterdir())
    server = Server(platform, run_dir / "data")
    try:
        stdin = None
        if kind == "ingest":
            cmd, env = platform.ingest_cmd(src, server.url, run_dir, concurrency)
        elif kind == "baseline":
            cmd, env = platform.baseline_cmd(src, server.url, concurrency)
        else:
            (path,) = paths
            cmd, env = platform.curl_big_cmd(path, server.url)
            stdin = f"token: {platform.harness.token}\n"
        before = server.cpu_s()
        m = moi.run_measured(cmd, cwd=run_dir, env=moi.child_env(**env), stdin_text=stdin)
        server_cpu = server.cpu_s() - before
        stored_ok, warning = moi.verify(server.stored(), expected)
        counts = server.requests()
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        if platform.key == "viking":
            _empty_staging_bucket()  # moto keeps every staged object (a big one on disk) until told
    if m.returncode != 0:
        tail = (m.stderr.strip().splitlines() or [""])[-1][:200]
        warning = "; ".join(x for x in (warning, f"client exit {m.returncode}: {tail}") if x)
    uploads = counts.get(platform.upload_request, 0)
    elapsed = None
    if kind == "ingest" and m.stdout.strip():
        elapsed = float(json.loads(m.stdout).get("elapsed_s") or 0) or None
    return moi.Run(
        wall_s=m.wall_s, files=len(paths), bytes=sum(p.stat().st_size for p in paths), stored_ok=stored_ok,
        max_rss_mib=m.max_rss_mib, client_cpu_s=m.cpu_s, server_cpu_s=server_cpu, upload_requests=uploads,
        other_requests=sum(counts.values()) - uploads, warning=warning, ingest_elapsed_s=elapsed,
    )  # fmt: skip


def bench_small(
    platform: Platform, work: Path, *, files: int, size: int, concurrency: int, repeat: int
) -> tuple[moi.Scenario, moi.Scenario, float]:
    """``baseline`` and ``ingest``, ``repeat`` runs each, interleaved, and the CPU seconds of ``ingest
    run`` sending one of those files (start-up, imports, manifest, preflight and every lazy import or
    model build a sending run pays once: see run.py)."""
    src = work / f"{platform.key}-small"
    expected = moi.make_small_files(src, files, size)
    baseline = moi.Scenario("baseline", f"{platform.label}: baseline_clients.py, {concurrency} at a time")
    ingest = moi.Scenario("ingest", f"{platform.label}: ingest run --concurrency {concurrency}")
    one_file = one_file_cpu_s(platform, work, src)
    kinds = [("baseline", baseline), ("ingest", ingest)]
    _interleaved(platform, work, src, expected, concurrency, repeat, kinds)
    return baseline, ingest, one_file


def one_file_cpu_s(platform: Platform, work: Path, src: Path) -> float:
    """CPU seconds of ``ingest run`` on a folder holding one file of ``src``, into an emulator of its own
    (the measured runs' emulators must hold exactly their files)."""
    one = work / f"{platform.key}-one"
    one.mkdir()
    shutil.copy2(min(src.iterdir()), one)
    run_dir = work / "runs" / f"{platform.key}-one"
    run_dir.mkdir(parents=True)
    server = Server(platform, run_dir / "data")
    try:
        cmd, env = platform.ingest_cmd(one, server.url, run_dir, 1)
        m = moi.run_measured(cmd, cwd=run_dir, env=moi.child_env(**env))
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        if platform.key == "viking":
            _empty_staging_bucket()
    if m.returncode != 0:
        raise RuntimeError(f"{platform.label}: ingest run of one file: exit {m.returncode}: {m.stderr.strip()[-300:]}")
    return m.cpu_s


def bench_big(platform: Platform, work: Path, mib: int, *, repeat: int) -> list[moi.Scenario]:
    """``[baseline, ingest]`` for one file of ``mib`` MiB (a 1 MiB random block repeated)."""
    src = work / f"{platform.key}-big"
    md5 = moi.make_big_file(src / platform.big_name, mib)
    if platform.key == "keyue":
        baseline = moi.Scenario("curl", "Keyue: curl -F file=@big.bin")
        kinds = [("curl", baseline)]
    else:
        baseline = moi.Scenario("baseline", "VikingDB: s3transfer multipart (as aws s3 cp) + doc/add")
        kinds = [("baseline", baseline)]
    ingest = moi.Scenario("ingest", f"{platform.label}: ingest run (folder with just {platform.big_name})")
    kinds.append(("ingest", ingest))
    return _interleaved(platform, work, src, {platform.big_name: md5}, 32, repeat, kinds)


def _interleaved(
    platform: Platform,
    work: Path,
    src: Path,
    expected: dict[str, str],
    concurrency: int,
    repeat: int,
    kinds: Sequence[tuple[str, moi.Scenario]],
) -> list[moi.Scenario]:
    for i in range(repeat):
        for kind, sc in kinds:  # interleaved, so background load spreads over both
            print(f"{sc.label}: run {i + 1}/{repeat} ...", file=sys.stderr, flush=True)
            r = run_one(platform, kind, work=work, name=f"{platform.key}-{kind}-{i}", src=src, expected=expected,
                        concurrency=concurrency)  # fmt: skip
            if r.warning:
                raise RuntimeError(f"{sc.label}: {r.warning}")
            sc.runs.append(r)
    return [sc for _, sc in kinds]


def _empty_staging_bucket() -> None:
    import boto3

    from tests.harness import MOTO

    s3 = boto3.client(
        "s3", endpoint_url=MOTO.url(), region_name=MOTO.region, aws_access_key_id="x", aws_secret_access_key="x"
    )
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=MOTO.bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=MOTO.bucket, Delete={"Objects": keys})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One platform's big file against its baseline (goal 8).")
    parser.add_argument("part", choices=["big"])
    parser.add_argument("platform", choices=[p.key for p in PLATFORMS])
    parser.add_argument("--mib", type=int, default=1024, help="the file's size (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each client, interleaved (default 3)")
    args = parser.parse_args(argv)
    platform = KEYUE if args.platform == "keyue" else VIKING
    with moi.work_dir(None) as work:
        scenarios = bench_big(platform, work, args.mib, repeat=args.repeat)
    print(moi.big_table(scenarios), flush=True)
    baseline, ingest = scenarios
    ratio = ingest.median().mb_per_s / baseline.median().mb_per_s
    print(f"MB/s ratio (medians): {ratio:.3f}; client peak RSS MiB: {max(r.max_rss_mib for r in ingest.runs):.1f}")
    for sc in scenarios:
        for r in sc.runs:
            print(f"  {sc.key}: {r.wall_s:.1f} s, CPU {r.client_cpu_s:.2f} s, peak RSS {r.max_rss_mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(HERE), str(HERE.parent)]  # as run.py: tests.harness for the emulators
    sys.exit(main())
