"""Staging source files (local files, or objects of a source bucket: ``ingest.sources.reader``) in an
S3-compatible store (TOS on Volcengine), so that VikingDB's ``doc/add`` can read them by ``tos_path`` or
by a presigned URL.

A file up to ``part_size`` goes up in one PUT (read and hashed once: its md5 is its part's); a larger
one as a multipart upload, aborted if it fails, each part retried up to three times. A local file's
parts are never held in memory: each part's byte range is read twice, once in a worker thread to hash it
(the file's md5 for the manifest, in file order; the part's md5 for ``Content-MD5``, which must be in
the headers before the body; its sha256 for the signature over plain http; a CRC-32), then streamed
from the file (``s3put.FileRange``), ``STREAMED_PARTS_IN_FLIGHT`` parts at once. The streamed bytes are
checked against the hashing pass as they go (the CRC-32): a file changed in between is cut off before
the store has the whole part and fails with ``SourceFileError``, as a changed file does everywhere
else; a retried part is read from the file again under the same check. A bucket object (read once, in
order) and an upload aiobotocore sends keep the parts in memory, ``PARTS_IN_FLIGHT`` at once, read in
``chunk_size`` pieces. Each PUT carries ``Content-MD5``, so the store itself rejects a body damaged in
transit. A file that changes size while being read fails with ``SourceFileError``.

The requests are signed and sent by ``s3put.S3Bucket`` through ``HttpClient``; ``botostore`` (aiobotocore,
the ``viking`` extra) is created only for what ``S3Bucket`` does not take (``S3Bucket.takes``), so a
usual run never imports botocore.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import zlib
from collections.abc import Awaitable, Callable, Container, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio

from ingest import _failpoints
from ingest._aio import first_leaf
from ingest.errors import (
    SERVER_STATUSES,
    AuthError,
    ConfigError,
    ErrorRules,
    PermanentError,
    RateLimitedError,
    Rule,
    SourceFileError,
    TransientError,
)
from ingest.formdata import READ_ON_LOOP_MAX
from ingest.http import HttpClient
from ingest.models import FileItem
from ingest.platforms.viking.botostore import BotoBucket
from ingest.platforms.viking.s3put import FileRange, S3Bucket
from ingest.retry import RetryPolicy, retrying
from ingest.smallfiles import is_small_local, read_small
from ingest.sources.reader import BodyStream, open_body, open_local_fd

__all__ = ["BUCKET_CHECK_ERRORS", "STAGING_ERRORS", "Staged", "Staging", "StagingSettings"]

#: Attempts per multipart request (as aiobotocore's ``total_max_attempts`` was): a part is in memory,
#: so repeating it is cheap, and sending the whole file again for one failed part is not.
PART_RETRY = RetryPolicy(attempts=3, initial_delay=0.5, max_delay=5.0)
#: Parts of one upload in memory at once (a bucket object's, or aiobotocore's): one sent while the next is
#: read and hashed (in a worker thread), so reading, hashing and sending overlap. One at a time, a 1 GiB
#: file went at half the speed of s3transfer's ten (benchmarks/README.md, "Issue 11", item 17); each part
#: is ``part_size`` bytes.
PARTS_IN_FLIGHT = 2
#: Parts of one upload sent at once when each is streamed from a local file (``Staging._put_streamed``): a
#: send holds one ``chunk_size`` read (and what the socket has not taken yet), not a part, so more go at
#: once for less memory: a 1 GiB file peaked at 60-68 MiB against 74-82 with two parts held
#: (benchmarks/README.md, "Issue 11", item 27, which also says why 6 and not 10 as s3transfer sends).
STREAMED_PARTS_IN_FLIGHT = 6

#: A part's body: in memory (``memoryview``) or a range streamed from its file (``FileRange``).
_Part = TypeVar("_Part")
_Body = TypeVar("_Body", contravariant=True)


class _UploadPart(Protocol[_Body]):
    """A store's ``upload_part``, for the bodies it takes."""

    def __call__(
        self, key: str, upload_id: str, number: int, body: _Body, *, content_md5: str, what: str
    ) -> Awaitable[str]: ...


