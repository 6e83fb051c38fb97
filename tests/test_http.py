"""``HttpClient``: how a reply's body is read and decoded, against a real server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from ingest import http
from ingest.emulators.kit.server import serve_in_background
from ingest.errors import TransientError
from ingest.http import HttpClient

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def answering(body: bytes, *, chunked: bool = False) -> AsyncIterator[HttpClient]:
    """A client of a server whose every ``GET /`` answers ``body`` (with a Content-Length, or chunked)."""

    async def reply(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", reply)
    async with serve_in_background(app) as url:
        client = HttpClient(url)
        try:
            yield client
        finally:
            await client.aclose()


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_json_reply_is_decoded_whether_or_not_its_length_is_given(chunked: bool) -> None:
    async with answering(b'{"code": "OK", "data": {"n": 12345678901234567890123}}', chunked=chunked) as client:
        reply = await client.request("GET", "/", what="asking")
    assert reply.body == {"code": "OK", "data": {"n": 12345678901234567890123}}


async def test_json_the_fast_parser_refuses_reads_as_the_standard_library_reads_it() -> None:
    """A lone surrogate escape is JSON that pydantic-core refuses and ``json.loads`` accepts: still read."""
    async with answering(b'{"msg": "\\ud800"}') as client:
        reply = await client.request("GET", "/", what="asking")
    assert reply.body == {"msg": "\ud800"}


async def test_a_reply_that_is_not_json_is_kept_as_text() -> None:
    async with answering(b"<html>bad gateway</html>") as client:
        reply = await client.request("GET", "/", what="asking")
    assert reply.body == "<html>bad gateway</html>"


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_reply_too_big_for_an_api_answer_is_refused(chunked: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "MAX_REPLY_BYTES", 1000)
    async with answering(b"[" + b"1," * 1000 + b"1]", chunked=chunked) as client:
        with pytest.raises(TransientError, match="asking: the reply is larger than 1000 bytes"):
            await client.request("GET", "/", what="asking")
