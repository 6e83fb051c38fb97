"""Hand-offs between the engine's stages (``ingest.engine.handoff``): a file goes from planner to worker
to poller with no loop round while nobody has to wait, and waits in order when someone must."""

from __future__ import annotations

import anyio
import pytest

from ingest.engine.handoff import receive_now, send_now

pytestmark = pytest.mark.anyio


async def test_a_file_is_handed_between_stages_without_a_loop_round_when_nobody_waits() -> None:
    """A stream with room takes a file at once, and a ready file is received at once (anyio's ``send`` and
    ``receive`` yield to the loop first: three loop rounds per file); a full stream, or an empty one,
    waits until the other side moves."""
    send, receive = anyio.create_memory_object_stream[str](1)
    order: list[str] = []

    async def note(name: str) -> None:
        order.append(name)

    async with send, receive, anyio.create_task_group() as tg:
        tg.start_soon(note, "another task")
        await send_now(send, "a")
        order.append("sent a")
        order.append("received " + await receive_now(receive))

        async def send_two() -> None:
            for name in ("b", "c"):
                await send_now(send, name)
                order.append("sent " + name)

        tg.start_soon(send_two)
        await anyio.sleep(0.05)  # "c" waits: the stream holds "b"
        order.append("received " + await receive_now(receive))
        await anyio.sleep(0.05)
        order.append("received " + await receive_now(receive))

        async def receive_one() -> None:
            order.append("received " + await receive_now(receive))

        tg.start_soon(receive_one)
        await anyio.sleep(0.05)  # nothing queued: it waits
        order.append("sending d")
        await send_now(send, "d")
    assert order == [
        "sent a",
        "received a",
        "another task",
        "sent b",
        "received b",
        "sent c",
        "received c",
        "sending d",
        "received d",
    ]
    ended_send, ended = anyio.create_memory_object_stream[str](1)
    await ended_send.aclose()
    with ended, pytest.raises(anyio.EndOfStream):  # as ``receive`` ends a worker's loop
        await receive_now(ended)
