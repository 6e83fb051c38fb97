"""Benchmark: the embedded default (``ingest run DIR``, no target) on a big tree of tiny files, and its no-op rerun.

What a user of ``ingest run DIR`` on a fresh machine gets: the client plus the MOI emulator it starts in a
child process, both on this machine. A tree of ``--files`` files of ``--size`` bytes spread over ``--dirs``
folders (created once and reused from ``--tree``), then:

  first run   ``ingest run TREE --json`` in an empty work folder: every file sent, stored and done
  no-op       the same command again: every file unchanged, nothing sent

While each runs, a sampler thread reads every ``--sample-s`` seconds the resident memory (RSS) of the
``ingest`` process and, separately, of its children (the embedded emulator), and the number of files the
manifest holds as done (a read-only SQLite connection: WAL lets it read while the run writes). CPU time is
the kernel's ``os.wait4`` accounting of the ``ingest`` process *including* the emulator child it reaped.

Goals (issue 11): first run >= 1,500 files/s on 100,000 files (goal 4); no-op rerun of 100,000 files
<= 1.0 s wall (goal 5); on 1,000,000 files peak RSS <= 150 MiB and flat after the first minute, no-op
<= 10 s (goal 6). ``--plot FILE.png`` draws RSS and files/s over time (needs matplotlib: ``pip install
-e '.[bench]'``). Usage::

    python benchmarks/bench_embedded.py [--files 100000] [--size 256] [--dirs 100] [--tree DIR]
                                        [--plot rss.png] [--json-out FILE] [--quick]
    python benchmarks/bench_embedded.py --files 1000000 --dirs 1000 --tree /var/tmp/m1 --plot m1.png

Everything talks to 127.0.0.1 (the emulator binds a free loopback port). Exit status 0 when both runs
finished with every file done (goals met or not: read the verdicts), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from bench_moi import child_env  # the benchmarks' one child environment: no proxies, loopback only

MIB = 1024 * 1024
CLIENT_TIMEOUT_S = 4 * 3600.0
#: Goals from issue 11.
GOAL_FILES_PER_S = 1500.0
GOAL_NOOP_S_100K = 1.0
GOAL_NOOP_S_1M = 10.0
GOAL_PEAK_RSS_MIB = 150.0
#: The last run's full measurements (samples included), for ``--json-out``.
LAST: dict[str, Any] = {}
#: "Flat after the first minute": RSS at the end at most this much above RSS at one minute.
FLAT_GROWTH = 0.10


@dataclass
class Sample:
    t: float
    client_rss_mib: float
    emulator_rss_mib: float
    done: int | None


@dataclass
class RunResult:
    name: str
    wall_s: float
    cpu_s: float
    elapsed_s: float | None  # what `ingest run --json` says: the run itself, without interpreter start-up
    returncode: int
    summary: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)

    @property
    def peak_client_mib(self) -> float:
        return max((s.client_rss_mib for s in self.samples), default=0.0)

    @property
    def peak_emulator_mib(self) -> float:
        return max((s.emulator_rss_mib for s in self.samples), default=0.0)

    @property
    def peak_total_mib(self) -> float:
        return max((s.client_rss_mib + s.emulator_rss_mib for s in self.samples), default=0.0)


# ----- the tree ------------------------------------------------------------------------------------------


def make_tree(root: Path, files: int, size: int, dirs: int) -> None:
    """``files`` files of ``size`` bytes (distinct contents) in ``dirs`` folders; reused when already there."""
    marker = root / ".bench-tree.json"
    want = {"files": files, "size": size, "dirs": dirs}
    if marker.exists() and json.loads(marker.read_text()) == want:
        print(f"reusing the tree in {root}", file=sys.stderr, flush=True)
        return
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    pad = b"x" * max(0, size - 16)
    for i in range(files):
        folder = root / f"d{i % dirs:04d}"
        if i < dirs:
            folder.mkdir(parents=True)
        body = (f"{i:015d}\n".encode() + pad)[:size]
        fd = os.open(folder / f"f{i:07d}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        if i and i % 100_000 == 0:
            print(f"  created {i:,} files", file=sys.stderr, flush=True)
    marker.write_text(json.dumps(want))  # hidden: the walk skips it
    print(f"created {files:,} files in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)


# ----- one run, sampled ----------------------------------------------------------------------------------


def _done_count(work: Path) -> int | None:
    manifests = sorted((work / ".ingest" / "manifests").glob("*.db"))
    if not manifests:
        return None
    try:
        db = sqlite3.connect(f"file:{manifests[0]}?mode=ro", uri=True, timeout=1)
        try:
            return int(db.execute("SELECT count(*) FROM files WHERE state = 'done'").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return None


def _sampler(pid: int, work: Path, every_s: float, out: list[Sample], stop: threading.Event) -> None:
    start = time.perf_counter()
    count_every = max(1, round(5.0 / every_s))  # counting 1M rows costs the run CPU: every ~5 s is enough
    n = 0
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.is_set():
        try:
            client = proc.memory_info().rss / MIB
            emulator = sum(c.memory_info().rss for c in proc.children(recursive=True)) / MIB
        except psutil.Error:
            break
        done = _done_count(work) if n % count_every == 0 else None
        out.append(Sample(time.perf_counter() - start, client, emulator, done))
        n += 1
        stop.wait(every_s)


def run_sampled(name: str, tree: Path, work: Path, every_s: float) -> RunResult:
    cmd = [sys.executable, "-m", "ingest", "run", str(tree), "--json", "--quiet"]
    out_path, err_path = work / f"{name}.stdout", work / f"{name}.stderr"
    samples: list[Sample] = []
    stop = threading.Event()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=work, env=child_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        sampler = threading.Thread(target=_sampler, args=(proc.pid, work, every_s, samples, stop), daemon=True)
        sampler.start()
        killer = threading.Timer(CLIENT_TIMEOUT_S, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            stop.set()
        wall = time.perf_counter() - start
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text(encoding="utf-8", errors="replace")
    try:
        summary: dict[str, Any] = json.loads(text)
    except ValueError:
        summary = {}
    if proc.returncode != 0:
        tail = err_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        print(f"{name}: exit {proc.returncode}: {' | '.join(tail)}", file=sys.stderr)
    elapsed = summary.get("elapsed_s")
    # wait4 on Linux reports the reaped child together with the children it reaped (the emulator).
    return RunResult(
        name=name,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        elapsed_s=float(elapsed) if elapsed is not None else None,
        returncode=proc.returncode,
        summary=summary,
        samples=samples,
    )


# ----- reporting -----------------------------------------------------------------------------------------


def rss_growth_after_first_minute(samples: Sequence[Sample], *fields: str) -> float | None:
    """Relative growth of RSS (the sum of ``fields``; default both processes) from t = 60 s to its peak
    after that; None for runs shorter than 2 minutes."""
    if not samples or samples[-1].t < 120:
        return None
    fields = fields or ("client_rss_mib", "emulator_rss_mib")

    def rss(s: Sample) -> float:
        return float(sum(getattr(s, f) for f in fields))

    at_minute = next(s for s in samples if s.t >= 60)
    return max(rss(s) for s in samples if s.t >= 60) / rss(at_minute) - 1.0


def rows(files: int, first: RunResult | None, noop: RunResult) -> list[dict[str, Any]]:
    """The measured values against the issue's goals: scenario, metric, value, goal, verdict."""
    out: list[dict[str, Any]] = []

    def add(scenario: str, metric: str, value: float, goal: str, met: bool | None) -> None:
        verdict = "–" if met is None else ("met" if met else "MISSED")
        out.append({"scenario": scenario, "metric": metric, "value": round(value, 3), "goal": goal, "verdict": verdict})

    million = files >= 1_000_000
    label = f"embedded {files:,}"
    if first is not None:
        fps = files / first.wall_s
        add(label, "first run files/s (wall)", fps, f">= {GOAL_FILES_PER_S:,.0f}" if files >= 100_000 else "",
            fps >= GOAL_FILES_PER_S if files >= 100_000 else None)  # fmt: skip
        if first.elapsed_s:
            add(label, "first run files/s (in-run)", files / first.elapsed_s, "", None)
        add(label, "CPU ms/file (client + emulator)", first.cpu_s * 1000 / files, "", None)
        # The embedded default is both processes: the user's machine pays for the emulator child too.
        rss_goal = f"<= {GOAL_PEAK_RSS_MIB:.0f}" if million else ""
        add(label, "peak RSS MiB, client + emulator child", first.peak_total_mib, rss_goal,
            first.peak_total_mib <= GOAL_PEAK_RSS_MIB if million else None)  # fmt: skip
        add(label, "peak RSS MiB, client", first.peak_client_mib, "", None)
        add(label, "peak RSS MiB, emulator child", first.peak_emulator_mib, "", None)
        for who, of in (("client", "client_rss_mib"), ("emulator child", "emulator_rss_mib")):
            grown = rss_growth_after_first_minute(first.samples, of)
            if grown is not None:
                add(label, f"RSS growth after the first minute %, {who}", grown * 100, "", None)
        growth = rss_growth_after_first_minute(first.samples)
        if growth is not None:
            add(label, "RSS growth after the first minute %, both", growth * 100, f"<= {FLAT_GROWTH * 100:.0f}",
                growth <= FLAT_GROWTH if million else None)  # fmt: skip
    goal_noop = GOAL_NOOP_S_1M if million else GOAL_NOOP_S_100K
    applies = million or files == 100_000
    add(label, "no-op rerun s (wall)", noop.wall_s, f"<= {goal_noop:g}" if applies else "",
        noop.wall_s <= goal_noop if applies else None)  # fmt: skip
    if noop.elapsed_s is not None:
        add(label, "no-op rerun s (in-run, no interpreter start)", noop.elapsed_s, "", None)
    add(label, "no-op peak RSS MiB, client", noop.peak_client_mib, "", None)
    return out


