"""Receiving a multipart upload body, part by part, for the emulators whose upload API is a form (MOI, Keyue).

What each part means, and how a file part is staged, is the platform's; this module only walks the
body strictly and reads small text fields through a cap. Every refusal is built by the caller's
``fail`` (a ``common.Refusal``), since each platform codes it in its own envelope.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiofiles
import anyio
from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from ingest.emulators.kit.common import ApiError, Refusal, short

__all__ = [
    "READ_CHUNK",
    "WRITE_BUFFER",
    "PartNames",
    "Received",
    "Staged",
    "media_type",
    "part_names",
    "read_text_part",
    "receive_form",
    "receive_part",
    "receive_parts",
    "stage_part",
]

#: Bytes per read from a multipart part; also the unit md5 is updated with.
READ_CHUNK = 1 << 16
#: Staged bytes are written once this much is buffered: few thread hops, flat memory per upload.
WRITE_BUFFER = 1 << 20


#: ``form-data; name="…"`` with an optional plain ``filename="…"``: what clients almost always send.
_SIMPLE_DISPOSITION = re.compile(r'form-data; name="([^"\\]*)"(?:; filename="([^"\\]*)")?\Z')

PartNames = tuple[str | None, str | None]


def part_names(part: BodyPartReader) -> PartNames:
    """A part's form field name and file name, from its Content-Disposition.

    The common simple header is read with one regex; anything else (escapes, ``filename*``, odd
    spacing) goes to aiohttp's full parser. Same answers, but aiohttp's parser costs ~0.15 ms a call,
    which at thousands of parts a second was a third of the emulator's CPU.
    """
    header = part.headers.get(hdrs.CONTENT_DISPOSITION, "")
    if m := _SIMPLE_DISPOSITION.match(header):
        return m.group(1), m.group(2)
    _, params = parse_content_disposition(header)
    return params.get("name"), content_disposition_filename(params, "filename")


#: A Content-Type whose media type is plain tokens: the media type is the text before the first ``;``.
_PLAIN_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def media_type(request: web.Request) -> str:
    """The request's media type, lower case, as ``request.content_type`` says it.

    ``request.content_type`` runs the ``email`` package's header parser, ~0.4 ms a call, and a form's
    header differs per request (its boundary), so nothing caches it: that was 15 % of the emulator's CPU
    per small upload. A media type of plain tokens (what every client sends) is read directly; anything
    else (comments, quoting, odd spacing) still goes to aiohttp's parser.
    """
    raw = request.headers.get(hdrs.CONTENT_TYPE, "")
    media = raw.partition(";")[0].strip(" \t")
    if _PLAIN_MEDIA_TYPE.match(media):
        return media.lower()
    return request.content_type


async def receive_parts(
    request: web.Request, on_part: Callable[[BodyPartReader], Awaitable[None]], fail: Refusal
) -> None:
    """Hand every part of a ``multipart/form-data`` body to ``on_part``, in order.

    ``on_part`` runs inside the parsing guard: a malformed body noticed while it reads a part is
    refused as malformed too, whichever part was being read.
    """
    if media_type(request) != "multipart/form-data":
        raise fail(f"request body must be multipart/form-data, not {short(request.content_type)!r}")
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, MultipartReader):
                raise fail("nested multipart parts are not supported")
            await on_part(part)
    except (ValueError, HttpProcessingError) as exc:
        raise fail(f"malformed multipart body: {exc}") from exc
    except AssertionError as exc:
        # aiohttp's form reader takes a first part named ``_charset_`` as the form's charset (RFC 7578
        # 4.6) and reads it with ``read_chunk(32)``, which asserts when the boundary is longer than 30
        # bytes (curl's is 46): the client's form, answered as such rather than as an internal error.
        raise fail(f"multipart body could not be read: {exc}") from exc


async def receive_form(
    request: web.Request,
    fields: dict[str, str],
    on_other: Callable[[BodyPartReader, str | None, str | None], Awaitable[None]],
    *,
    text_fields: frozenset[str],
    text_limit: int,
    fail: Refusal,
) -> None:
    """Walk a form (see ``receive_parts``): each of ``text_fields`` is read once, through the cap, into
    ``fields``; every other part goes to ``on_other`` with its field and file names, to stage a file
    or refuse an unknown field in the platform's words."""

    async def on_part(part: BodyPartReader) -> None:
        name, filename = part_names(part)
        for what, value in (("field name", name), ("file name", filename)):
            if value is not None and not _is_utf8(value):
                raise fail(f"a part's {what} is not valid UTF-8")
        if name is not None and name in text_fields:
            if name in fields:
                raise fail(f"form field {name} is given twice")
            fields[name] = await read_text_part(part, name, text_limit, fail)
        else:
            await on_other(part, name, filename)

    await receive_parts(request, on_part, fail)


