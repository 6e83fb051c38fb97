"""Small structured-concurrency helpers."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import anyio

__all__ = ["first_leaf", "run_concurrently", "run_with_signals"]

T = TypeVar("T")


def first_leaf(group: BaseExceptionGroup, prefer: tuple[type[BaseException], ...] = (Exception,)) -> BaseException:
    """The exception that best explains a failed task group: the first leaf of a preferred type."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                collect(sub)
        else:
            leaves.append(exc)

    collect(group)
    for kind in prefer:
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0]


async def run_concurrently(calls: Iterable[Callable[[], Awaitable[T]]], *, limit: int) -> list[T]:
    """Await every call, at most ``limit`` at once; results in completion order.

    The first failure cancels the rest and is raised as itself, not wrapped in an exception group, so
    callers (and retry loops) see the error type they expect.
    """
    limiter = anyio.CapacityLimiter(limit)
    results: list[T] = []

    async def one(call: Callable[[], Awaitable[T]]) -> None:
        async with limiter:
            results.append(await call())

    try:
        async with anyio.create_task_group() as tg:
            for call in calls:
                tg.start_soon(one, call)
    except BaseExceptionGroup as group:
        raise first_leaf(group) from None
    return results


async def run_with_signals(handle: bool, work: Awaitable[object]) -> bool:
    """Await ``work``; with ``handle``, SIGINT/SIGTERM cancel it cleanly (its cleanup runs). True if interrupted."""
    if not handle:
        await work
        return False
    interrupted = False
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        await work
        tg.cancel_scope.cancel()
    return interrupted
