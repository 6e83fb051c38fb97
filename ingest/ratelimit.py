"""The client-side request budget (``--max-rps``): one token bucket every platform request of a run
takes a token from, uploads, polls, lookups, deletes and every retry of them alike.

Platforms publish quotas as requests per second or minute per account; a run that stays under its
quota never sees a 429 and never pays for one (a rejected request still costs a round trip and a
``Retry-After`` wait). The bucket is taken at the one place every request passes through
(``ingest.http.HttpClient.request``), after the request is built and before a connection is asked for.

Design (the reservation form of a token bucket, as Go's ``golang.org/x/time/rate`` ``Reserve``):

- ``take`` reserves a slot synchronously, letting the token count go negative, and then sleeps once
  until its slot. Reservations are made in call order on the event loop, so waiting is first come,
  first served, with no queue object, no polling and no busy loop: one timer per waiting request.
- While requests are queued, each slot is one ``1/rate`` after the previous *slot*, not after the
  moment its sender woke up, so a late timer on a loaded machine costs no throughput.
- The burst is one token by default (rclone's ``--tpslimit-burst`` default): requests leave evenly
  spaced. A platform's own bucket may allow bursts of a second's worth, but one that enforces over a
  shorter window would reject a burst we thought allowed, and even spacing leaves the most room for
  network jitter to bunch requests up on the way (with a burst of ``b`` at ``rate`` under a server
  limit ``L`` with a one-second bucket, ``b + rate * jitter <= L`` must hold: ``b = 1`` tolerates
  about a second of jitter at 95 of 100 requests/s, ``b = 95`` only 50 ms).
- A waiter cancelled before its slot does not give its token back: later reservations were made
  after it, so handing it to the next caller could put two requests in one slot. Losing a slot
  only ever makes the run slower, never over budget.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["RequestBudget", "split_budget"]


class RequestBudget:
    """At most ``rate`` requests per second, ``burst`` of them at once after a quiet spell.

    ``clock`` and ``sleep`` are for tests (a fake clock); the defaults are the event loop's.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"a request budget needs a positive rate, got {rate}")
        if burst < 1:
            raise ValueError(f"a request budget needs a burst of at least 1, got {burst}")
        self.rate = float(rate)
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)  # a fresh bucket is full: the first requests need not wait
        self._last = clock()
        #: Requests that took a token, and those of them that had to wait for it (for the summary).
        self.taken = 0
        self.waited = 0

    def reserve(self) -> float:
        """Take a token now; return the seconds to wait before sending (0.0: send at once)."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1.0
        self.taken += 1
        if self._tokens >= 0:
            return 0.0
        self.waited += 1
        return -self._tokens / self.rate

    async def take(self) -> None:
        """Wait for this request's turn (first come, first served)."""
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)


def split_budget(max_rps: float | None, workers: int) -> float | None:
    """Each of ``workers`` processes' share of a job's ``max_rps``, so the job as a whole keeps it."""
    if max_rps is None:
        return None
    return max_rps / max(1, workers)