def _is_utf8(text: str) -> bool:
    """False for a header value that held bytes that are not UTF-8 (aiohttp keeps them as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


#: A staged file part: its path, size and md5 (hex).
Staged = tuple[Path, int, str]
#: A received file part: its body (staged on disk, or kept in memory when small), size and md5 (hex).
Received = tuple[Path | bytes, int, str]


async def stage_part(
    part: BodyPartReader,
    staging_dir: Path,
    staged: list[Path],
    *,
    limit: int | None,
    too_large: Callable[[], ApiError],
    observe: Callable[[bytes], None] | None = None,
) -> Staged:
    """Stream a file part to a new file in ``staging_dir``, hashing as it goes; never holds more than a buffer.

    The path is added to ``staged`` before the first byte is written, so the caller cleans up even a
    half-written file. ``too_large`` is raised once the part grows past ``limit`` bytes; ``observe``
    sees every chunk (Keyue counts characters with it).
    """
    body, size, md5 = await receive_part(
        part, staging_dir, staged, limit=limit, too_large=too_large, observe=observe, keep_up_to=-1
    )
    assert isinstance(body, Path)
    return body, size, md5


async def receive_part(
    part: BodyPartReader,
    staging_dir: Path,
    staged: list[Path],
    *,
    limit: int | None,
    too_large: Callable[[], ApiError],
    observe: Callable[[bytes], None] | None = None,
    keep_up_to: int,
) -> Received:
    """``stage_part``, except that a part of at most ``keep_up_to`` bytes is returned as bytes, unwritten.

    A small body written to staging and renamed into place cost a thread hop, a uuid, a create, a
    rename and an unlink attempt: more CPU than the rest of a small upload. Kept in memory it is
    written once, where it belongs. The caller bounds what a request keeps (``keep_up_to`` is its
    remaining allowance); a part that outgrows it is staged like any other, so memory stays bounded
    per request whatever the body's size. ``keep_up_to=-1`` keeps nothing (even an empty part is staged).
    """
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    buffer = bytearray()
    path: Path | None = None
    out: Any = None  # opened at the first full buffer: a small part is written in one thread hop
    try:
        while chunk := await part.read_chunk(READ_CHUNK):
            size += len(chunk)
            if limit is not None and size > limit:
                raise too_large()
            digest.update(chunk)
            if observe is not None:
                observe(chunk)
            buffer += chunk
            if len(buffer) >= WRITE_BUFFER:
                if out is None:
                    path = _staging_path(staging_dir, staged)
                    out = await aiofiles.open(path, "wb")
                await out.write(bytes(buffer))
                buffer.clear()
        if out is None:
            if size <= keep_up_to:
                return bytes(buffer), size, digest.hexdigest()
            path = _staging_path(staging_dir, staged)
            await anyio.to_thread.run_sync(path.write_bytes, bytes(buffer))
        elif buffer:
            await out.write(bytes(buffer))
    finally:
        if out is not None:
            await out.close()
    assert path is not None
    return path, size, digest.hexdigest()


def _staging_path(staging_dir: Path, staged: list[Path]) -> Path:
    """A new staging file's path, added to ``staged`` before anything is written to it."""
    path = staging_dir / f"{uuid.uuid4().hex}.part"
    staged.append(path)
    return path
