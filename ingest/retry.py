"""The attempt loop for requests: exponential backoff with full jitter, ``Retry-After``, and an
adaptive concurrency limit that halves on rate limiting and creeps back up on success."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import anyio

from ingest.errors import RateLimitedError, TransientError

if TYPE_CHECKING:
    from ingest.engine.breaker import Breaker

__all__ = ["AdaptiveLimiter", "RetryPolicy", "retrying"]

T = TypeVar("T")
log = logging.getLogger("ingest.retry")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one request is repeated after transient failures."""

    attempts: int = 8
    initial_delay: float = 0.2
    max_delay: float = 30.0
    #: Never wait longer than this for one ``Retry-After``, whatever the platform says.
    max_retry_after: float = 120.0

    def delay(self, attempt: int, error: TransientError, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        if error.retry_after is not None:
            # The platform's word beats our guess; a little jitter keeps workers from waking together.
            return min(error.retry_after, self.max_retry_after) + rng.uniform(0, 0.1)
        # Full jitter (AWS architecture blog): uniform over [0, min(cap, base * 2^n)].
        return rng.uniform(0, min(self.max_delay, self.initial_delay * 2 ** (attempt - 1)))


class AdaptiveLimiter:
    """A concurrency limit that adapts to the platform: AIMD on rate-limit signals.

    Starts at ``maximum``. A rate-limit error halves the limit (at most once per ``cooldown`` seconds,
    so a burst of 429s from requests already in flight counts once); every ``grow_after``
    consecutive successes raise it by one, back up to ``maximum``.
    """

    def __init__(self, maximum: int, *, grow_after: int = 20, cooldown: float = 1.0) -> None:
        self.maximum = maximum
        self._limiter = anyio.CapacityLimiter(maximum)
        self._grow_after = grow_after
        self._cooldown = cooldown
        self._successes = 0
        self._last_cut = 0.0

    @property
    def current(self) -> int:
        return int(self._limiter.total_tokens)

    async def __aenter__(self) -> None:
        try:
            # A free slot is taken without a checkpoint: anyio's acquire() yields to the loop even then,
            # a loop round per request. Waiters queued first still go first (it refuses past them).
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            await self._limiter.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._limiter.release()

    def on_success(self) -> None:
        self._successes += 1
        if self._successes >= self._grow_after and self.current < self.maximum:
            self._successes = 0
            self._limiter.total_tokens = self.current + 1

    def on_rate_limited(self) -> None:
        self._successes = 0
        now = time.monotonic()
        if now - self._last_cut < self._cooldown:
            return
        self._last_cut = now
        new = max(1, self.current // 2)
        if new != self.current:
            log.info("rate limited: lowering concurrency from %d to %d", self.current, new)
            self._limiter.total_tokens = new


async def retrying(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
    limiter: AdaptiveLimiter | None = None,
    rng: random.Random | None = None,
    on_retry: Callable[[int, TransientError, float], None] | None = None,
    breaker: Breaker | None = None,
) -> T:
    """Run ``call`` until it succeeds, a non-retryable error occurs, or attempts run out.

    ``call`` must build a fresh request on every invocation (a streamed body cannot be replayed).
    ``what`` names the operation in log lines. The last ``TransientError`` is re-raised when attempts
    run out.
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        attempt += 1
        if breaker is not None:
            breaker.check()  # the platform has been unreachable too long: send nothing more
        try:
            if limiter is None:
                result = await call()
            else:
                async with limiter:
                    result = await call()
        except TransientError as exc:
            if limiter is not None and isinstance(exc, RateLimitedError):
                limiter.on_rate_limited()
            if breaker is not None:
                breaker.failure(exc)
                breaker.check()
            if attempt >= policy.attempts:
                raise
            delay = policy.delay(attempt, exc, rng)
            # ``detail`` is the error without the operation: ``what`` names it once.
            log.info("%s: %s; retry %d/%d in %.2fs", what, exc.detail, attempt, policy.attempts - 1, delay)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await anyio.sleep(delay)
        else:
            if limiter is not None:
                limiter.on_success()
            if breaker is not None:
                breaker.success()
            return result
