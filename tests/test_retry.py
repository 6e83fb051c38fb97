"""The request attempt loop: what is retried, how long it waits, and how concurrency adapts."""

import random

import anyio
import pytest

from ingest.errors import PermanentError, RateLimitedError, TransientError
from ingest.retry import AdaptiveLimiter, RetryPolicy, retrying

pytestmark = pytest.mark.anyio


async def test_transient_errors_are_retried_until_success() -> None:
    """Connection errors and 5xx are repeated with a fresh call each time."""
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("boom")
        return "ok"

    assert await retrying(flaky, RetryPolicy(attempts=5, initial_delay=0.001), what="test") == "ok"
    assert calls == 3


async def test_permanent_errors_are_not_retried() -> None:
    """A 4xx is final: one call, the platform's message kept."""
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("bad field")

    with pytest.raises(PermanentError, match="bad field"):
        await retrying(refused, RetryPolicy(attempts=5), what="test")
    assert calls == 1


async def test_gives_up_after_the_attempt_budget() -> None:
    """The last transient error surfaces when attempts run out."""

    async def down() -> None:
        raise TransientError("down")

    with pytest.raises(TransientError, match="down"):
        await retrying(down, RetryPolicy(attempts=3, initial_delay=0.001), what="test")


def test_retry_after_is_honoured_and_backoff_is_full_jitter() -> None:
    """Retry-After wins over backoff; backoff is uniform in [0, base*2^n] capped."""
    policy = RetryPolicy(initial_delay=1.0, max_delay=8.0)
    rng = random.Random(1)
    assert 2.0 <= policy.delay(1, RateLimitedError("slow", retry_after=2.0), rng) <= 2.1
    delays = [policy.delay(10, TransientError("x"), rng) for _ in range(200)]
    assert max(delays) <= 8.0
    assert min(delays) < 1.0  # full jitter reaches down to zero


async def test_adaptive_limiter_halves_on_rate_limit_and_recovers() -> None:
    """AIMD: one halving per burst of 429s, +1 per run of successes, never above the maximum."""
    limiter = AdaptiveLimiter(16, grow_after=2, cooldown=60)
    limiter.on_rate_limited()
    limiter.on_rate_limited()  # same burst: counted once
    assert limiter.current == 8
    for _ in range(4):
        limiter.on_success()
    assert limiter.current == 10
    for _ in range(100):
        limiter.on_success()
    assert limiter.current == 16


async def test_rate_limited_calls_lower_the_limiter() -> None:
    """A 429 seen by retrying() reaches the limiter."""
    limiter = AdaptiveLimiter(8, cooldown=0)
    calls = 0

    async def throttled() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RateLimitedError("429", retry_after=0.0)
        return calls

    assert await retrying(throttled, RetryPolicy(), what="t", limiter=limiter) == 2
    assert limiter.current == 4
    with anyio.fail_after(1):
        async with limiter:
            pass


async def test_a_free_slot_of_the_limiter_is_taken_without_yielding() -> None:
    """A request that finds a free slot goes on at once (no loop round per request); one that finds the
    limit reached waits its turn, behind those already waiting."""
    limiter = AdaptiveLimiter(1)
    order: list[str] = []

    async def note(name: str) -> None:
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(note, "another task")
        async with limiter:
            order.append("took the free slot")

            async def wait_for_slot(name: str) -> None:
                async with limiter:
                    await note(name)

            tg.start_soon(wait_for_slot, "first waiter")
            await anyio.sleep(0.05)
            tg.start_soon(wait_for_slot, "second waiter")
            await anyio.sleep(0.05)
    assert order == ["took the free slot", "another task", "first waiter", "second waiter"]
