"""Receiving a multipart upload body, part by part, for the emulators whose upload API is a form (MOI, Keyue).

What each part means, and how a file part is staged, is the platform's; this module only walks the
body strictly and reads small text fields through a cap. Every refusal is built by the caller's
``fail`` (a ``_common.Refusal``), since each platform codes it in its own envelope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ingest.emulators._common import Refusal, short

__all__ = ["READ_CHUNK", "WRITE_BUFFER", "read_text_part", "receive_parts"]

#: Bytes per read from a multipart part; also the unit md5 is updated with.
READ_CHUNK = 1 << 16
#: Staged bytes are written once this much is buffered: few thread hops, flat memory per upload.
WRITE_BUFFER = 1 << 20


async def receive_parts(
    request: web.Request, on_part: Callable[[BodyPartReader], Awaitable[None]], fail: Refusal
) -> None:
    """Hand every part of a ``multipart/form-data`` body to ``on_part``, in order.

    ``on_part`` runs inside the parsing guard: a malformed body noticed while it reads a part is
    refused as malformed too, whichever part was being read.
    """
    if request.content_type != "multipart/form-data":
        raise fail(f"request body must be multipart/form-data, not {short(request.content_type)!r}")
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, MultipartReader):
                raise fail("nested multipart parts are not supported")
            await on_part(part)
    except (ValueError, HttpProcessingError) as exc:
        raise fail(f"malformed multipart body: {exc}") from exc


async def read_text_part(part: BodyPartReader, name: str, limit: int, fail: Refusal) -> str:
    """A text form field as UTF-8, refused once it grows past ``limit`` bytes."""
    data = bytearray()
    while chunk := await part.read_chunk(READ_CHUNK):
        data += chunk
        if len(data) > limit:
            raise fail(f"form field {name} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise fail(f"form field {name} is not valid UTF-8") from None
