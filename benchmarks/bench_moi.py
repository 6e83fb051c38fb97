"""Benchmark: ``ingest run`` against the MOI emulator, versus curl and the MOI document's sample loop.

Small files (default 2,000 x 4 KiB in one folder), each scenario against a fresh emulator (its own data
dir, so every run stores into an empty volume 1001):

  (a) seed loop   the MOI document's ``upload_file`` + ``batch_upload_files`` (``requests``, one file
                  at a time, a new connection per file), see ``_seed_client.py``
  (b) curl        one ``curl --parallel --parallel-max 32 --config FILE`` process, one multipart
                  request per file (``-F file=@path -F VolumeID=… -F meta=[…]``, header ``moi-key``)
  (c) ingest      ``ingest run --concurrency 32`` (default batching: up to 20 small files per request)
  (d) ingest      ``ingest run --concurrency 32 --batch-files 1`` (one file per request)
  (e) reference   curl --parallel sending 20 files per request, like ingest's batches: no target, it
                  shows what the emulator itself can absorb on this machine (the ceiling for (c))
  (f) minimal     ``baseline_clients.py moi``, one file per request: the requests ingest sends (uploads,
                  then ``/task/list`` and ``/task/files`` polls until every task is done) from one aiohttp
                  session at the same concurrency, and nothing else (no manifest, retries, validation or
                  preflight): end to end, what any Python+aiohttp client doing the same requests reaches
  (g) minimal     the same client sending ingest's batches (20 files per request)

One big file (default 1 GiB, a 1 MiB random block repeated): ``curl -F file=@big`` versus ``ingest run``
on a folder holding just that file.

Every client runs as a child process; wall time is measured around it (start-up included), its CPU
time comes from ``os.wait4`` (the kernel's own accounting of that process), and its peak RSS from its
``VmHWM`` sampled every 20 ms (``ru_maxrss`` would carry over the benchmark process's own size).
``/_emulator/files`` is checked after each run: every file must be stored with the right md5.
Scenarios (b)-(e) and the big-file ones run ``--repeat`` times, interleaved; tables show the run with
the median wall time. Usage::

    python benchmarks/bench_moi.py [--files 2000] [--size 4096] [--big-mib 1024] [--latency-ms 20]
                                   [--task-delay-ms 50] [--concurrency 32] [--repeat 3]
                                   [--seed-loop-files N] [--skip-seed] [--no-reference] [--no-baseline]
                                   [--skip-big]
                                   [--tmp-dir DIR] [--json-out FILE]

Exit status: 0 when every run stored every file (targets met or not: read the verdicts), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import mimetypes
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"  # loopback only, always
API_KEY = "bench-key"
VOLUME = "1001"
MIB = 1024 * 1024
MB = 1_000_000  # MB/s in this benchmark are decimal megabytes, like `ingest run --json`'s mb_per_s
CLIENT_TIMEOUT_S = 900.0
#: Files per request in ingest's default MOI batching (MOI 5.0's limit), used by the reference scenario (e).
BATCH_FILES = 20

#: Targets from the brief.
TARGET_VS_CURL = 2.0
TARGET_VS_SEED = 30.0
TARGET_BIG_RSS_MIB = 80.0
TARGET_BIG_VS_CURL = 0.7


# ----- child processes -----------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment for every child: no proxies (everything talks to 127.0.0.1), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}}
    env["NO_PROXY"] = env["no_proxy"] = f"{HOST},localhost"
    env.pop("MOI_KEY", None)
    env.update(extra)
    return env


@dataclass
class Measured:
    """One client process: wall time around it, and the kernel's rusage for it."""

    wall_s: float
    max_rss_mib: float
    cpu_s: float
    returncode: int
    stdout: str
    stderr: str


