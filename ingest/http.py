"""The HTTP layer every target shares: one aiohttp session, streamed file bodies, and the translation
of transport failures into ``ingest.errors`` (done once, here).

Platform-specific envelopes and error codes are decoded by each target; this module only knows HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import IO, Any

import aiohttp
from aiohttp.payload import AsyncIterablePayload
from pydantic_core import from_json
from yarl import URL

from ingest import _failpoints
from ingest.errors import IngestError, SourceFileError, TransientError, connection_failed
from ingest.models import FileItem
from ingest.ratelimit import RequestBudget
from ingest.sources.reader import PREFETCH_MAX, BodyStream, LocalStream, fetch_small, open_body, open_local

__all__ = ["FileBody", "HttpClient", "HttpReply", "one_line", "open_checked", "parse_retry_after"]

DEFAULT_CHUNK_SIZE = 1024 * 1024


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); ``None`` if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import datetime as _dt

    return max(0.0, (when - _dt.datetime.now(_dt.UTC)).total_seconds())


def one_line(text: str, limit: int = 300) -> str:
    """A platform's message on one line, white space folded and cut to ``limit``, for our error messages."""
    return " ".join(text.split())[:limit]


def open_checked(item: FileItem) -> IO[bytes]:
    """Open a local source file for sending, turning every OS failure into a one-line ``SourceFileError``
    (symlink-safe and pinned to the walk's file: ``ingest.sources.reader.open_local``)."""
    return open_local(item)


class FileBody(AsyncIterablePayload):
    """A file streamed as a request body (or one multipart part) in fixed-size chunks.

    Its size is declared up front, so requests carry ``Content-Length`` like curl's do. The body is a
    ``BodyStream`` (``ingest.sources.reader``): a local file is opened here, read and md5-hashed in a
    worker thread; a bucket object is opened (a GET conditioned on its ETag) when the first chunk is
    wanted and streamed through, one chunk in memory. If the body is shorter or longer than the walk
    said, the send is aborted with ``SourceFileError``: a truncated or mixed body must never reach the
    platform under that name. One ``FileBody`` is good for one send: retries build a new one.
    """

    def __init__(
        self,
        item: FileItem,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        on_bytes: Callable[[int], None] | None = None,
        content_type: str = "application/octet-stream",
        filename: str | None = None,
    ) -> None:
        self.item = item
        self.md5 = hashlib.md5(usedforsecurity=False)
        self._chunk_size = chunk_size
        self._on_bytes = on_bytes
        # A local file is opened now (a missing one fails before any request); a remote one when read.
        self._stream: BodyStream | None = LocalStream(item, open_local(item)) if item.origin is None else None
        self._closed = False
        #: A small remote body fetched ahead (``ingest.sources.reader.PREFETCH_MAX``).
        self._ahead: asyncio.Task[BodyStream] | None = None
        if item.origin is not None and item.size <= PREFETCH_MAX:
            try:
                self._ahead = asyncio.get_running_loop().create_task(fetch_small(item))
            except RuntimeError:
                pass  # no running asyncio loop: open it when read
        #: Set when the body made the send fail: the file itself (changed, unreadable:
        #: ``SourceFileError``) or its store (``TransientError``), not the platform's network.
        self.failure: IngestError | None = None
        super().__init__(self._chunks(), content_type=content_type, filename=filename)
        self._size = item.size

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._read():
                yield chunk
        except (SourceFileError, TransientError) as exc:
            self.failure = exc
            raise

    async def _read(self) -> AsyncIterator[bytes]:
        item = self.item
        if self._stream is None and not self._closed:
            self._stream = await (self._ahead if self._ahead is not None else open_body(item))
        stream = self._stream
        if stream is None:
            return
        sent = 0
        try:
            while True:
                want = min(self._chunk_size, item.size - sent + 1)  # +1 notices a file that grew
                chunk = await stream.read(want, (self.md5,))
                if not chunk:
                    break
                sent += len(chunk)
                if sent > item.size:
                    raise SourceFileError(item.rel_path, "file grew while being sent; rerun to send it")
                if self._on_bytes is not None:
                    self._on_bytes(len(chunk))
                yield chunk
                _failpoints.failpoint("mid-body")
                if len(chunk) < want:
                    break  # a stream comes back short only at its end: no need to ask again
            if sent != item.size:
                raise SourceFileError(item.rel_path, "file shrank while being sent; rerun to send it")
        finally:
            await stream.aclose()

    def close_now(self) -> None:
        """Release the file or connection of a body that will not be sent (any more): called after
        every send, finished or not."""
        self._closed = True
        if self._stream is not None:
            self._stream.close_now()
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            if not ahead.done():
                ahead.cancel()
            elif not ahead.cancelled() and ahead.exception() is None:
                ahead.result().close_now()

    @property
    def hexdigest(self) -> str:
        return self.md5.hexdigest()


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]
    body: Any  # decoded JSON, or the text when the body is not JSON

    @property
    def envelope(self) -> dict[str, Any]:
        """The body when it is a JSON object (every platform's envelope is one), else ``{}``."""
        return self.body if isinstance(self.body, dict) else {}

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))