def _staging_errors(missing_bucket_status: Container[int]) -> ErrorRules:
    """The S3 error codes (the ``<Code>`` of an error reply, or the HTTP status when a reply had no body)."""
    return ErrorRules(
        "the staging store",
        rows=(
            Rule(
                AuthError,
                "{what}: the staging store {endpoint} refused the credentials ({detail}); check the staging access"
                " key (by default the VikingDB one, VOLC_ACCESSKEY / VOLC_SECRETKEY)",
                status={403},
                code={
                    "AccessDenied",
                    "InvalidAccessKeyId",
                    "SignatureDoesNotMatch",
                    "AllAccessDisabled",
                    "InvalidToken",
                },
            ),
            Rule(
                ConfigError,
                "staging bucket {bucket} does not exist at {endpoint}; create it or fix --staging-bucket /"
                " --staging-endpoint",
                status=missing_bucket_status,
                code={"NoSuchBucket"},
            ),
            Rule(
                RateLimitedError,
                "{what}: the staging store {endpoint} is throttling ({detail})",
                status={429, 503},
                code={"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"},
            ),
            Rule(
                TransientError,
                "{what}: the staging store {endpoint} failed ({detail})",
                status=SERVER_STATUSES,
                code={"InternalError", "RequestTimeout", "ServiceUnavailable", "BadDigest", "NoSuchUpload"},
            ),
        ),
        otherwise=Rule(PermanentError, "{what}: the staging store {endpoint} refused it ({detail})"),
        needs_code=(),
    )


#: What an S3 call's ``ClientError`` becomes.
STAGING_ERRORS = _staging_errors(())
#: The same for the bucket check: ``HEAD`` on a missing bucket is a bare 404 (no body to name it).
BUCKET_CHECK_ERRORS = _staging_errors({404})


@dataclass(frozen=True, slots=True)
class StagingSettings:
    """Resolved staging settings (defaults applied, secrets as plain strings: never print this)."""

    endpoint: str
    bucket: str
    prefix: str
    region: str
    access_key: str
    secret_key: str
    path_style: bool
    part_size: int

    def __repr__(self) -> str:
        return f"StagingSettings(endpoint={self.endpoint!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"


@dataclass(frozen=True, slots=True)
class Staged:
    """A staged object: where it is and what was sent."""

    key: str
    size: int
    md5: str