def _peak_rss_kib(pid: int, peak: list[int], done: threading.Event) -> None:
    """Follow the process's own high-water mark (``VmHWM``) until it exits.

    Not ``ru_maxrss``: Linux carries a process's peak across ``exec`` from the process it was forked
    from, so a client started by a benchmark process of 200 MiB reports 200 MiB however small it is
    (``benchmarks/run.py`` grows as its parts run). ``VmHWM`` belongs to the exec'd program's memory.
    """
    status = f"/proc/{pid}/status"
    while not done.is_set():
        try:
            with open(status, encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
                        break
        except (OSError, ValueError):
            return  # exited (reaped): the last sample stands
        done.wait(0.02)


def run_measured(
    cmd: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float = CLIENT_TIMEOUT_S,
    stdin_text: str | None = None,
) -> Measured:
    """Run ``cmd`` to completion; wall time and CPU time via ``os.wait4``, peak RSS from ``VmHWM``.
    ``stdin_text`` (e.g. a header holding a token, kept out of argv) is the child's standard input."""
    out_path, err_path, in_path = cwd / "client.stdout", cwd / "client.stderr", cwd / "client.stdin"
    in_path.write_text(stdin_text or "", encoding="utf-8")
    peak = [0]
    done = threading.Event()
    with open(out_path, "wb") as out, open(err_path, "wb") as err, open(in_path, "rb") as stdin:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=err)
        sampler = threading.Thread(target=_peak_rss_kib, args=(proc.pid, peak, done), daemon=True)
        sampler.start()
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            done.set()
        wall = time.perf_counter() - start
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return Measured(
        wall_s=wall,
        # The last sample is at most 20 ms before the exit; a process too short to be sampled falls back
        # to ru_maxrss (an over-estimate, see _peak_rss_kib).
        max_rss_mib=(peak[0] or usage.ru_maxrss) / 1024,  # KiB
        cpu_s=usage.ru_utime + usage.ru_stime,
        returncode=proc.returncode,
        stdout=out_path.read_text(encoding="utf-8", errors="replace"),
        stderr=err_path.read_text(encoding="utf-8", errors="replace"),
    )


