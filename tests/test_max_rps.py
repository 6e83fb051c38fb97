"""The request budget (``--max-rps``, ``ingest.ratelimit``): one token bucket for every request of a run,
whose rate adapts to the platform's 429s; its flag, its config key, and a run against a rate-limited
emulator that never hears a 429."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from ingest.cli.fanout import worker_argv
from ingest.ratelimit import RequestBudget, split_budget
from ingest.report import RunSummary
from tests.conftest import make_tree
from tests.harness import MOI, ServerProcess, run_cli


class FakeClock:
    """A clock the test moves by hand; ``sleep`` records what was asked and moves it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def budget(max_rps: float | None, clock: FakeClock) -> RequestBudget:
    return RequestBudget(max_rps, clock=clock, sleep=clock.sleep)


# ----- the bucket ------------------------------------------------------------------------------------


def test_requests_leave_evenly_spaced_in_the_order_they_asked() -> None:
    """At 10/s, ten requests asking at once get slots 0.1 s apart, first come first served."""
    clock = FakeClock()
    bucket = budget(10, clock)
    waits = [bucket.reserve() for _ in range(10)]
    assert waits == pytest.approx([0.1 * i for i in range(10)])
    assert (bucket.taken, bucket.waited) == (10, 9)


def test_a_quiet_spell_allows_one_request_at_once_not_a_burst() -> None:
    """The burst is one token: after a minute of silence the first request goes at once, the next one
    waits its 1/rate as always."""
    clock = FakeClock()
    bucket = budget(10, clock)
    bucket.reserve()
    clock.now += 60
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(0.1)


def test_a_late_wake_up_costs_no_slot() -> None:
    """While requests are queued, each slot follows the previous slot, not the moment its sender woke:
    a loaded machine waking a timer late does not lower the rate."""
    clock = FakeClock()
    bucket = budget(10, clock)
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])
    clock.now += 0.25  # the third sender is still queued (its slot is at 0.2): the fourth's slot is 0.3
    assert bucket.reserve() == pytest.approx(0.05)


@pytest.mark.anyio
async def test_take_sleeps_once_for_its_slot() -> None:
    """``take`` is one sleep of exactly the reserved wait, none when a token is there."""
    clock = FakeClock()
    bucket = budget(4, clock)
    for _ in range(3):
        await bucket.take()
    assert clock.slept == pytest.approx([0.25, 0.25])


@pytest.mark.anyio
async def test_concurrent_takers_are_served_in_arrival_order() -> None:
    """Tasks that ask in order are let through in that order (a real event loop and clock)."""
    bucket = RequestBudget(400)
    order: list[int] = []

    async def request(i: int) -> None:
        await bucket.take()
        order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(request, i)
    assert order == list(range(12))


def test_the_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RequestBudget(0)


def test_a_job_budget_is_split_between_its_workers() -> None:
    """--max-rps is the job's: each of N workers keeps N-th of it; the parent's flag is not passed on."""
    assert split_budget(90, 3) == 30
    assert split_budget(None, 3) is None
    argv = worker_argv(["run", "docs", "--max-rps", "90", "--processes", "3"], max_rps=30.0)
    assert argv.count("--max-rps") == 1
    assert argv[argv.index("--max-rps") + 1] == "30.0"
    assert "90" not in argv


# ----- adapting to 429s ------------------------------------------------------------------------------


def test_no_budget_paces_nothing_until_a_429() -> None:
    clock = FakeClock()
    bucket = budget(None, clock)
    assert [bucket.reserve() for _ in range(100)] == [0.0] * 100
    assert bucket.rate is None


def test_a_429_sets_the_rate_under_what_the_platform_accepted() -> None:
    """The first 429 sets the rate to 0.9x the answers accepted in the last second; the 429s of
    requests already in flight (within a second) cut nothing more."""
    clock = FakeClock()
    bucket = budget(None, clock)
    for _ in range(200):  # 200 accepted over the last second...
        clock.now += 0.005
        bucket.answered(200)
    bucket.answered(429)
    assert bucket.rate == pytest.approx(180)
    for _ in range(20):
        bucket.answered(429)
    assert bucket.rate == pytest.approx(180)
    assert bucket.rejected == 21
    clock.now += 1.01  # the next second: nothing accepted, still rejected: cut again, to the floor
    bucket.answered(429)
    assert bucket.rate == pytest.approx(0.5)


def test_the_rate_grows_back_one_percent_a_second_up_to_the_budget() -> None:
    """After a cut, every quiet second adds 1% (at least 1/s), never past --max-rps."""
    clock = FakeClock()
    bucket = budget(100, clock)
    for _ in range(50):
        clock.now += 0.02
        bucket.answered(200)
    bucket.answered(429)
    assert bucket.rate == pytest.approx(45)
    clock.now += 3.5
    bucket.reserve()
    assert bucket.rate == pytest.approx(48)
    clock.now += 120
    bucket.reserve()
    assert bucket.rate == 100


def test_a_budget_never_rises_above_max_rps_after_a_cut() -> None:
    """A cut below --max-rps is measured from the accepted rate, but never set above the budget."""
    clock = FakeClock()
    bucket = budget(20, clock)
    for _ in range(100):
        clock.now += 0.01
        bucket.answered(200)
    bucket.answered(429)
    assert bucket.rate == 20