class Staging:
    """The staging bucket's clients. ``open`` checks the bucket; ``aclose`` releases the connections."""

    def __init__(
        self,
        settings: StagingSettings,
        *,
        chunk_size: int = 1024 * 1024,
        on_bytes: Callable[[int], None] | None = None,
        connections: int = 64,
        read_timeout: float = 300.0,
    ) -> None:
        self.settings = settings
        self._chunk_size = chunk_size
        self._on_bytes = on_bytes
        s = settings
        self._boto = BotoBucket(
            endpoint=s.endpoint,
            bucket=s.bucket,
            region=s.region,
            access_key=s.access_key,
            secret_key=s.secret_key,
            path_style=s.path_style,
            connections=connections,
            read_timeout=read_timeout,
            errors=STAGING_ERRORS,
            bucket_errors=BUCKET_CHECK_ERRORS,
        )
        where = S3Bucket.locate(s.endpoint, s.bucket, path_style=s.path_style)
        #: ``None`` for an endpoint only aiobotocore reaches (``S3Bucket.locate``).
        self._signed = (
            None
            if where is None
            else S3Bucket(
                HttpClient(where[0], connections=connections, read_timeout=read_timeout),
                host=where[1],
                root=where[2],
                bucket=s.bucket,
                endpoint=s.endpoint,
                access_key=s.access_key,
                secret_key=s.secret_key,
                region=s.region,
                errors=STAGING_ERRORS,
                bucket_errors=BUCKET_CHECK_ERRORS,
            )
        )

    def describe(self) -> str:
        return f"{self.settings.bucket}/{self.settings.prefix} at {self.settings.endpoint}"

    async def open(self) -> None:
        """Check that the bucket exists and the credentials reach it."""
        store = await self._store(None)
        await store.head_bucket(f"checking staging bucket {self.settings.bucket}")

    async def _store(self, key: str | None, *, multipart: bool = False) -> S3Bucket | BotoBucket:
        """Who sends ``key``'s requests (the bucket's, for ``None``): ours, else aiobotocore, opened now."""
        if self._signed is not None and (key is None or self._signed.takes(key, multipart=multipart)):
            return self._signed
        await self._boto.open()
        return self._boto

    async def aclose(self) -> None:
        try:
            if self._signed is not None:
                await self._signed.http.aclose()
        finally:
            await self._boto.aclose()

    async def put(self, item: FileItem, key: str, metadata: Mapping[str, str]) -> Staged:
        """Upload ``item`` to ``key`` with user ``metadata``; returns the whole file's md5."""
        what = f"staging {item.rel_path}"
        if is_small_local(item):
            # Read, checked and hashed in one call (chunked reads took a thread hop each, and one more to
            # see the end); on the event loop up to READ_ON_LOOP_MAX, as a form's small files are: the
            # hop cost more than the read (benchmarks/README.md, "Issue 11", items 14 and 21).
            if item.size <= READ_ON_LOOP_MAX:
                [(data, whole_md5)] = read_small([item])
            else:
                [(data, whole_md5)] = await anyio.to_thread.run_sync(read_small, [item])
            if self._on_bytes is not None:
                self._on_bytes(item.size)
            store = await self._store(key)
            md5 = base64.b64encode(whole_md5).decode()
            await store.put_object(key, data, content_md5=md5, metadata=metadata, what=what)
            return Staged(key, item.size, whole_md5.hex())
        if item.size > self.settings.part_size and item.origin is None:
            store = await self._store(key, multipart=True)
            if isinstance(store, S3Bucket):
                return await self._put_streamed(store, item, key, metadata)
        f = await open_body(item)  # a local file or a bucket object: read the same way
        try:
            if item.size <= self.settings.part_size:
                # One part: its md5 is the file's, so one pass serves Content-MD5 and the manifest.
                body, part_md5 = await self._read_part(f, item, item.size, None, last=True)
                store = await self._store(key)
                md5 = base64.b64encode(part_md5).decode()
                await store.put_object(key, body, content_md5=md5, metadata=metadata, what=what)
                return Staged(key, item.size, part_md5.hex())
            digest = hashlib.md5(usedforsecurity=False)
            await self._put_multipart(f, item, key, metadata, digest)
        finally:
            await f.aclose()
        return Staged(key, item.size, digest.hexdigest())

    async def _put_streamed(self, store: S3Bucket, item: FileItem, key: str, metadata: Mapping[str, str]) -> Staged:
        """A local file in parts, none held in memory: each part's byte range is read twice from the file,
        once to hash it (in file order, feeding the whole file's md5 too), then streamed to the store
        (``s3put.FileRange``, checked against that pass as it goes), ``STREAMED_PARTS_IN_FLIGHT`` at once."""
        fd = open_local_fd(item)
        try:
            digest = hashlib.md5(usedforsecurity=False)

            async def next_part(offset: int, want: int) -> tuple[FileRange, bytes]:
                # Hashed only when it can be sent: the file has little time to change between the passes,
                # and the progress counts bytes about to go.
                hashed = await anyio.to_thread.run_sync(
                    _hash_range, fd, item, offset, want, digest, self._chunk_size, store.signs_payload
                )
                if self._on_bytes is not None:
                    self._on_bytes(want)
                return hashed

            await self._send_parts(store, store.upload_part, item, key, metadata, STREAMED_PARTS_IN_FLIGHT, next_part)
        finally:
            os.close(fd)  # every read is over: the parts' task group waited for its sends, each for its thread
        return Staged(key, item.size, digest.hexdigest())

    async def _put_multipart(
        self, f: BodyStream, item: FileItem, key: str, metadata: Mapping[str, str], digest: Any
    ) -> None:
        store = await self._store(key, multipart=True)

        async def next_part(offset: int, want: int) -> tuple[memoryview, bytes]:
            return await self._read_part(f, item, want, digest, last=offset + want >= item.size)

        # Taken before a part is read, given back once it is sent: at most PARTS_IN_FLIGHT parts in memory.
        await self._send_parts(store, store.upload_part, item, key, metadata, PARTS_IN_FLIGHT, next_part)

    async def _send_parts(
        self,
        store: S3Bucket | BotoBucket,
        upload_part: _UploadPart[_Part],
        item: FileItem,
        key: str,
        metadata: Mapping[str, str],
        in_flight: int,
        next_part: Callable[[int, int], Awaitable[tuple[_Part, bytes]]],
    ) -> None:
        """A multipart upload of ``item``: ``next_part(offset, size)`` gives each part's body and md5 digest,
        in file order, once one of ``in_flight`` send slots is free (a slot is given back once its part is
        sent); each part is retried on its own; the upload is completed in part order, or aborted on any
        failure, with the first error raised as itself."""
        what = f"staging {item.rel_path}"
        upload_id = await retrying(
            lambda: store.create_multipart(key, metadata=metadata, what=what), PART_RETRY, what=what
        )
        etags: dict[int, str] = {}
        slots = anyio.Semaphore(in_flight)

        async def send_part(number: int, body: _Part, md5: str) -> None:
            send = functools.partial(upload_part, key, upload_id, number, body, content_md5=md5, what=what)
            try:
                etags[number] = await retrying(send, PART_RETRY, what=f"{what}, part {number}")
            finally:
                slots.release()

        try:
            try:
                async with anyio.create_task_group() as parts:
                    offset = number = 0
                    while offset < item.size:
                        await slots.acquire()
                        want = min(self.settings.part_size, item.size - offset)
                        try:
                            body, md5 = await next_part(offset, want)
                        except BaseException:
                            slots.release()
                            raise
                        offset += want
                        number += 1
                        parts.start_soon(send_part, number, body, base64.b64encode(md5).decode())
                        del body  # the part's only reference is now its send's
            except BaseExceptionGroup as group:
                raise first_leaf(group) from None  # the error itself, as one part at a time raised it
            ordered = [etags[n] for n in range(1, number + 1)]
            await retrying(lambda: store.complete_multipart(key, upload_id, ordered, what=what), PART_RETRY, what=what)
        except BaseException:
            # Leave no half-uploaded parts behind (they cost storage); best effort, even when cancelled.
            with anyio.CancelScope(shield=True), suppress(Exception):
                await store.abort_multipart(key, upload_id, what=what)
            raise

    async def _read_part(
        self, f: BodyStream, item: FileItem, want: int, digest: Any | None, *, last: bool
    ) -> tuple[memoryview, bytes]:
        """Read ``want`` bytes in chunks, hashed into ``digest`` (the whole file's md5, if one is kept
        besides the part's): the part (a buffer sent as is, never copied) and its md5 digest (for
        ``Content-MD5``). On the last part, also check that the file did not grow."""
        part_digest = hashlib.md5(usedforsecurity=False)
        digests = (part_digest,) if digest is None else (digest, part_digest)
        # Allocated once at its final size: a growing BytesIO copied itself as it doubled.
        buffer = memoryview(bytearray(want))
        got = 0
        while got < want:
            n = min(self._chunk_size, want - got)
            chunk = await f.read(n, digests)
            if not chunk:
                raise SourceFileError(item.rel_path, "file shrank while being sent; rerun to send it")
            buffer[got : got + len(chunk)] = chunk
            got += len(chunk)
            if self._on_bytes is not None:
                self._on_bytes(len(chunk))
            _failpoints.failpoint("mid-body")
        if last:
            if await f.read(1):
                raise SourceFileError(item.rel_path, "file grew while being sent; rerun to send it")
        return buffer, part_digest.digest()

    async def presign(self, key: str, expires: int) -> str:
        """A GET URL for ``key`` valid ``expires`` seconds (signed locally: no request is made)."""
        store = await self._store(key)
        if isinstance(store, S3Bucket):
            return store.presign_get(key, expires)
        return await store.presign_get(key, expires)


