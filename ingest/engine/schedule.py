"""Scheduled loads: ``ingest run … --every 30m`` or ``--cron "0 2 * * *"``.

The same load runs again and again in one process:

- never two at once: the next run is due ``every`` after the previous one *started*, but not before it
  ended (a run that overruns delays the next, which then starts at once); with ``cron`` the next run is
  the first time the expression matches after the previous one ended (missed times are not made up);
- one summary per run (``on_summary``); a run with failed files, or one that could not reach the
  platform, is reported and the schedule goes on;
- SIGINT/SIGTERM between runs stops at once (exit 0); during a run the run is interrupted as a single
  run is (the writer drains: the manifest is consistent) and the schedule ends (exit 130);
- the manifest's lock (``ingest.manifest.lock``) is held from the first run to the last, so no other
  ``ingest run`` slips in between two scheduled ones.

Cron expressions are read by ``croniter`` (five fields, local time).
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio

from ingest.config import RunConfig
from ingest.errors import ConfigError, IngestError, InterruptedRun
from ingest.logs import event
from ingest.report import RunSummary

__all__ = ["Schedule", "parse_every", "run_scheduled"]

_EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    """``30m`` → 1800, ``1s`` → 1, ``2h``, ``1d``, ``90`` (seconds)."""
    m = _EVERY.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--every {text!r} is not an interval; write e.g. 30m, 1h, 1d or 90s")
    return float(m.group(1)) * _UNIT[(m.group(2) or "").lower()]


@dataclass(frozen=True, slots=True)
class Schedule:
    every: float | None = None
    cron: str | None = None

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ConfigError("give either --every or --cron, not both")
        if self.cron is not None:
            from croniter import croniter  # type: ignore[import-untyped]

            if not croniter.is_valid(self.cron):
                raise ConfigError(f"--cron {self.cron!r} is not a cron expression; write e.g. '0 2 * * *'")

    def next_start(self, started: float, ended: float) -> float:
        """When the run after one that ran from ``started`` to ``ended`` begins (epoch seconds)."""
        if self.every is not None:
            return max(started + self.every, ended)
        from croniter import croniter

        assert self.cron is not None
        nxt: datetime = croniter(self.cron, datetime.fromtimestamp(ended)).get_next(datetime)
        return nxt.timestamp()

    def first_start(self, now: float) -> float:
        """``every``: at once; ``cron``: the next matching time."""
        return now if self.every is not None else self.next_start(now, now)

    def describe(self) -> str:
        return f"every {self.every:g}s" if self.every is not None else f"on cron '{self.cron}'"


async def _sleep_until(when: float) -> bool:
    """Sleep until ``when``; False if SIGINT/SIGTERM came first."""
    stopped = False
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        with anyio.move_on_after(max(0.0, when - time.time())):
            async for _ in signals:
                stopped = True
                break
    return not stopped


@contextmanager
def _held(config: RunConfig) -> Iterator[None]:
    with ExitStack() as stack:
        manifest = config.manifest
        if (
            manifest is not None
            and not config.shared
            and not str(manifest).startswith(("postgres://", "postgresql://"))
        ):
            from ingest.manifest.lock import hold

            stack.enter_context(hold(Path(manifest)))
        yield


async def run_scheduled(
    config: RunConfig,
    schedule: Schedule,
    *,
    on_summary: Callable[[RunSummary], None],
    on_error: Callable[[str], None],
    say: Callable[[str], None] = lambda _line: None,
    max_runs: int | None = None,
) -> int:
    """Run ``config`` on ``schedule`` until a signal (or ``max_runs``); the exit code of the schedule."""
    from ingest.engine.run import run

    runs = 0
    with _held(config):
        when = schedule.first_start(time.time())
        while True:
            if when > time.time():
                event("schedule-wait", f"next run at {time.ctime(when)}", next_run=when)
                say(f"next run at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))} ({schedule.describe()})")
                if not await _sleep_until(when):
                    say("stopped between runs; the manifest is consistent")
                    return 0
            started = time.time()
            runs += 1
            try:
                summary = await run(config, handle_signals=True)
            except InterruptedRun:
                raise
            except ConfigError as exc:
                if runs == 1:
                    raise  # a setting to fix: said at once, not once per run forever
                on_error(f"run {runs} failed: {exc}")
                event("run-error", str(exc), run=runs)
            except IngestError as exc:
                on_error(f"run {runs} failed: {exc}")
                event("run-error", str(exc), run=runs)
            else:
                on_summary(summary)
            if max_runs is not None and runs >= max_runs:
                return 0
            when = schedule.next_start(started, time.time())
