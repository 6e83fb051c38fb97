"""The staging store's requests, signed here (AWS Signature Version 4, service ``s3``) and sent through
``ingest.http.HttpClient``: the bucket check, single PUTs, multipart uploads and presigned GET URLs.

Why not aiobotocore: its request machinery (event hooks, endpoint rules, the user agent, serialising and
parsing through the service model) cost ~4 ms of CPU per PUT, most of the client's CPU per small file,
and importing it and creating one S3 client grew every VikingDB run by ~25 MiB of memory (peak 90 MiB
for a 1 GiB file, against 80 allowed: benchmarks/README.md, Issue 11 items 9 and 15). Each call here
is one header block and a body. aiobotocore stays for what this module does not send
(``StagingStore.locate`` says which: ``botostore``), imported only then.

The signature is what botocore's ``S3SigV4Auth`` (``S3SigV4QueryAuth`` for presigned URLs) computes
for the same request (``tests/test_s3put.py`` checks both against botocore): the canonical URI is the
path as sent (each key segment percent-encoded once, ``/`` kept), the canonical query its parameters
sorted and encoded, the signed headers ``host``, ``content-md5``, ``x-amz-*`` (metadata included), and
the payload hash is ``UNSIGNED-PAYLOAD`` over https (as botocore does for S3, so TOS accepts it) or the
body's sha256 over plain http. ``Content-MD5`` makes the store reject a body damaged in transit either
way. The secret key is used for the HMAC and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import os
import re
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape

import anyio
from aiohttp.payload import AsyncIterablePayload

from ingest import _failpoints
from ingest.errors import ErrorRules, IngestError, SourceFileError, classify
from ingest.http import HttpClient, HttpReply
from ingest.platforms.viking.signing import format_x_date, sha256_hex, x_date_now

__all__ = ["UNSIGNED_PAYLOAD", "FileRange", "S3Bucket", "query_string", "sign_s3"]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: What ``HttpClient`` keeps of a reply that is not JSON (``ingest/http.py``, ``HttpClient.request``):
#: an S3 reply is XML, so the ``UploadId`` of a ``CreateMultipartUpload`` must come within it.
REPLY_KEPT = 500
#: Room kept in that reply for the XML around the key and for the upload id (moto's are 58 characters,
#: AWS's up to ~150, TOS's 32): a key that leaves less is uploaded in parts by aiobotocore.
_REPLY_OVERHEAD = 150 + 200
#: Bodies bigger than this are hashed off the event loop (sha256 of an 8 MiB part: ~20 ms).
_HASH_IN_THREAD = 256 * 1024
#: Bodies bigger than this are handed to aiohttp in slices of this size (``_Slices``).
_SLICE = 1024 * 1024

_CODE = re.compile(r"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
_UPLOAD_ID = re.compile(r"<UploadId>([^<]+)</UploadId>")


def _strip_default_port(host: str, scheme: str) -> str:
    name, sep, port = host.rpartition(":")
    default = {"http": "80", "https": "443"}.get(scheme)
    return name if sep and "]" not in port and port == default else host


@functools.lru_cache(maxsize=8)
def _signing_key(secret_key: str, date: str, region: str) -> bytes:
    """Four chained HMACs, the same for every request of a day: cached (half a signature's cost)."""
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def query_string(params: Sequence[tuple[str, str]]) -> str:
    """SigV4's canonical query: sorted by name, names and values percent-encoded (``-_.~`` kept)."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params))


def _signature(secret_key: str, region: str, amz_date: str, canonical: str) -> tuple[str, str]:
    """``(signature, credential scope)`` of a canonical request."""
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, sha256_hex(canonical.encode())])
    key = _signing_key(secret_key, amz_date[:8], region)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), scope


def sign_s3(
    method: str,
    path: str,
    headers: Mapping[str, str],
    payload_hash: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    query: Sequence[tuple[str, str]] = (),
    now: dt.datetime | None = None,
) -> dict[str, str]:
    """The headers to add: ``x-amz-date``, ``x-amz-content-sha256`` and ``Authorization``. Every header in
    ``headers`` is signed (include ``host``); ``path`` is signed as given (already encoded)."""
    amz_date = format_x_date(now) if now is not None else x_date_now()
    added = {"x-amz-date": amz_date, "x-amz-content-sha256": payload_hash}
    chosen = {name.lower(): " ".join(value.split()) for name, value in {**headers, **added}.items()}
    names = sorted(chosen)
    signed = ";".join(names)
    canonical = "\n".join(
        [method.upper(), path, query_string(query), "".join(f"{n}:{chosen[n]}\n" for n in names), signed, payload_hash]
    )
    signature, scope = _signature(secret_key, region, amz_date, canonical)
    added["Authorization"] = (
        f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return added


class S3Bucket:
    """One staging bucket reached through ``http`` (its base URL: ``https://bucket.host``, or the endpoint
    with path-style addressing). Every call raises what ``errors`` (``bucket_errors`` for the bucket
    check) gives a refusal's S3 code, as aiobotocore's ``ClientError`` did in ``botostore``."""

    def __init__(
        self,
        http: HttpClient,
        *,
        host: str,
        root: str,
        bucket: str,
        endpoint: str,
        access_key: str,
        secret_key: str,
        region: str,
        errors: ErrorRules,
        bucket_errors: ErrorRules,
    ) -> None:
        self.http = http
        self._host = host
        self._root = root
        self._bucket = bucket
        self._endpoint = endpoint
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self._errors = errors
        self._bucket_errors = bucket_errors
        self._https = http.base_url.startswith("https:")

    def __repr__(self) -> str:
        return f"S3Bucket({self._bucket!r} at {self._endpoint!r})"

    @staticmethod
    def locate(endpoint: str, bucket: str, *, path_style: bool) -> tuple[str, str, str] | None:
        """``(base URL, host header, root path)`` (root: ``/bucket`` path-style, else empty), or ``None``
        (left to aiobotocore) for an endpoint that is more than scheme and host."""
        parts = urlsplit(endpoint.rstrip("/"))
        if parts.scheme not in ("http", "https") or parts.path or parts.query or "@" in parts.netloc:
            return None
        host = parts.netloc if path_style else f"{bucket}.{parts.netloc}"
        host = _strip_default_port(host, parts.scheme)
        return f"{parts.scheme}://{host}", host, quote(f"/{bucket}", safe="/~") if path_style else ""

    def takes(self, key: str, *, multipart: bool = False) -> bool:
        """Whether this client sends ``key``'s requests: not for a key an URL would rewrite (a ``.`` or
        ``..`` segment), nor in parts for one too long for ``CreateMultipartUpload``'s kept reply."""
        if any(segment in (".", "..") for segment in key.split("/")):
            return False
        return not multipart or len(escape(key)) + len(escape(self._bucket)) + _REPLY_OVERHEAD <= REPLY_KEPT

    def _path(self, key: str) -> str:
        return self._root + quote(f"/{key}", safe="/~")

    @property
    def signs_payload(self) -> bool:
        """Whether a body's sha256 is part of the signature (plain http); over https it is ``UNSIGNED-PAYLOAD``."""
        return not self._https

    async def _payload_hash(self, body: bytes | memoryview | FileRange) -> str:
        if self._https:
            return UNSIGNED_PAYLOAD
        if isinstance(body, FileRange):
            if body.sha256 is None:
                raise ValueError("a FileRange sent over plain http needs its sha256 (S3Bucket.signs_payload)")
            return body.sha256
        if len(body) > _HASH_IN_THREAD:  # hashlib lets go of the GIL: the loop goes on meanwhile
            return await anyio.to_thread.run_sync(_sha256, body)
        return _sha256(body)

    async def send(
        self,
        method: str,
        path: str,
        *,
        what: str,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        body: bytes | memoryview | FileRange = b"",
        errors: ErrorRules | None = None,
    ) -> HttpReply:
        """One signed request; a reply that is not 2xx (or a 200 carrying an ``<Error>``, which S3 may
        send for ``CompleteMultipartUpload``) becomes the error ``errors`` names. A ``FileRange`` body is
        streamed from its file; if the file turns out changed, its ``SourceFileError`` is raised."""
        sent = {"host": self._host, **(headers or {})}
        if body or method in ("PUT", "POST"):
            sent["content-length"] = str(len(body))
        payload_hash = await self._payload_hash(body)
        signed = sign_s3(
            method,
            path,
            sent,
            payload_hash,
            access_key=self._access_key,
            secret_key=self._secret_key,
            region=self._region,
            query=query,
        )
        # botocore sends a parameter without a value (``?uploads``) bare; it is signed as ``uploads=``.
        sent_query = "&".join(k if v == "" else f"{k}={quote(v, safe='-_.~')}" for k, v in query)
        data: bytes | memoryview | _Slices | _RangePayload | None = None
        if isinstance(body, FileRange):
            data = _RangePayload(body)
        elif body or method in ("PUT", "POST"):
            data = body if len(body) <= _SLICE else _Slices(body)
        try:
            reply = await self.http.request(
                method,
                path + (f"?{sent_query}" if sent_query else ""),
                what=what,
                data=data,
                headers={**sent, **signed},
                encoded_path=True,
            )
        except IngestError:
            # A body cut short because its file changed surfaces as a connection error: report the file.
            if isinstance(data, _RangePayload) and data.failure is not None:
                raise data.failure from None
            raise
        text = reply.body if isinstance(reply.body, str) else ""
        if 200 <= reply.status < 300 and "<Error>" not in text:
            return reply
        code_match, message_match = _CODE.search(text), _MESSAGE.search(text)
        code = code_match.group(1) if code_match else str(reply.status)
        message = " ".join((message_match.group(1) if message_match else "").split())[:200]
        error: IngestError = classify(
            errors or self._errors,
            what=what,
            status=reply.status,
            code=code,
            detail=f"{code}: {message}" if message else code,
            endpoint=self._endpoint,
            bucket=self._bucket,
            retry_after=reply.retry_after,
        )
        raise error

    # ----- the calls staging makes ------------------------------------------------------------------

    async def head_bucket(self, what: str) -> None:
        await self.send("HEAD", self._root or "/", what=what, errors=self._bucket_errors)

    async def put_object(
        self, key: str, body: bytes | memoryview, *, content_md5: str, metadata: Mapping[str, str], what: str
    ) -> None:
        """``PUT`` ``body`` (held whole: one part, at most ``part_size``)."""
        await self.send("PUT", self._path(key), what=what, headers=_put_headers(content_md5, metadata), body=body)

    async def create_multipart(self, key: str, *, metadata: Mapping[str, str], what: str) -> str:
        """``CreateMultipartUpload``: the upload id."""
        reply = await self.send(
            "POST", self._path(key), what=what, query=[("uploads", "")], headers=_meta_headers(metadata)
        )
        found = _UPLOAD_ID.search(reply.body if isinstance(reply.body, str) else "")
        if found is None:
            raise classify(
                self._errors,
                what=what,
                status=reply.status,
                code="NoUploadId",
                detail="its CreateMultipartUpload reply named no UploadId",
                endpoint=self._endpoint,
                bucket=self._bucket,
            )
        return found.group(1)

    async def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        body: bytes | memoryview | FileRange,
        *,
        content_md5: str,
        what: str,
    ) -> str:
        """``UploadPart`` (the part held in memory, or streamed from its file): the part's ETag (as the
        store quoted it)."""
        reply = await self.send(
            "PUT",
            self._path(key),
            what=what,
            query=[("partNumber", str(number)), ("uploadId", upload_id)],
            headers={"content-md5": content_md5},
            body=body,
        )
        etag = reply.headers.get("ETag") or reply.headers.get("Etag")
        if not etag:
            raise classify(
                self._errors,
                what=what,
                status=reply.status,
                code="NoETag",
                detail=f"its UploadPart reply for part {number} carried no ETag",
                endpoint=self._endpoint,
                bucket=self._bucket,
            )
        return etag

    async def complete_multipart(self, key: str, upload_id: str, etags: Sequence[str], *, what: str) -> None:
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
            for n, etag in enumerate(etags, start=1)
        )
        body = f'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{parts}</CompleteMultipartUpload>'
        await self.send("POST", self._path(key), what=what, query=[("uploadId", upload_id)], body=body.encode())

    async def abort_multipart(self, key: str, upload_id: str, *, what: str) -> None:
        await self.send("DELETE", self._path(key), what=what, query=[("uploadId", upload_id)])

    def presign_get(self, key: str, expires: int, *, now: dt.datetime | None = None) -> str:
        """A GET URL for ``key`` valid ``expires`` seconds, signed in its query (no request is made)."""
        amz_date = format_x_date(now) if now is not None else x_date_now()
        scope = f"{amz_date[:8]}/{self._region}/s3/aws4_request"
        query = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{self._access_key}/{scope}"),
            ("X-Amz-Date", amz_date),
            ("X-Amz-Expires", str(expires)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        path = self._path(key)
        canonical = "\n".join(["GET", path, query_string(query), f"host:{self._host}\n", "host", UNSIGNED_PAYLOAD])
        signature, _ = _signature(self._secret_key, self._region, amz_date, canonical)
        return f"{self.http.base_url}{path}?{query_string(query)}&X-Amz-Signature={signature}"


class _Slices(AsyncIterablePayload):
    """A body held in memory (a part), sent as slices of its one buffer: never copied whole, and with
    ``Content-Length`` declared. Handed whole, aiohttp warns that bytes over 1 MiB may block the loop,
    and as ``io.BytesIO`` it would copy it out 64 KiB at a time and close it (no retry from it)."""

    def __init__(self, body: bytes | memoryview) -> None:
        view = memoryview(body)
        # aiohttp writes any bytes-like chunk to the transport; its annotation says bytes.
        super().__init__(cast("AsyncIterator[bytes]", _slices(view)), content_type="application/octet-stream")
        self._size = len(view)  # as FileBody does: a known size makes aiohttp send Content-Length


async def _slices(view: memoryview) -> AsyncIterator[memoryview]:
    for start in range(0, len(view), _SLICE):
        yield view[start : start + _SLICE]


@dataclass(frozen=True, slots=True)
class FileRange:
    """A byte range of an open file, sent as a body streamed from the file in ``chunk_size`` reads (each
    send reads it again: a retry needs nothing kept in memory), never held whole.

    Its hashes were taken by an earlier pass over the same bytes (``Content-MD5`` and, over http, the
    signed ``sha256`` must be in the headers before the body). The bytes sent are checked against that
    pass as they go (``crc32``, ~5x cheaper than a second md5): if the file changed in between, the body
    is cut short before its last byte, so the store never receives a complete part that differs from
    what was hashed, whether or not it checks ``Content-MD5`` (moto does not), and the send fails with
    ``SourceFileError``.
    """

    fd: int
    offset: int
    size: int
    #: The range's CRC-32 as hashed before.
    crc32: int
    #: The range's sha256 (hex) as hashed before: the payload hash over plain http (else ``None``).
    sha256: str | None
    #: The file, for the error (``FileItem.rel_path``).
    name: str
    chunk_size: int = 1024 * 1024

    def __len__(self) -> int:
        return self.size


def _pread(fd: int, n: int, offset: int, crc: int) -> tuple[bytes, int]:
    chunk = os.pread(fd, n, offset)
    return chunk, zlib.crc32(chunk, crc)  # zlib lets go of the GIL on big buffers: off the loop


class _RangePayload(AsyncIterablePayload):
    """A ``FileRange`` as an aiohttp body (one per send), with ``Content-Length`` declared; ``failure``
    holds the ``SourceFileError`` that cut it short, if any."""

    def __init__(self, part: FileRange) -> None:
        self.failure: SourceFileError | None = None
        super().__init__(self._chunks(part), content_type="application/octet-stream")
        self._size = part.size

    async def _chunks(self, part: FileRange) -> AsyncIterator[bytes]:
        # A descriptor of its own: aiohttp may leave this body's last read finishing in its thread after the
        # request is over (a reply that came early, a cancelled send), when the upload has closed ``fd``.
        fd = os.dup(part.fd)
        try:
            sent = crc = 0
            while sent < part.size:
                want = min(part.chunk_size, part.size - sent)
                try:
                    chunk, crc = await anyio.to_thread.run_sync(_pread, fd, want, part.offset + sent, crc)
                except OSError as exc:
                    self.failure = SourceFileError(part.name, f"read failed: {exc.strerror or exc}")
                    raise self.failure from None
                sent += len(chunk)
                if len(chunk) < want:
                    self.failure = SourceFileError(part.name, "file shrank while being sent; rerun to send it")
                    raise self.failure
                if sent == part.size and crc != part.crc32:
                    # Before the last byte goes: the store must not get a whole part unlike the hashed one.
                    self.failure = SourceFileError(part.name, "file changed while being sent; rerun to send it")
                    raise self.failure
                yield chunk
                _failpoints.failpoint("mid-body")
        finally:
            os.close(fd)


def _sha256(body: bytes | memoryview) -> str:
    return hashlib.sha256(body).hexdigest()  # a memoryview is hashed in place, never copied


def _meta_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    return {f"x-amz-meta-{name.lower()}": value for name, value in metadata.items()}


def _put_headers(content_md5: str, metadata: Mapping[str, str]) -> dict[str, str]:
    return {"content-md5": content_md5, **_meta_headers(metadata)}