def _hash_range(
    fd: int, item: FileItem, offset: int, size: int, whole: Any, chunk_size: int, sha256: bool
) -> tuple[FileRange, bytes]:
    """The hashing pass over one part (in a worker thread; hashlib and zlib let go of the GIL on big
    buffers): the part as a ``FileRange`` to stream, and its md5 digest (``Content-MD5``). Feeds ``whole``
    (the file's md5: parts are hashed one after the other, in file order)."""
    md5 = hashlib.md5(usedforsecurity=False)
    signed = hashlib.sha256() if sha256 else None
    crc = done = 0
    while done < size:
        want = min(chunk_size, size - done)
        try:
            chunk = os.pread(fd, want, offset + done)
        except OSError as exc:
            raise SourceFileError(item.rel_path, f"read failed: {exc.strerror or exc}") from None
        if len(chunk) < want:
            raise SourceFileError(item.rel_path, "file shrank while being sent; rerun to send it")
        whole.update(chunk)
        md5.update(chunk)
        if signed is not None:
            signed.update(chunk)
        crc = zlib.crc32(chunk, crc)
        done += want
    if offset + size == item.size and os.pread(fd, 1, item.size):
        raise SourceFileError(item.rel_path, "file grew while being sent; rerun to send it")
    part = FileRange(
        fd, offset, size, crc, None if signed is None else signed.hexdigest(), item.rel_path, chunk_size=chunk_size
    )
    return part, md5.digest()
