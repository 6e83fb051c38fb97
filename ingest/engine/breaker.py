"""The circuit breaker: stop sending to a platform that has been unreachable for too long.

A connection refused, reset or timed out (no HTTP status) opens an outage; any request that gets an
answer closes it. Once an outage has lasted ``unreachable_after`` seconds, every retry loop of the run
gives up at once with ``PlatformUnreachable``: the workers stop sending and leave their files to the next
run (recorded as interrupted uploads, which resume with dedup, never as failed), the poller leaves the
files it follows to the next run, and the run ends with exit code 1 and "platform unreachable since T;
rerun to resume", instead of retrying every file for the better part of an hour.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from ingest.errors import TransientError

__all__ = ["Breaker", "PlatformUnreachable"]

log = logging.getLogger("ingest.engine.breaker")


class PlatformUnreachable(TransientError):
    """The breaker is open: nothing more is sent in this run."""


class Breaker:
    def __init__(self, unreachable_after: float) -> None:
        self.unreachable_after = unreachable_after
        self._since_mono: float | None = None
        self._since_wall: float | None = None
        self.tripped = False

    @property
    def message(self) -> str:
        since = datetime.fromtimestamp(self._since_wall or time.time(), UTC).astimezone()
        return f"platform unreachable since {since:%Y-%m-%d %H:%M:%S %Z}; rerun to resume"

    def success(self) -> None:
        if self._since_mono is not None and not self.tripped:
            log.info("the platform answers again")
        self._since_mono = self._since_wall = None

    def failure(self, exc: TransientError) -> None:
        """Count ``exc`` if it says the platform could not be reached (no HTTP status at all)."""
        if self.tripped:
            return
        if exc.status is not None:  # an answer, if an unhappy one (5xx): the platform is reachable
            self._since_mono = self._since_wall = None
            return
        now = time.monotonic()
        if self._since_mono is None:
            self._since_mono, self._since_wall = now, time.time()
            log.info("platform unreachable (%s); giving up after %gs without an answer", exc.detail,
                     self.unreachable_after)  # fmt: skip
        elif now - self._since_mono >= self.unreachable_after:
            self.tripped = True
            log.warning("%s", self.message)

    def check(self) -> None:
        if self.tripped:
            raise PlatformUnreachable(self.message)
