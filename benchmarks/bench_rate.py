"""Benchmark: the request budget (``--max-rps``) and the adaptive limiter against a rate-limited MOI.

Issue 11, goal 7. ``ingest serve moi --rate-limit 100`` (a token bucket of 100 requests/s, bursts of one
second's worth; every request over it gets 429 with ``Retry-After``) runs as its own process on a free
127.0.0.1 port, a fresh one per scenario. ``ingest run`` (a child process, one file per request so the
client wants far more than 100 requests/s) sends a generated tree of small files to it twice:

  (a) adaptive   no budget: only the AIMD on 429s limits the client. Goal: under 5% of the requests
                 rejected, goodput at least 85% of the limit (85 requests/s).
  (b) budget     ``--max-rps 95``. Goal: no 429 at all, goodput at least 90 requests/s.

The numbers come from the emulator's ``GET /_emulator/stats``: ``requests`` (every API request it
received, 429s included), ``rate_limited`` (the 429s) and ``span_s`` (seconds from the first request to
the last). Goodput is the requests it answered (sent minus 429s) per second of that span; start-up and
the manifest's work before the first request are not in it. Every file must be stored, with its md5.

``run(quick)`` returns the rows (scenario, metric, value, goal, verdict) for a combined runner. Usage::

    python benchmarks/bench_rate.py [--quick] [--files N] [--json-out FILE]

Exit status: 0 when every run stored every file (goals met or not: read the verdicts), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_moi import (  # noqa: E402 - a sibling script, not a package
    API_KEY,
    Emulator,
    child_env,
    ingest_cmd,
    make_small_files,
    md_table,
    run_measured,
    verify,
)

RATE_LIMIT = 100.0
MAX_RPS = 95.0
FILES = 3000
QUICK_FILES = 1000
SIZE = 256
CONCURRENCY = 16
LATENCY_MS = 5
TASK_DELAY_MS = 50

#: Goals from issue 11.
GOAL_ADAPTIVE_REJECTED_PCT = 5.0
GOAL_ADAPTIVE_GOODPUT = 0.85 * RATE_LIMIT
GOAL_BUDGET_GOODPUT = 90.0


@dataclass
class Measured:
    """One scenario: what the emulator counted, and how the client fared."""

    label: str
    sent: int
    rejected: int
    span_s: float
    wall_s: float
    stored_ok: int
    files: int
    warning: str

    @property
    def rejected_pct(self) -> float:
        return 100.0 * self.rejected / self.sent if self.sent else 0.0

    @property
    def goodput(self) -> float:
        return (self.sent - self.rejected) / self.span_s if self.span_s > 0 else 0.0


def _scenario(work: Path, src: Path, expected: dict[str, str], label: str, extra: Sequence[str]) -> Measured:
    run_dir = work / label
    run_dir.mkdir()
    try:
        emulator = Emulator(run_dir / "data", latency_ms=LATENCY_MS, task_delay_ms=TASK_DELAY_MS)
        emulator.cmd += ["--rate-limit", f"{RATE_LIMIT:g}"]
        with emulator as emu:
            cmd = ingest_cmd(src, emu.url, run_dir, CONCURRENCY, ["--batch-files", "1", *extra])
            m = run_measured(cmd, cwd=run_dir, env=child_env(MOI_KEY=API_KEY))
            stats = emu._get("/_emulator/stats")
            stored_ok, warning = verify(emu.stored(), expected)
        if m.returncode != 0:
            tail = (m.stderr.strip().splitlines() or [""])[-1][:200]
            warning = "; ".join(w for w in (warning, f"client exit {m.returncode}: {tail}") if w)
        return Measured(
            label=label,
            sent=sum(int(n) for n in stats["requests"].values()),
            rejected=int(stats["rate_limited"]),
            span_s=float(stats["span_s"]),
            wall_s=m.wall_s,
            stored_ok=stored_ok,
            files=len(expected),
            warning=warning,
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _rows(adaptive: Measured, budget: Measured) -> list[dict[str, Any]]:
    def row(scenario: str, metric: str, value: float, goal: str = "", met: bool | None = None) -> dict[str, Any]:
        verdict = "" if met is None else _verdict(met)
        return {"scenario": scenario, "metric": metric, "value": value, "goal": goal, "verdict": verdict}

    def common(name: str, m: Measured) -> list[dict[str, Any]]:
        return [
            row(name, "span s (first to last request)", round(m.span_s, 1)),
            row(name, "client wall s", round(m.wall_s, 1)),
            row(name, "files stored ok", m.stored_ok, f"{m.files}", m.stored_ok == m.files),
        ]

    a, b = "no budget (adaptive)", f"--max-rps {MAX_RPS:g}"
    limit_a = GOAL_ADAPTIVE_REJECTED_PCT
    rows = [
        row(a, "requests sent", adaptive.sent),
        row(a, "429s", adaptive.rejected),
        row(a, "rejected %", round(adaptive.rejected_pct, 2), f"< {limit_a:g}", adaptive.rejected_pct < limit_a),
        row(a, "goodput req/s", round(adaptive.goodput, 1), f">= {GOAL_ADAPTIVE_GOODPUT:g}",
            adaptive.goodput >= GOAL_ADAPTIVE_GOODPUT),
        *common(a, adaptive),
        row(b, "requests sent", budget.sent),
        row(b, "429s", budget.rejected, "0", budget.rejected == 0),
        row(b, "rejected %", round(budget.rejected_pct, 2)),
        row(b, "goodput req/s", round(budget.goodput, 1), f">= {GOAL_BUDGET_GOODPUT:g}",
            budget.goodput >= GOAL_BUDGET_GOODPUT),
        *common(b, budget),
    ]  # fmt: skip
    return rows


def run(quick: bool, *, files: int | None = None, tmp_dir: Path | None = None) -> list[dict[str, Any]]:
    """Both scenarios, each against a fresh ``ingest serve moi --rate-limit 100``; the table's rows."""
    count = files or (QUICK_FILES if quick else FILES)
    work = Path(tempfile.mkdtemp(prefix="bench-rate-", dir=tmp_dir))
    try:
        src = work / "tree"
        expected = make_small_files(src, count, SIZE)
        print(f"adaptive (no budget), {count} files ...", file=sys.stderr, flush=True)
        adaptive = _scenario(work, src, expected, "adaptive", [])
        print(f"--max-rps {MAX_RPS:g}, {count} files ...", file=sys.stderr, flush=True)
        budget = _scenario(work, src, expected, "budget", ["--max-rps", f"{MAX_RPS:g}"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for m in (adaptive, budget):
        if m.warning:
            print(f"{m.label}: WARNING: {m.warning}", file=sys.stderr)
    return _rows(adaptive, budget)


def table(rows: Sequence[dict[str, Any]]) -> str:
    return md_table(
        ["scenario", "metric", "value", "goal", "verdict"],
        [[str(r["scenario"]), str(r["metric"]), f"{r['value']:g}", str(r["goal"]), str(r["verdict"])] for r in rows],
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help=f"{QUICK_FILES} files instead of {FILES} (about a minute)")
    p.add_argument("--files", type=int, default=None, help="files in the tree (overrides --quick)")
    p.add_argument("--tmp-dir", type=Path, default=None, help="where to create the work folder (default: system temp)")
    p.add_argument("--json-out", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    started = time.perf_counter()
    rows = run(args.quick, files=args.files, tmp_dir=args.tmp_dir)
    print(
        f"emulator: ingest serve moi --rate-limit {RATE_LIMIT:g} --latency-ms {LATENCY_MS} "
        f"--task-delay-ms {TASK_DELAY_MS}; client: ingest run --batch-files 1 --concurrency {CONCURRENCY}; "
        f"{rows[-1]['goal']} files x {SIZE} B; {time.perf_counter() - started:.0f}s in all\n"
    )
    print(table(rows))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    stored = all(r["verdict"] == "met" for r in rows if r["metric"] == "files stored ok")
    return 0 if stored else 1


if __name__ == "__main__":
    sys.exit(main())
