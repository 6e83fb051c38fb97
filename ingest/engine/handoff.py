"""Handing one file from stage to stage without a loop round when nobody has to wait.

anyio's ``send`` and ``receive`` on a memory stream take a checkpoint first (``sleep(0)``: the task goes to
the back of the loop's queue) even when the stream has room or an item is ready. A file passes three
streams on its way (planner to worker, worker to poller, and the poller's intake), so that was three loop
rounds per file, ~3-5 µs each, for no waiting (benchmarks/README.md, Issue 11 item 24). These take the
item at once when they can and wait, in order behind those already waiting, only when they must.
Every stage awaits something else per file (its manifest write, its request), so none of them runs
away with the loop.
"""

from __future__ import annotations

from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["receive_now", "send_now"]

T = TypeVar("T")


async def send_now(stream: MemoryObjectSendStream[T], item: T) -> None:
    """``stream.send(item)``, with no checkpoint when the stream has room."""
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


async def receive_now(stream: MemoryObjectReceiveStream[T]) -> T:
    """``stream.receive()``, with no checkpoint when an item is ready. Raises ``EndOfStream`` as it does."""
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        return await stream.receive()