# ----- the command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "toml", "expected"),
    [
        (["run", "docs", "--max-rps", "0"], None, "--max-rps: 0 must be a number above 0"),
        (["run", "docs", "--max-rps", "fast"], None, "--max-rps: 'fast' is not a number"),
        (["run", "docs", "--max-rps", "-5"], None, "--max-rps: -5 must be a number above 0"),
        (["run", "--config", "c.toml"], "[source]\npath='docs'\n[engine]\nmax_rps=0\n", "engine.max_rps"),
        (["plan", "docs", "--max-rps", "0"], None, "--max-rps: 0 must be a number above 0"),
        (["retry-failed", "--manifest", "m.db", "--max-rps", "nan"], None, "--max-rps: nan must be a number above 0"),
        (["verify", "--manifest", "m.db", "--max-rps", "0"], None, "--max-rps: 0 must be a number above 0"),
    ],
)
def test_a_bad_budget_is_one_line_and_exit_2(tmp_path: Path, args: list[str], toml: str | None, expected: str) -> None:
    (tmp_path / "docs").mkdir()
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml)
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in lines[0]


def test_help_says_the_budget_is_shared_and_split() -> None:
    result = run_cli(["run", "--help"])
    text = " ".join(result.stdout.split())
    assert "--max-rps N" in text
    assert "each worker gets N/workers" in text


def test_plan_estimates_time_from_the_budget(tmp_path: Path) -> None:
    """`ingest plan --max-rps` (or `[engine] max_rps`) bounds the estimate by requests / budget, and says so."""
    make_tree(tmp_path / "docs", 30)
    result = run_cli(["plan", "docs", "--batch-files", "1", "--max-rps", "0.5", "--json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["max_rps"] == 0.5
    assert plan["estimate_s"] >= plan["requests"] / 0.5
    text = run_cli(["plan", "docs", "--batch-files", "1", "--max-rps", "0.5"], cwd=tmp_path).stdout
    assert "at most 0.5 requests/s" in text
    (tmp_path / "c.toml").write_text("[source]\npath = 'docs'\n[engine]\nmax_rps = 2.5\n")
    from_file = run_cli(["plan", "--config", "c.toml", "--json"], cwd=tmp_path)
    assert json.loads(from_file.stdout)["max_rps"] == 2.5, from_file.stderr


# ----- end to end ------------------------------------------------------------------------------------


def _stats(server: ServerProcess) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.url + "/_emulator/stats", timeout=30) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
    return stats


def _run(tmp_path: Path, name: str, extra: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One `ingest run` (one file per request) against a fresh `ingest serve moi --rate-limit 20`."""
    server = ServerProcess([*MOI.serve_command(tmp_path / f"data-{name}"), "--rate-limit", "20"])
    try:
        flags, env = MOI.cli(server.url)
        args = ["run", "docs", *flags, "--manifest", f"{name}.db", "--batch-files", "1", "--json", *extra]
        result = run_cli([*args, "--request-retries", "30"], env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout), _stats(server)
    finally:
        server.stop()


def test_a_budget_under_the_limit_is_never_rate_limited(tmp_path: Path) -> None:
    """Against a platform allowing 20 requests/s, --max-rps 15 gets no 429, and every request the
    platform saw took a token; the same run without a budget is rate-limited (and hears every 429)."""
    make_tree(tmp_path / "docs", 60, size=64)
    started = time.monotonic()
    summary, stats = _run(tmp_path, "budget", ["--max-rps", "15"])
    assert (summary["done"], summary["failed"]) == (60, 0)
    assert stats["rate_limited"] == 0
    assert summary["rate_limited"] == 0
    assert summary["max_rps"] == 15
    assert summary["budget_requests"] == sum(stats["requests"].values())
    # At 15/s, 120-odd requests cannot take less than 8 s (a lower bound only: a loaded machine is slower).
    assert time.monotonic() - started > (summary["budget_requests"] - 1) / 15

    control, control_stats = _run(tmp_path, "control", [])
    assert (control["done"], control["failed"]) == (60, 0)
    assert control_stats["rate_limited"] > 0
    assert control["rate_limited"] == control_stats["rate_limited"]
    assert control["budget_requests"] == sum(control_stats["requests"].values())  # retries took tokens too


def test_the_summary_mentions_the_budget_and_the_429s() -> None:
    """The end-of-run lines say what budget was kept and, if the platform pushed back, how hard."""
    summary = RunSummary(destination="MOI", manifest="m.db", max_rps=95, budget_requests=600, budget_waits=580)
    assert "request budget: at most 95 requests/s; 600 requests, 580 of them waited their turn" in summary.lines()
    assert not any("rate-limited" in line for line in summary.lines())
    pushed = RunSummary(destination="MOI", manifest="m.db", rate_limited=12, settled_rps=91.4)
    assert "the platform rate-limited 12 requests (HTTP 429); sending slowed to 91 requests/s" in pushed.lines()
    assert not any("request budget" in line for line in pushed.lines())
