"""The client-side request budget: one token bucket every platform request of a run takes a token
from, uploads, polls, lookups, deletes and every retry of them alike, whose rate adapts to 429s.

Platforms publish quotas as requests per second or minute per account; a run that stays under its
quota never sees a 429 and never pays for one (a rejected request still costs a round trip and a
``Retry-After`` wait). The bucket is taken at the one place every request passes through
(``ingest.http.HttpClient.request``), after the request is built and before a connection is asked
for; the same place tells it each answer's status.

The bucket (the reservation form of a token bucket, as Go's ``golang.org/x/time/rate`` ``Reserve``):

- ``take`` reserves a slot synchronously, letting the token count go negative, and then sleeps once
  until its slot. Reservations are made in call order on the event loop, so waiting is first come,
  first served, with no queue object, no polling and no busy loop: one timer per waiting request.
- While requests are queued, each slot is one ``1/rate`` after the previous *slot*, not after the
  moment its sender woke up, so a late timer on a loaded machine costs no throughput.
- The burst is one token (rclone's ``--tpslimit-burst`` default): requests leave evenly spaced. A
  platform's own bucket may allow bursts of a second's worth, but one that enforces over a shorter
  window would reject a burst we thought allowed, and even spacing leaves the most room for network
  jitter to bunch requests up on the way (with a burst of ``b`` at ``rate`` under a server limit
  ``L`` with a one-second bucket, ``b + rate * jitter <= L`` must hold: ``b = 1`` tolerates about a
  second of jitter at 95 of 100 requests/s, ``b = 95`` only 50 ms).
- A waiter cancelled before its slot does not give its token back: later reservations were made
  after it, so handing it to the next caller could put two requests in one slot. Losing a slot
  only ever makes the run slower, never over budget.

The rate (AIMD on the rate, not on concurrency: a rate limit is a rate, and with fast answers even
one connection can exceed it):

- Without ``--max-rps`` nothing is paced until the platform first answers 429. With it, the rate
  starts at that budget and never exceeds it.
- A 429 sets the rate to ``DECREASE`` times the requests the platform *accepted* in the last second:
  while it is rejecting, that is its limit, measured. One cut per ``COOLDOWN``: the 429s of requests
  already in flight are the same signal.
- Each second without a 429 raises the rate by 1% (at least ``MIN_STEP`` requests/s), up to the
  budget; a platform that stopped limiting is found again in a few minutes rather than at once,
  because each overshoot costs a burst of 429s.
- Only HTTP 429 counts: a platform that words "slow down" inside a 200 envelope is still retried
  with backoff (``ingest.retry``), just not measured here.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["RequestBudget", "split_budget"]

#: After a 429: this share of the accepted rate of the last second.
DECREASE = 0.9
#: Seconds after a cut in which further 429s (from requests already sent) cut nothing.
COOLDOWN = 1.0
#: The smallest rate increase per quiet second (requests/s), and the floor a cut never goes below.
MIN_STEP = 1.0
MIN_RATE = 0.5
#: The window the accepted rate is measured over, in seconds.
WINDOW = 1.0


class RequestBudget:
    """At most ``rate`` requests per second (``None``: unpaced until a 429), one at a time after a
    quiet spell; adapts down on 429s and back up to ``max_rps``.

    ``clock`` and ``sleep`` are for tests (a fake clock); the defaults are the event loop's.
    """

    def __init__(
        self,
        max_rps: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if max_rps is not None and not max_rps > 0:
            raise ValueError(f"a request budget needs a positive rate, got {max_rps}")
        #: The user's budget (``--max-rps``): the rate never goes above it. ``None``: no budget.
        self.max_rps = max_rps
        #: The rate now; ``None``: unpaced.
        self.rate = max_rps
        self._clock = clock
        self._sleep = sleep
        self._tokens = 1.0  # a fresh bucket is full: the first request need not wait
        self._last = clock()
        self._last_change = self._last
        self._last_cut = -COOLDOWN
        #: When the platform accepted requests lately (answers other than 429), oldest first.
        self._accepted: collections.deque[float] = collections.deque()
        #: Requests that took a token, those that had to wait for it, and the 429s (for the summary).
        self.taken = 0
        self.waited = 0
        self.rejected = 0

    # ----- pacing ----------------------------------------------------------------------------------

    def reserve(self) -> float:
        """Take a token now; return the seconds to wait before sending (0.0: send at once)."""
        now = self._clock()
        self.taken += 1
        rate = self._grown(now)
        if rate is None:
            return 0.0
        self._tokens = min(1.0, self._tokens + (now - self._last) * rate) - 1.0
        self._last = now
        if self._tokens >= 0:
            return 0.0
        self.waited += 1
        return -self._tokens / rate

    async def take(self) -> None:
        """Wait for this request's turn (first come, first served)."""
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)

    # ----- adapting --------------------------------------------------------------------------------

    def answered(self, status: int) -> None:
        """The platform answered a request with HTTP ``status``."""
        now = self._clock()
        if status != 429:
            self._accepted.append(now)
            self._forget(now)
            return
        self.rejected += 1
        if now - self._last_cut < COOLDOWN:
            return
        self._forget(now)
        measured = DECREASE * len(self._accepted) / WINDOW
        new = max(MIN_RATE, measured if self.rate is None else min(self.rate, measured))
        self._settle(now)
        self.rate = new
        self._last_cut = self._last_change = now

    def _forget(self, now: float) -> None:
        while self._accepted and self._accepted[0] < now - WINDOW:
            self._accepted.popleft()

    def _grown(self, now: float) -> float | None:
        """The rate now, raised for the whole quiet seconds since the last change."""
        rate = self.rate
        if rate is None or rate == self.max_rps:
            return rate
        seconds = int(now - self._last_change)
        if seconds >= 1:
            self._settle(now)
            for _ in range(seconds):
                rate += max(MIN_STEP, rate / 100)
            if self.max_rps is not None:
                rate = min(rate, self.max_rps)
            self.rate = rate
            self._last_change += seconds
        return rate

    def _settle(self, now: float) -> None:
        """Bank the tokens earned at the old rate before the rate changes."""
        if self.rate is not None:
            self._tokens = min(1.0, self._tokens + (now - self._last) * self.rate)
        else:
            self._tokens = 1.0
        self._last = now


def split_budget(max_rps: float | None, workers: int) -> float | None:
    """Each of ``workers`` processes' share of a job's ``max_rps``, so the job as a whole keeps it."""
    if max_rps is None:
        return None
    return max_rps / max(1, workers)