# ----- the emulator --------------------------------------------------------------------------------------


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Emulator:
    """A MOI emulator in a child process on 127.0.0.1 with a free port and volume 1001."""

    def __init__(self, data_dir: Path, *, latency_ms: int, task_delay_ms: int) -> None:
        self.data_dir = data_dir
        # No --max-file-size: the emulator's default is no per-file limit, as in the seed document.
        self.cmd = [
            sys.executable, "-m", "ingest", "serve", "moi", "--host", HOST, "--port", "0",
            "--data-dir", str(data_dir), "--api-key", API_KEY, "--volume", VOLUME,
            "--latency-ms", str(latency_ms), "--task-delay-ms", str(task_delay_ms),
        ]  # fmt: skip
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Emulator:
        self.data_dir.mkdir(parents=True)
        log = self.data_dir.parent / "emulator.log"
        with open(log, "wb") as out:
            # Not in the caller's folder: ``python -m`` puts the working directory ahead of PYTHONPATH, so
            # a run started in one checkout with PYTHONPATH on another would time the first one's emulator.
            self._proc = subprocess.Popen(
                self.cmd,
                cwd=self.data_dir.parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
        deadline = time.monotonic() + 30
        while not self.url:
            text = log.read_text(encoding="utf-8", errors="replace")
            first = text.split("\n", 1)[0] if "\n" in text else ""
            if " listening on " in first:
                self.url = first.split(" listening on ", 1)[1].split()[0]
            elif self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"emulator did not start: {' '.join(self.cmd)}\n{text}")
            else:
                time.sleep(0.05)
        if not self.url.startswith(f"http://{HOST}:"):
            self.__exit__()
            raise RuntimeError(f"emulator is not on loopback: {self.url}")
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does: a clean shutdown
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def cpu_s(self) -> float:
        """User + system CPU seconds the emulator process has used so far."""
        assert self._proc is not None
        stat = Path(f"/proc/{self._proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _get(self, path: str) -> Any:
        with _NO_PROXY_OPENER.open(self.url + path, timeout=60) as resp:
            return json.loads(resp.read())

    def stored(self) -> dict[str, tuple[int, str]]:
        """``{path: (size, md5)}`` of every file stored in the volume."""
        return {
            str(f["path"]): (int(f["size"]), str(f["md5"]))
            for f in self._get("/_emulator/files")
            if str(f.get("volume_id")) == VOLUME
        }

    def requests(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._get("/_emulator/stats")["requests"].items()}


# ----- data ----------------------------------------------------------------------------------------------


def make_small_files(folder: Path, count: int, size: int) -> dict[str, str]:
    """``count`` text files of ``size`` random-ish bytes in one folder; ``{name: md5}``."""
    folder.mkdir(parents=True)
    expected: dict[str, str] = {}
    for i in range(count):
        data = os.urandom((size + 1) // 2).hex().encode()[:size]
        name = f"f{i:06d}.txt"
        (folder / name).write_bytes(data)
        expected[name] = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return expected


def make_big_file(path: Path, mib: int) -> str:
    """``mib`` MiB (a 1 MiB random block repeated, really written: no holes); returns its md5."""
    path.parent.mkdir(parents=True)
    block = os.urandom(MIB)
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def verify(stored: dict[str, tuple[int, str]], expected: dict[str, str]) -> tuple[int, str]:
    """How many expected files are stored with the right md5, and a warning ('' when all are)."""
    ok = sum(1 for name, md5 in expected.items() if name in stored and stored[name][1] == md5)
    missing = sum(1 for name in expected if name not in stored)
    wrong = len(expected) - ok - missing
    problems = [f"{missing} missing" if missing else "", f"{wrong} wrong md5" if wrong else ""]
    extra = len(set(stored) - set(expected))
    if extra:
        problems.append(f"{extra} unexpected")
    warning = ", ".join(p for p in problems if p)
    return ok, (f"WARNING: {warning}" if warning else "")


# ----- scenarios -----------------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured run of one scenario."""

    wall_s: float
    files: int
    bytes: int
    stored_ok: int
    max_rss_mib: float
    client_cpu_s: float
    server_cpu_s: float
    upload_requests: int
    other_requests: int
    warning: str = ""
    ingest_elapsed_s: float | None = None

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_s

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.wall_s


@dataclass
class Scenario:
    key: str
    label: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""

    def median(self) -> Run:
        """The run with the median wall time (an actual run, so its columns belong together)."""
        ordered = sorted(self.runs, key=lambda r: r.wall_s)
        return ordered[(len(ordered) - 1) // 2]


@dataclass(frozen=True)
class Settings:
    files: int
    size: int
    big_mib: int
    latency_ms: int
    task_delay_ms: int
    concurrency: int
    repeat: int
    seed_loop_files: int
    skip_big: bool
    reference: bool
    #: Scenarios (f) and (g), the minimal aiohttp client.
    baseline: bool = True


def curl_config(url: str, paths: Sequence[Path], per_request: int = 1) -> str:
    """Operations for ``curl --config`` (``next`` separates them), each uploading ``per_request`` files.

    Fields in the order ingest sends them: ``VolumeID``, ``meta`` (a JSON array, one entry per file
    part, as the seed document describes), then the ``file`` parts.
    """
    ops = []
    for start in range(0, len(paths), per_request):
        group = paths[start : start + per_request]
        mimes = [mimetypes.guess_type(p.name)[0] or "application/octet-stream" for p in group]
        meta = json.dumps(
            [
                {"file_name": p.name, "file_size": p.stat().st_size, "mime_type": mime}
                for p, mime in zip(group, mimes, strict=True)
            ]
        )
        lines = [
            f"url = {json.dumps(url + '/connectors/upload')}",
            f"header = {json.dumps('moi-key: ' + API_KEY)}",
            f"form-string = {json.dumps('VolumeID=' + VOLUME)}",
            f"form-string = {json.dumps('meta=' + meta)}",
            *(f"form = {json.dumps(f'file=@{p};type={mime}')}" for p, mime in zip(group, mimes, strict=True)),
            'output = "/dev/null"',
            'write-out = "%{http_code}\\n"',
            "fail",
        ]
        ops.append("\n".join(lines))
    return "\nnext\n".join(ops) + "\n"


def upload_one(url: str, path: Path) -> str:
    """Upload ``path`` with curl (the form of ``curl_config``); the id of the task it made."""
    config = (
        curl_config(url, [path]).replace('output = "/dev/null"\n', "").replace('write-out = "%{http_code}\\n"\n', "")
    )
    upload = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--config", "-"],
        input=config, capture_output=True, text=True, check=True, env=child_env(),
    )  # fmt: skip
    return str(json.loads(upload.stdout)["data"]["task_id"])


def curl_gets(url: str, count: int, *, parallel: int, work: Path, name: str) -> Measured:
    """``GET url`` ``count`` times (with the API key) from one ``curl --parallel`` process; raises unless
    every answer was 200. The caller reads the emulator's CPU around it."""
    line = "\n".join(
        [f"url = {json.dumps(url)}", f"header = {json.dumps('moi-key: ' + API_KEY)}", 'output = "/dev/null"',
         'write-out = "%{http_code}\\n"']
    )  # fmt: skip
    config = work / f"{name}.cfg"
    config.write_text("\nnext\n".join([line] * count) + "\n")
    m = run_measured(
        ["curl", "--silent", "--parallel", "--parallel-max", str(parallel), "--config", str(config)],
        cwd=work, env=child_env(),
    )  # fmt: skip
    ok = m.stdout.split().count("200")
    if ok != count:
        raise RuntimeError(f"{name}: {count - ok} of {count} requests were not answered 200")
    return m


def ingest_cmd(src: Path, url: str, run_dir: Path, concurrency: int, extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable, "-m", "ingest", "run", str(src), "--target", "moi", "--endpoint", url,
        "--volume-id", VOLUME, "--manifest", str(run_dir / "manifest.db"), "--concurrency", str(concurrency),
        "--quiet", "--json", *extra,
    ]  # fmt: skip


def count_requests(requests: dict[str, int]) -> tuple[int, int]:
    uploads = requests.get("POST /connectors/upload", 0)
    return uploads, sum(requests.values()) - uploads


def run_one(
    kind: str,
    *,
    work: Path,
    run_name: str,
    src: Path,
    paths: Sequence[Path],
    expected: dict[str, str],
    settings: Settings,
) -> Run:
    """One client run of ``kind`` against a fresh emulator; the run's folder is removed afterwards."""
    run_dir = work / "runs" / run_name
    run_dir.mkdir(parents=True)
    total_bytes = sum(p.stat().st_size for p in paths)
    try:
        with Emulator(
            run_dir / "data",
            latency_ms=settings.latency_ms,
            task_delay_ms=settings.task_delay_ms,
        ) as emu:
            cmd, env, parse = _client(kind, emu.url, run_dir, src, paths, settings)
            cpu_before = emu.cpu_s()
            m = run_measured(cmd, cwd=run_dir, env=env)
            server_cpu = emu.cpu_s() - cpu_before
            stored_ok, warning = verify(emu.stored(), expected)
            uploads, others = count_requests(emu.requests())
        problem, ingest_elapsed = parse(m)
        if problem:
            warning = "; ".join(w for w in (warning, problem) if w)
        return Run(
            wall_s=m.wall_s,
            files=len(paths),
            bytes=total_bytes,
            stored_ok=stored_ok,
            max_rss_mib=m.max_rss_mib,
            client_cpu_s=m.cpu_s,
            server_cpu_s=server_cpu,
            upload_requests=uploads,
            other_requests=others,
            warning=warning,
            ingest_elapsed_s=ingest_elapsed,
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


#: Reads a finished client's output: (problem, or '' when none; ingest's own elapsed_s, if it said).
Parser = Callable[[Measured], tuple[str, float | None]]


def _client(
    kind: str, url: str, run_dir: Path, src: Path, paths: Sequence[Path], settings: Settings
) -> tuple[list[str], dict[str, str], Parser]:
    def exit_problem(m: Measured) -> str:
        if m.returncode == 0:
            return ""
        tail = (m.stderr.strip().splitlines() or [""])[-1][:200]
        return f"client exit {m.returncode}" + (f": {tail}" if tail else "")

    if kind == "seed":
        listing = run_dir / "files.txt"
        listing.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
        cmd = [sys.executable, str(HERE / "_seed_client.py"), url, VOLUME, str(listing)]

        def parse_seed(m: Measured) -> tuple[str, float | None]:
            problem = exit_problem(m)
            lines = m.stdout.strip().splitlines()
            try:
                summary = json.loads(lines[-1]) if lines else {}
            except ValueError:
                summary = {}
            if summary.get("failed"):
                problem = "; ".join(x for x in (problem, f"{summary['failed']} uploads failed") if x)
            return problem, None

        return cmd, child_env(MOI_KEY=API_KEY), parse_seed

    if kind in ("curl-parallel", "curl-batched", "curl-big"):
        per_request = BATCH_FILES if kind == "curl-batched" else 1
        config = run_dir / "curl.cfg"
        config.write_text(curl_config(url, paths, per_request), encoding="utf-8")
        requests = -(-len(paths) // per_request)
        cmd = ["curl", "--silent", "--show-error", "--no-progress-meter", "--config", str(config)]
        if kind != "curl-big":
            cmd[1:1] = ["--parallel", "--parallel-max", str(settings.concurrency)]

        def parse_curl(m: Measured) -> tuple[str, float | None]:
            problem = exit_problem(m)
            codes = m.stdout.split()
            bad = sum(1 for c in codes if c != "200") + max(0, requests - len(codes))
            if bad:
                problem = "; ".join(x for x in (problem, f"{bad} requests not HTTP 200") if x)
            return problem, None

        return cmd, child_env(), parse_curl

    if kind in ("baseline", "baseline-batched"):
        per_request = BATCH_FILES if kind == "baseline-batched" else 1
        cmd = [
            sys.executable, str(HERE / "baseline_clients.py"), "moi", str(src), "--endpoint", url,
            "--volume-id", VOLUME, "--concurrency", str(settings.concurrency), "--batch-files", str(per_request),
        ]  # fmt: skip

        def parse_baseline(m: Measured) -> tuple[str, float | None]:
            problem = exit_problem(m)
            try:
                summary = json.loads(m.stdout)
            except ValueError:
                return problem or "no JSON summary", None
            if summary.get("done") != len(paths):
                problem = "; ".join(x for x in (problem, f"{summary.get('done')} of {len(paths)} done") if x)
            return problem, float(summary["seconds"])

        return cmd, child_env(MOI_KEY=API_KEY), parse_baseline

    extra = ["--batch-files", "1"] if kind == "ingest-nobatch" else []

    def parse_ingest(m: Measured) -> tuple[str, float | None]:
        problem = exit_problem(m)
        try:
            summary = json.loads(m.stdout)
        except ValueError:
            return problem or "no JSON summary", None
        if summary.get("failed"):
            problem = "; ".join(x for x in (problem, f"{summary['failed']} failed") if x)
        return problem, float(summary["elapsed_s"])

    return ingest_cmd(src, url, run_dir, settings.concurrency, extra), child_env(MOI_KEY=API_KEY), parse_ingest


# ----- reporting -----------------------------------------------------------------------------------------


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _spread(sc: Scenario) -> str:
    walls = [r.wall_s for r in sc.runs]
    middle = sc.median().wall_s
    return f"{middle:.2f}" if len(walls) == 1 else f"{middle:.2f} ({min(walls):.2f}–{max(walls):.2f})"


def _own(r: Run) -> str:
    """What ``ingest run --json`` itself reported as elapsed_s, or the minimal client its ``seconds`` (both
    without interpreter start-up and imports), or a dash."""
    return "–" if r.ingest_elapsed_s is None else f"{r.ingest_elapsed_s:.2f}"


def small_table(scenarios: Sequence[Scenario]) -> str:
    rows = []
    for sc in scenarios:
        r = sc.median()
        rows.append(
            [
                sc.label,
                str(len(sc.runs)),
                _spread(sc),
                f"{r.files_per_s:,.0f}",
                _own(r),
                f"{r.upload_requests}+{r.other_requests}",
                f"{r.max_rss_mib:.0f}",
                f"{r.client_cpu_s:.2f}",
                f"{r.server_cpu_s:.2f}",
                f"{r.stored_ok}/{r.files}",
                "; ".join(x for x in (sc.note, r.warning) if x),
            ]
        )
    headers = [
        "scenario", "runs", "wall s (median, min–max)", "files/s", "own elapsed_s", "requests (upload+other)",
        "client peak RSS MiB", "client CPU s", "emulator CPU s", "stored ok", "notes / warnings",
    ]  # fmt: skip
    return md_table(headers, rows)


def big_table(scenarios: Sequence[Scenario]) -> str:
    rows = []
    for sc in scenarios:
        r = sc.median()
        rows.append(
            [
                sc.label,
                str(len(sc.runs)),
                _spread(sc),
                f"{r.mb_per_s:,.0f}",
                _own(r),
                f"{r.max_rss_mib:.1f}",
                f"{r.client_cpu_s:.2f}",
                f"{r.server_cpu_s:.2f}",
                "yes" if r.stored_ok == r.files else "no",
                "; ".join(x for x in (sc.note, r.warning) if x),
            ]
        )
    headers = [
        "client", "runs", "wall s (median, min–max)", "MB/s", "ingest's elapsed_s", "client peak RSS MiB",
        "client CPU s",
        "emulator CPU s", "stored ok (md5)", "notes / warnings",
    ]  # fmt: skip
    return md_table(headers, rows)


def verdict(value: float, target: float, *, at_most: bool = False) -> str:
    met = value <= target if at_most else value >= target
    return "met" if met else "MISSED"


def ratio_table(rows: Sequence[tuple[str, float, str, float, bool]]) -> str:
    """rows: (what, value, unit, target, at_most)."""
    out = []
    for what, value, unit, target, at_most in rows:
        sign = "≤" if at_most else "≥"
        out.append([what, f"{value:.2f}{unit}", f"{sign} {target:g}{unit}", verdict(value, target, at_most=at_most)])
    return md_table(["comparison", "measured", "target", "verdict"], out)


# ----- main ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--files", type=int, default=2000, help="small files (default 2000)")
    p.add_argument("--size", type=int, default=4096, help="bytes per small file (default 4096)")
    p.add_argument("--big-mib", type=int, default=1024, help="size of the big file in MiB (default 1024)")
    p.add_argument("--latency-ms", type=int, default=20, help="emulator latency per request (default 20)")
    p.add_argument("--task-delay-ms", type=int, default=50, help="emulator task processing time (default 50)")
    p.add_argument("--concurrency", type=int, default=32, help="curl --parallel-max and ingest --concurrency")
    p.add_argument("--repeat", type=int, default=3, help="runs of each scenario except the seed loop (default 3)")
    p.add_argument(
        "--seed-loop-files",
        type=int,
        default=None,
        metavar="N",
        help="time the seed loop on the first N files only and extrapolate files/s (default: all files)",
    )
    p.add_argument("--skip-big", action="store_true", help="skip the big-file scenario")
    p.add_argument("--skip-seed", action="store_true", help="skip the (slow) seed loop")
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="skip (e), curl sending 20 files per request (the emulator's ceiling)",
    )
    p.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip (f) and (g), the minimal aiohttp client (baseline_clients.py moi)",
    )
    p.add_argument("--tmp-dir", type=Path, default=None, help="where to create the work folder (default: system temp)")
    p.add_argument("--json-out", type=Path, default=None, help="also write every run's numbers as JSON here")
    args = p.parse_args(argv)
    for name in ("files", "size", "big_mib", "concurrency", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seed_loop_files is None or args.seed_loop_files > args.files:
        args.seed_loop_files = args.files
    if args.seed_loop_files < 1:
        p.error("--seed-loop-files must be at least 1")
    return args


@functools.cache
def header(settings: Settings) -> str:
    curl_version = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False).stdout
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join(
        [
            f"date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"load average at start {load}",
            f"python {platform.python_version()}; {curl_version.splitlines()[0] if curl_version else 'curl ?'}",
            f"emulator: --latency-ms {settings.latency_ms} --task-delay-ms {settings.task_delay_ms}, "
            f"fresh data dir per run; clients: concurrency {settings.concurrency}; "
            f"small files: {settings.files} x {settings.size} B in one folder",
            "peak RSS: the client's VmHWM, sampled every 20 ms; CPU: os.wait4 rusage; wall time includes start-up",
        ]
    )


def save_json(path: Path | None, settings: Settings, scenarios: Sequence[Scenario]) -> None:
    """Every run's numbers (written after each part, so a failure later keeps what was measured)."""
    if path is None:
        return
    results: dict[str, Any] = {"header": header(settings), "settings": asdict(settings), "scenarios": {}}
    for sc in scenarios:
        results["scenarios"][sc.key] = {
            "label": sc.label,
            "note": sc.note,
            "runs": [asdict(r) | {"files_per_s": r.files_per_s, "mb_per_s": r.mb_per_s} for r in sc.runs],
        }
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")


@contextmanager
def work_dir(parent: Path | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bench-moi-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def bench_small(work: Path, settings: Settings, *, skip_seed: bool) -> list[Scenario]:
    src = work / "small"
    t0 = time.perf_counter()
    expected = make_small_files(src, settings.files, settings.size)
    paths = sorted(src.iterdir())
    print(f"created {len(paths)} files in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)

    seed = Scenario("seed", "(a) seed loop (requests, 1 file/request, sequential)")
    curl = Scenario("curl", f"(b) curl --parallel --parallel-max {settings.concurrency}")
    batched = Scenario("ingest", f"(c) ingest run --concurrency {settings.concurrency} (batching)")
    unbatched = Scenario("ingest-nobatch", f"(d) ingest run --concurrency {settings.concurrency} --batch-files 1")
    reference = Scenario(
        "curl-batched",
        f"(e) reference: curl --parallel-max {settings.concurrency}, {BATCH_FILES} files/request",
        note="not a target: the emulator's ceiling for batched uploads on this machine",
    )
    minimal = Scenario("baseline", f"(f) minimal aiohttp client, {settings.concurrency} at a time, 1 file/request")
    minimal_batched = Scenario(
        "baseline-batched",
        f"(g) minimal aiohttp client, {settings.concurrency} at a time, {BATCH_FILES} files/request",
    )
    run = functools.partial(run_one, work=work, src=src, settings=settings)

    if not skip_seed:
        n = settings.seed_loop_files
        seed_paths = paths[:n]
        seed_expected = {p.name: expected[p.name] for p in seed_paths}
        print(f"(a) seed loop on {n} files (sequential: this takes a while) ...", file=sys.stderr, flush=True)
        seed.runs.append(run("seed", run_name="seed", paths=seed_paths, expected=seed_expected))
        if n < settings.files:
            seed.note = f"timed on {n} of {settings.files} files; files/s extrapolated"
        else:
            seed.note = f"all {settings.files} files"

    kinds = [("curl-parallel", curl), ("ingest", batched), ("ingest-nobatch", unbatched)]
    if settings.reference:
        kinds.append(("curl-batched", reference))
    if settings.baseline:
        kinds += [("baseline", minimal), ("baseline-batched", minimal_batched)]
    for i in range(settings.repeat):
        for kind, sc in kinds:  # interleaved, so background noise spreads over all scenarios
            print(f"{sc.label}: run {i + 1}/{settings.repeat} ...", file=sys.stderr, flush=True)
            sc.runs.append(run(kind, run_name=f"{kind}-{i}", paths=paths, expected=expected))
    return ([] if skip_seed else [seed]) + [sc for _, sc in kinds]


def bench_big(work: Path, settings: Settings) -> list[Scenario]:
    src = work / "big"
    big = src / "big.bin"
    t0 = time.perf_counter()
    md5 = make_big_file(big, settings.big_mib)
    print(f"created {big.name} ({settings.big_mib} MiB) in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    curl = Scenario("curl-big", "curl -F file=@big.bin")
    ingest = Scenario("ingest-big", f"ingest run (folder with just big.bin, --concurrency {settings.concurrency})")
    for i in range(settings.repeat):
        for kind, sc in (("curl-big", curl), ("ingest-big", ingest)):
            print(f"big file, {sc.label}: run {i + 1}/{settings.repeat} ...", file=sys.stderr, flush=True)
            sc.runs.append(
                run_one(
                    kind,
                    work=work,
                    run_name=f"{kind}-{i}",
                    src=src,
                    paths=[big],
                    expected={big.name: md5},
                    settings=settings,
                )
            )
    return [curl, ingest]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("curl") is None:
        print("bench_moi: curl is required", file=sys.stderr)
        return 2
    settings = Settings(
        files=args.files,
        size=args.size,
        big_mib=args.big_mib,
        latency_ms=args.latency_ms,
        task_delay_ms=args.task_delay_ms,
        concurrency=args.concurrency,
        repeat=args.repeat,
        seed_loop_files=args.seed_loop_files,
        skip_big=args.skip_big,
        reference=not args.no_reference,
        baseline=not args.no_baseline,
    )
    started = time.perf_counter()
    print(header(settings), flush=True)
    exit_code = 0
    with work_dir(args.tmp_dir) as work:
        small = bench_small(work, settings, skip_seed=args.skip_seed)
        by_key = {sc.key: sc for sc in small}
        print(f"\n## {settings.files} files x {settings.size} B\n")
        print(small_table(small))
        ingest_fps = by_key["ingest"].median().files_per_s
        ratios: list[tuple[str, float, str, float, bool]] = [
            ("ingest (batching) vs curl --parallel, files/s", ingest_fps / by_key["curl"].median().files_per_s,
             "×", TARGET_VS_CURL, False),
        ]  # fmt: skip
        if "seed" in by_key:
            ratios.append(
                ("ingest (batching) vs seed loop, files/s", ingest_fps / by_key["seed"].median().files_per_s,
                 "×", TARGET_VS_SEED, False)
            )  # fmt: skip
        print()
        print(ratio_table(ratios))
        print(
            "\n(for information) ingest --batch-files 1 vs curl --parallel, files/s: "
            f"{by_key['ingest-nobatch'].median().files_per_s / by_key['curl'].median().files_per_s:.2f}×"
        )
        if "baseline" in by_key:
            fps = {key: sc.median().files_per_s for key, sc in by_key.items()}
            print(
                "(for information) against the minimal aiohttp client, files/s: ingest --batch-files 1 "
                f"{fps['ingest-nobatch'] / fps['baseline']:.2f}×, ingest batching "
                f"{fps['ingest'] / fps['baseline-batched']:.2f}×; the minimal client itself: 1 file/request "
                f"{fps['baseline'] / fps['curl']:.2f}× curl --parallel"
                + (f", batched {fps['baseline-batched'] / fps['curl-batched']:.2f}× curl's same batches"
                   if "curl-batched" in fps else "")
            )  # fmt: skip
        all_scenarios = list(small)
        save_json(args.json_out, settings, all_scenarios)
        missed = any(verdict(v, t, at_most=a) != "met" for _, v, _, t, a in ratios)

        if not args.skip_big:
            big = bench_big(work, settings)
            curl_big, ingest_big = big
            print(f"\n## one file of {settings.big_mib} MiB\n")
            print(big_table(big))
            big_ratios = [
                ("ingest vs curl, MB/s", ingest_big.median().mb_per_s / curl_big.median().mb_per_s, "×",
                 TARGET_BIG_VS_CURL, False),
                ("ingest client peak RSS (worst run)", max(r.max_rss_mib for r in ingest_big.runs), " MiB",
                 TARGET_BIG_RSS_MIB, True),
            ]  # fmt: skip
            print()
            print(ratio_table(big_ratios))
            all_scenarios += big
            save_json(args.json_out, settings, all_scenarios)
            missed = missed or any(verdict(v, t, at_most=a) != "met" for _, v, _, t, a in big_ratios)

        warnings = [sc.label for sc in all_scenarios for r in sc.runs if r.warning]
        if warnings:
            print(f"\nWARNING: incomplete or failed runs in: {', '.join(sorted(set(warnings)))}")
            exit_code = 1
        if missed:
            print("\nat least one target was missed (see the verdict columns)")
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f}s", flush=True)

    return exit_code


if __name__ == "__main__":
    sys.exit(main())