class HttpClient:
    """One pooled aiohttp session for one platform endpoint.

    ``headers`` may hold secrets: they are sent, never logged or put in messages. Connection-level
    failures become ``TransientError`` naming the endpoint and the operation; HTTP statuses are left
    to the caller, who knows the platform's envelope. With a ``budget`` (``ingest.ratelimit``), every
    request sent, each retry included, first waits for its token, and every answer's status adapts it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connections: int = 64,
        connect_timeout: float | None = None,
        read_timeout: float = 300.0,
        budget: RequestBudget | None = None,
    ) -> None:
        """``connect_timeout``: by default 30 s, or ``read_timeout`` if shorter (``--request-timeout``)."""
        connect_timeout = min(30.0, read_timeout) if connect_timeout is None else connect_timeout
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers or {})
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._budget = budget

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=self._connections)
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=connector,
                # Bodies are ours to stream; never let aiohttp buffer a response body we did not ask for.
                auto_decompress=True,
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str | int] | None = None,
        json_body: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        file_bodies: Sequence[FileBody] = (),
        encoded_path: bool = False,
    ) -> HttpReply:
        """Send one request; return status, headers and the decoded body.

        ``what`` names the operation in error messages (``upload of docs/a.pdf``); ``file_bodies``
        are the streamed files inside ``data``, consulted when the send fails. ``encoded_path``: ``path``
        is already percent-encoded and goes out exactly as given (a signed path must not be requoted).
        """
        session = self._ensure_session()
        url: str | URL = URL(self.base_url + path, encoded=True) if encoded_path else self.base_url + path
        body: Any = data
        req_headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body, ensure_ascii=False).encode()
            req_headers.setdefault("Content-Type", "application/json")
        if self._budget is not None:
            # Before the connection is taken from the pool: a request waiting its turn holds none.
            await self._budget.take()
        try:
            async with session.request(method, url, params=params, data=body, headers=req_headers) as resp:
                raw = await _read_reply(resp, what)
                status, resp_headers = resp.status, dict(resp.headers)
            if self._budget is not None:
                self._budget.answered(status)  # 429s slow the whole run down, not just this request
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # A source file that failed mid-body surfaces as a connection error; report the file.
            for body in file_bodies:
                if body.failure is not None:
                    raise body.failure from None
            raise connection_failed(what, self.base_url, _describe(exc, self._timeout)) from exc
        try:
            decoded: Any = _loads(raw) if raw else None
        except ValueError:
            decoded = raw[:500].decode("utf-8", "replace")
        return HttpReply(status, resp_headers, decoded)

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


#: Platform replies are JSON envelopes; anything larger is not one, and is not held in memory.
MAX_REPLY_BYTES = 16 * 1024 * 1024


def _loads(raw: bytes) -> Any:
    """JSON by pydantic-core's parser: about 3x faster than ``json.loads`` on an envelope, 1.4x on a page of
    100 tasks (a reply is parsed per request). What it refuses and ``json.loads`` reads (a lone surrogate
    escape) is read by ``json.loads``, so no reply reads differently. Raises ``ValueError``."""
    try:
        return from_json(raw)
    except ValueError:
        return json.loads(raw)


async def _read_reply(resp: aiohttp.ClientResponse, what: str) -> bytes:
    if resp.content_length is not None and resp.content_length <= MAX_REPLY_BYTES:
        return await resp.read()  # one call for the usual small envelope, not a chunk iterator
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_REPLY_BYTES:
            raise TransientError(f"{what}: the reply is larger than {MAX_REPLY_BYTES} bytes; not an API answer")
    return bytes(body)


def _describe(exc: BaseException, timeout: aiohttp.ClientTimeout) -> str:
    """A short, secret-free description of a transport error."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"no connection within {timeout.connect:g}s (--request-timeout)"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout.sock_read:g}s (--request-timeout)"
    text = str(exc) or type(exc).__name__
    # aiohttp messages can be long; the first line is the useful part.
    return text.splitlines()[0][:200]
