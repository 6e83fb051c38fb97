"""Benchmark: the MOI emulator's own CPU per small upload and per status request, nothing else.

The same load as ``run.py``'s ``moi`` (curl's run) and ``status`` parts, without the ingest scenarios,
so before/after comparisons of emulator changes are quick and can alternate:

- ``--uploads N`` (default 2,000) files of 4 KiB, one per request, sent by one ``curl --parallel
  --parallel-max 32`` to a fresh emulator (``--latency-ms 20 --task-delay-ms 50``, as ``run.py``);
- ``--status N`` (default 10,000) ``GET /task/get`` for one task, also curl ``--parallel 32``;
- ``--list N`` (default 200) ``GET /task/list`` pages of the newest 100 tasks (``order_by=created_at``,
  ``is_desc=true``, as ``ingest run --batch-files 1`` polls) among the uploads' tasks, after the uploads,
  curl ``--parallel 4`` (a poll is one client's request at a time).

Emulator CPU is read from ``/proc/PID/stat`` before and after each load (the kernel's accounting, not
wall time: the machine is shared). ``--profile DIR`` also records each load with ``py-spy record``
(flame graphs ``DIR/upload.svg``, ``DIR/status.svg`` and ``DIR/list.svg``, plus ``-f raw`` folded stacks next to them)::

    python benchmarks/bench_emulator_cpu.py [--uploads 2000] [--status 10000] [--list 200] [--repeat 1]
                                            [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_moi as moi

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu(emu: moi.Emulator) -> tuple[float, float]:
    """The emulator's (user, system) CPU seconds so far."""
    assert emu._proc is not None
    fields = Path(f"/proc/{emu._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


@contextmanager
def _profiled(emu: moi.Emulator, out: Path | None, name: str) -> Iterator[None]:
    """``py-spy record`` of the emulator for the duration of the block (nothing when ``out`` is None)."""
    if out is None:
        yield
        return
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    assert emu._proc is not None
    procs = [
        subprocess.Popen(
            [pyspy, "record", "--pid", str(emu._proc.pid), "--rate", "250", "--nonblocking", "-o", str(path), *fmt],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for path, fmt in ((out / f"{name}.svg", []), (out / f"{name}.txt", ["-f", "raw"]))
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait(timeout=60)


def uploads_ms(work: Path, count: int, profile: Path | None, lists: int = 0) -> tuple[float, float, float]:
    """Emulator CPU ms per upload request, one 4 KiB file per request: (user + system, system); then per
    ``/task/list`` page of the newest 100 of those tasks (``lists`` pages; NaN for none)."""
    src = work / "files"
    if not src.exists():
        moi.make_small_files(src, count, 4096)
    paths = sorted(src.iterdir())
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    (work / "upload.cfg").write_text(moi.curl_config("URL", paths))
    with moi.Emulator(data, latency_ms=20, task_delay_ms=50) as emu:
        cfg = work / "upload.run.cfg"
        cfg.write_text((work / "upload.cfg").read_text().replace('"URL/', json.dumps(emu.url)[:-1] + "/"))
        before = _cpu(emu)
        with _profiled(emu, profile, "upload"):
            m = moi.run_measured(
                ["curl", "--silent", "--parallel", "--parallel-max", "32", "--config", str(cfg)],
                cwd=work,
                env=moi.child_env(),
            )
        after = _cpu(emu)
        stored = len(emu.stored())
        list_ms = _lists_ms(emu, work, lists, profile) if lists else float("nan")
    ok = m.stdout.split().count("200")
    if ok != count or stored != count:
        raise RuntimeError(f"uploads: {ok} answered 200 and {stored} stored of {count}")
    return (sum(after) - sum(before)) * 1000 / count, (after[1] - before[1]) * 1000 / count, list_ms


def _lists_ms(emu: moi.Emulator, work: Path, count: int, profile: Path | None) -> float:
    """Emulator CPU ms (user + system) per ``GET /task/list`` page of the newest 100 tasks."""
    url = f"{emu.url}/task/list?order_by=created_at&is_desc=true&page=1&page_size=100"
    before = _cpu(emu)
    with _profiled(emu, profile, "list"):
        moi.curl_gets(url, count, parallel=4, work=work, name="list")
    after = _cpu(emu)
    return (sum(after) - sum(before)) * 1000 / count


def status_ms(work: Path, count: int, profile: Path | None) -> tuple[float, float]:
    """Emulator CPU ms per ``GET /task/get`` of a one-file task: (user + system, system)."""
    one = work / "one"
    one.mkdir(exist_ok=True)
    (one / "a.txt").write_text("status benchmark\n")
    data = work / "data-status"
    shutil.rmtree(data, ignore_errors=True)
    with moi.Emulator(data, latency_ms=0, task_delay_ms=0) as emu:
        task_id = moi.upload_one(emu.url, one / "a.txt")
        before = _cpu(emu)
        with _profiled(emu, profile, "status"):
            moi.curl_gets(f"{emu.url}/task/get?task_id={task_id}", count, parallel=32, work=work, name="status")
        after = _cpu(emu)
    return (sum(after) - sum(before)) * 1000 / count, (after[1] - before[1]) * 1000 / count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=2000)
    parser.add_argument("--status", type=int, default=10_000)
    parser.add_argument("--list", type=int, default=200, help="/task/list pages after the uploads (0: none)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", type=Path, default=None, help="record py-spy flame graphs into this folder")
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    with moi.work_dir(None) as work:
        for _ in range(args.repeat):
            nan = float("nan")
            up = uploads_ms(work, args.uploads, args.profile, args.list) if args.uploads else (nan, nan, nan)
            st = status_ms(work, args.status, args.profile) if args.status else (nan, nan)
            print(
                f"emulator CPU ms/upload request {up[0]:.3f} (system {up[1]:.3f})"
                f"  ms/status request {st[0]:.3f} (system {st[1]:.3f})"
                f"  ms/list page {up[2]:.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