def md_table(items: Sequence[dict[str, Any]]) -> str:
    headers = ["scenario", "metric", "value", "goal", "verdict"]
    cells = [[f"{r[h]:,.2f}" if isinstance(r[h], float) else str(r[h]) for h in headers] for r in items]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = lambda cs: "| " + " | ".join(c.ljust(w) for c, w in zip(cs, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def plot(path: Path, files: int, first: RunResult) -> None:
    """RSS of both processes and files/s over the first run: the picture for benchmarks/README.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in first.samples]
    fig, (ax_rss, ax_rate) = plt.subplots(2, 1, sharex=True, figsize=(9, 6), constrained_layout=True)
    ax_rss.plot(t, [s.client_rss_mib for s in first.samples], label="ingest (client)")
    ax_rss.plot(t, [s.emulator_rss_mib for s in first.samples], label="embedded emulator (child)")
    ax_rss.plot(t, [s.client_rss_mib + s.emulator_rss_mib for s in first.samples], label="both", color="tab:red")
    ax_rss.axhline(GOAL_PEAK_RSS_MIB, color="grey", linestyle="--", linewidth=1, label="goal: 150 MiB")
    ax_rss.set_ylabel("RSS (MiB)")
    ax_rss.set_ylim(bottom=0)
    ax_rss.legend(loc="lower right", fontsize="small")
    counted = [s for s in first.samples if s.done is not None]
    pairs = list(itertools.pairwise(counted))
    rate_t = [b.t for _, b in pairs]
    rate = [((b.done or 0) - (a.done or 0)) / (b.t - a.t) for a, b in pairs]
    ax_rate.plot(rate_t, rate, color="tab:green")
    ax_rate.set_ylabel("files done per second")
    ax_rate.set_xlabel("seconds since start")
    ax_rate.set_ylim(bottom=0)
    fig.suptitle(f"ingest run DIR (embedded default), {files:,} files: {files / first.wall_s:,.0f} files/s overall")
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}", file=sys.stderr)


# ----- main ----------------------------------------------------------------------------------------------


def run(quick: bool, *, files: int | None = None, tree: Path | None = None, plot_path: Path | None = None,
        size: int = 256, dirs: int | None = None, sample_s: float = 1.0,
        keep_work: Path | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Build (or reuse) the tree, run it twice, return the rows (``benchmarks/run.py`` imports this).

    ``keep_work``: run in this (new, empty) work folder and keep it, so the no-op rerun can be timed
    again later (``cd WORK && ingest run TREE --json``) without sending the tree again."""
    files = files or (20_000 if quick else 100_000)
    dirs = dirs or max(1, files // 1000)
    own_tree = tree is None
    tree = tree or Path(tempfile.mkdtemp(prefix="bench-embedded-tree-"))
    if keep_work is not None:
        keep_work.mkdir(parents=True)  # refuses an existing folder: its manifest would make a no-op first run
    work = keep_work or Path(tempfile.mkdtemp(prefix="bench-embedded-work-"))
    try:
        make_tree(tree, files, size, dirs)
        print(f"first run of {files:,} files ...", file=sys.stderr, flush=True)
        first = run_sampled("first", tree, work, sample_s)
        print("no-op rerun ...", file=sys.stderr, flush=True)
        noop = run_sampled("noop", tree, work, min(sample_s, 0.1))
        ok = first.returncode == 0 and noop.returncode == 0 and first.summary.get("done") == files
        if not ok:
            raise RuntimeError(f"runs incomplete: first {first.summary or first.returncode}, no-op {noop.returncode}")
        if noop.summary.get("skipped") != files:
            raise RuntimeError(f"the no-op rerun did not skip every file: {noop.summary}")
        if plot_path is not None:
            plot(plot_path, files, first)
        LAST.clear()
        LAST.update(first=asdict(first), noop=asdict(noop))
        return rows(files, first, noop)
    finally:
        if keep_work is None:
            shutil.rmtree(work, ignore_errors=True)
        if own_tree:
            shutil.rmtree(tree, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--files", type=int, default=None, help="files in the tree (default 100,000; 20,000 with --quick)")
    p.add_argument("--size", type=int, default=256, help="bytes per file (default 256)")
    p.add_argument("--dirs", type=int, default=None, help="folders (default: one per 1,000 files)")
    p.add_argument("--tree", type=Path, default=None, help="keep the tree here and reuse it on the next run")
    p.add_argument("--sample-s", type=float, default=1.0, help="RSS sampling period (default 1 s)")
    p.add_argument("--plot", type=Path, default=None, help="write RSS and files/s over time as a PNG here")
    p.add_argument("--json-out", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--quick", action="store_true", help="20,000 files (about a minute)")
    p.add_argument("--keep-work", type=Path, default=None,
                   help="run in this new folder and keep it (manifest, emulator store) for later reruns")  # fmt: skip
    args = p.parse_args(argv)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, load {load}")
    try:
        result = run(args.quick, files=args.files, tree=args.tree, plot_path=args.plot, size=args.size,
                     dirs=args.dirs, sample_s=args.sample_s, keep_work=args.keep_work)  # fmt: skip
    except FileExistsError:
        print(f"bench_embedded: --keep-work {args.keep_work} exists; give a new folder", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"bench_embedded: {exc}", file=sys.stderr)
        return 1
    print()
    print(md_table(result))
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": result, "runs": LAST}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
