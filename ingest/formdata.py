"""``multipart/form-data`` request bodies that carry files: the one way targets build an upload form.

A form whose files are all small local files is built in memory: one worker-thread hop opens, reads and
md5-hashes every file of the request (``ingest.smallfiles``), and the body goes out as one buffer (one
socket write or two). Files that add up to at most ``READ_ON_LOOP_MAX`` are read on the event loop
instead: a few syscalls, as the pre-send ``refresh`` makes on the loop, cost less than the hop (with
one file per request the hop, its self-pipe wake-up and its future were ~10 % of the loop's time).
Streaming each small file as its own ``FileBody`` part cost, per file, two or three thread hops and
four to thirteen socket writes (aiohttp writes each part's headers, body and CRLF separately): most
of the client's CPU per small file (benchmarks/README.md, "Client CPU per file"). Any other form (a
file larger than ``SMALL_FILE_MAX``, or a bucket object) streams every file through ``FileBody`` in
chunks, as before: a body is held whole only when it is small (``ingest.smallfiles``: memory stays
bounded).

Both ways check the same things: the file is the one the walk saw (``open_local``), and a file that
grew or shrank since is never sent under its name (``SourceFileError``). Both encode the parts as
aiohttp's ``FormData(quote_fields=False)`` does, so a platform sees the same request either way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import anyio

from ingest import _failpoints
from ingest.http import DEFAULT_CHUNK_SIZE, FileBody
from ingest.models import FileItem
from ingest.smallfiles import SMALL_FILE_MAX, is_small_local, read_small

__all__ = ["READ_ON_LOOP_MAX", "SMALL_FILE_MAX", "FilePart", "Form", "SentForm"]

#: A form's small files are read on the event loop when they add up to no more than this (bytes).
READ_ON_LOOP_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class FilePart:
    item: FileItem
    filename: str  # the part's label, already safe for a header (``ingest.multipart_names``)
    content_type: str


@dataclass(slots=True)
class SentForm:
    """What ``Form.body`` yields: the request's ``data`` and ``headers``, the streamed ``file_bodies``
    (for ``HttpClient.request`` to blame a file that broke its body); ``md5s`` (one per file, in
    order) once the body has been sent."""

    data: bytes | aiohttp.FormData
    headers: dict[str, str]
    file_bodies: list[FileBody]
    _md5s: list[str] = field(default_factory=list)

    @property
    def md5s(self) -> list[str]:
        return self._md5s or [body.hexdigest for body in self.file_bodies]


class Form:
    """Text fields and files, in the order they are added (the order they are sent)."""

    def __init__(self) -> None:
        self._parts: list[tuple[str, str | FilePart]] = []

    def add_field(self, name: str, value: str) -> None:
        self._parts.append((name, value))

    def add_file(self, name: str, item: FileItem, *, filename: str, content_type: str) -> None:
        self._parts.append((name, FilePart(item, filename, content_type)))

    @property
    def files(self) -> list[FilePart]:
        return [part for _, part in self._parts if isinstance(part, FilePart)]

    def in_memory(self) -> bool:
        """Whether every file is a small local file (read whole: see the module docstring)."""
        return all(is_small_local(f.item) for f in self.files)

    @asynccontextmanager
    async def body(
        self, *, chunk_size: int = DEFAULT_CHUNK_SIZE, on_bytes: Callable[[int], None] | None = None
    ) -> AsyncIterator[SentForm]:
        """The body for one send (a retry asks again: files are re-read, never reused)."""
        if self.in_memory():
            files = self.files
            items = [f.item for f in files]
            if sum(item.size for item in items) <= READ_ON_LOOP_MAX:
                contents = read_small(items)
            else:
                contents = await anyio.to_thread.run_sync(read_small, items)
            for f in files:
                if on_bytes is not None:
                    on_bytes(f.item.size)
                # The body leaves in one write, so there is no middle to crash in: a kill here leaves what a
                # kill mid-body leaves (the intent durable, nothing stored), which the crash tests need.
                _failpoints.failpoint("mid-body")
            boundary = uuid.uuid4().hex
            data = _encode(self._parts, [content for content, _ in contents], boundary)
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            yield SentForm(data, headers, [], [md5.hex() for _, md5 in contents])
            return
        form = aiohttp.FormData(quote_fields=False)
        bodies: list[FileBody] = []
        try:
            for name, part in self._parts:
                if isinstance(part, str):
                    form.add_field(name, part)
                    continue
                body = FileBody(
                    part.item,
                    chunk_size=chunk_size,
                    on_bytes=on_bytes,
                    content_type=part.content_type,
                    filename=part.filename,
                )
                bodies.append(body)
                form.add_field(name, body, filename=part.filename, content_type=part.content_type)
            yield SentForm(form, {}, bodies)
        finally:
            for body in bodies:
                body.close_now()


def _quote(value: str) -> str:
    """A ``Content-Disposition`` parameter as aiohttp quotes it with ``quote_fields=False``."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _encode(parts: Sequence[tuple[str, str | FilePart]], contents: Sequence[bytes], boundary: str) -> bytes:
    """The parts as aiohttp's ``MultipartWriter`` writes them (text fields as ``text/plain; charset=utf-8``);
    ``contents`` holds the files' bytes in the order of their parts."""
    dash = f"--{boundary}\r\n".encode()
    files = iter(contents)
    out = bytearray()
    for name, part in parts:
        out += dash
        if isinstance(part, str):
            out += b"Content-Type: text/plain; charset=utf-8\r\n"
            out += f"Content-Disposition: form-data; name={_quote(name)}\r\n\r\n".encode()
            out += part.encode()
        else:
            out += (
                f"Content-Type: {part.content_type}\r\nContent-Disposition: form-data; name={_quote(name)}; "
                f"filename={_quote(part.filename)}\r\n\r\n"
            ).encode()
            out += next(files)
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)
