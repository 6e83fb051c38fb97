"""Issue 13 item 3 (second half): a stalled client cannot hold an emulator's connection forever.

Raw sockets against a real MOI emulator on 127.0.0.1, with short limits set through its config. "Closed"
is read as the server's end of the stream; every wait is bounded by a generous ``fail_after``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.abc import SocketStream

from ingest.emulators import emulator_specs
from ingest.emulators.kit.server import serve_in_background
from ingest.emulators.moi import MoiEmulatorConfig, create_moi_app
from tests.moi_fixtures import eventually

pytestmark = pytest.mark.anyio

BOUNDARY = "slowBoundary"
#: Upper bound for "the server closed it": far above any limit the tests set, so a loaded box still passes.
CLOSED_WITHIN = 20.0


@asynccontextmanager
async def moi(tmp_path: Path, **limits: Any) -> AsyncIterator[tuple[str, int]]:
    config = MoiEmulatorConfig(data_dir=tmp_path / "moi", api_key="k", volumes=("1001",), **limits)
    async with serve_in_background(create_moi_app(config)) as url:
        _, port = url.removeprefix("http://").rsplit(":", 1)
        yield url, int(port)


async def read_until_closed(stream: SocketStream) -> bytes:
    """Everything the server sends until it closes the connection (fails the test if it never does)."""
    received = b""
    with anyio.fail_after(CLOSED_WITHIN):
        while True:
            try:
                received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return received


def upload_head(length: int) -> bytes:
    return (
        "POST /connectors/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nmoi-key: k\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def form_start(file_name: str) -> bytes:
    meta = json.dumps([{"filename": file_name, "path": file_name}])
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="VolumeID"\r\n\r\n1001\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="meta"\r\n\r\n{meta}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


FORM_END = f"\r\n--{BOUNDARY}--\r\n".encode()


async def stored_files(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url + "/_emulator/files") as r:
        return await r.json()


async def test_half_a_request_line_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    async with moi(tmp_path, header_timeout=0.5) as (_, port), await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(b"POST /connectors/upl")
        answer = await read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 408 "), answer


async def test_headers_trickled_past_the_header_timeout_are_closed_too(tmp_path: Path) -> None:
    """The limit is on the whole header block, not per byte: a slowloris that keeps sending is still cut off."""
    async with moi(tmp_path, header_timeout=1.0) as (_, port), await anyio.connect_tcp("127.0.0.1", port) as s:
        with anyio.fail_after(CLOSED_WITHIN):
            try:
                await s.send(b"GET /_emulator/stats HTTP/1.1\r\n")
                for i in range(1000):  # bounded: far more header lines than the timeout lets through
                    await s.send(f"X-Slow-{i}: y\r\n".encode())
                    await anyio.sleep(0.1)
            except (anyio.BrokenResourceError, ConnectionResetError, BrokenPipeError):
                pass
            else:
                pytest.fail("a trickled header block was never cut off")


async def test_a_stalled_2_gib_body_is_closed_after_the_idle_timeout_and_nothing_is_kept(tmp_path: Path) -> None:
    staging = tmp_path / "moi" / ".staging"
    async with moi(tmp_path, body_idle_timeout=0.5) as (url, port):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(upload_head(2 << 30) + form_start("big.bin"))
            # More than the emulator buffers in memory, so a staged file exists on disk when the body stalls.
            for _ in range(24):
                await s.send(b"x" * (1 << 16))
            answer = await read_until_closed(s)
        assert answer.startswith(b"HTTP/1.1 408 "), answer

        async def staging_is_empty() -> bool:  # the handler cleans up once the lost connection reaches it
            return not any(staging.iterdir())

        await eventually(staging_is_empty)
        assert await stored_files(url) == []


async def test_slow_connections_beyond_the_cap_are_closed_while_a_normal_request_gets_in(tmp_path: Path) -> None:
    cap, opened = 3, 7
    async with moi(tmp_path, max_slow_connections=cap, header_timeout=300.0) as (url, port):
        streams = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(opened)]
        try:
            for s in streams:
                await s.send(b"GET /_emulator/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            closed: list[bytes] = []
            excess_closed = anyio.Event()
            async with anyio.create_task_group() as tg:
                for s in streams:

                    async def watch(s: SocketStream = s) -> None:
                        with anyio.move_on_after(CLOSED_WITHIN / 2):
                            closed.append(await read_until_closed(s))
                            if len(closed) == opened - cap:
                                excess_closed.set()

                    tg.start_soon(watch)
                with anyio.fail_after(CLOSED_WITHIN):
                    await excess_closed.wait()
                # The cap is full of slow connections; a client that sends its request at once still gets in.
                async with aiohttp.ClientSession() as http, http.get(url + "/_emulator/stats") as r:
                    assert r.status == 200
                tg.cancel_scope.cancel()
            assert len(closed) == opened - cap, closed
            assert all(answer.startswith(b"HTTP/1.1 503 ") for answer in closed), closed
        finally:
            for s in streams:
                await s.aclose()


async def test_a_slow_but_progressing_upload_succeeds(tmp_path: Path) -> None:
    chunks = [b"y" * 1000] * 10
    body = form_start("slow.txt") + b"".join(chunks) + FORM_END
    async with moi(tmp_path, body_idle_timeout=2.0) as (url, port):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(upload_head(len(body)) + form_start("slow.txt"))
            for chunk in chunks:  # 10 x 0.4 s: twice the idle timeout in all, never a pause as long as it
                await anyio.sleep(0.4)
                await s.send(chunk)
            await s.send(FORM_END)
            answer = b""
            with anyio.fail_after(CLOSED_WITHIN):
                while b"\r\n\r\n" not in answer:
                    answer += await s.receive()
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert [(f["path"], f["size"]) for f in await stored_files(url)] == [("slow.txt", 10_000)]


@pytest.mark.parametrize("platform", sorted(emulator_specs()))
def test_every_emulator_takes_the_stall_flags(platform: str, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    emulator_specs()[platform].add_arguments(parser)
    limits = ["--header-timeout", "2.5", "--body-idle-timeout", "7", "--max-slow-connections", "9"]
    secrets = {
        "moi": ["--api-key", "k"],
        "keyue": ["--token", "t"],
        "viking": ["--access-key", "a", "--secret-key", "s"],
    }
    args = parser.parse_args(["--data-dir", str(tmp_path), *secrets[platform], *limits])
    assert (args.header_timeout, args.body_idle_timeout, args.max_slow_connections) == (2.5, 7.0, 9)
    help_text = parser.format_help()
    assert all(flag in help_text for flag in limits[::2])
