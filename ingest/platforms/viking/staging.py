"""Staging source files (local files, or objects of a source bucket: ``ingest.sources.reader``) in an
S3-compatible store (TOS on Volcengine) through aiobotocore, so that VikingDB's ``doc/add`` can read
them by ``tos_path`` or by a presigned URL.

A file up to ``part_size`` goes up in one PUT, signed and sent by ``s3put`` (aiobotocore's per-call CPU
was most of the client's per small file); a larger one as a multipart upload, one part at a time.
Either way the file is read in ``chunk_size`` pieces (off the event loop, hashing as it goes) into one
part buffer, so memory per upload is bounded by ``part_size`` whatever the file size. Each PUT carries
``Content-MD5``, so the store itself rejects a body damaged in transit. A file that changes size while
being read fails with ``SourceFileError``; a multipart upload that fails is aborted.

aiobotocore is the ``viking`` extra: it is imported when a ``Staging`` opens, never by ``import ingest``.
botocore's flexible checksums are limited to "when required": S3-compatible stores do not all accept them.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import io
from collections.abc import Awaitable, Callable, Container, Mapping
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import anyio

from ingest import _failpoints
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
    classify,
    connection_failed,
)
from ingest.http import HttpClient
from ingest.models import FileItem
from ingest.platforms.viking.s3put import S3Object, put_object
from ingest.smallfiles import is_small_local, read_small
from ingest.sources.reader import BodyStream, open_body

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

__all__ = ["BUCKET_CHECK_ERRORS", "STAGING_ERRORS", "Staged", "Staging", "StagingSettings"]

T = TypeVar("T")


def _staging_errors(missing_bucket_status: Container[int]) -> ErrorRules:
    """The S3 error codes (``ClientError``'s ``Error.Code``, or the HTTP status when a reply had no body)."""
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
#: The same for the bucket check: ``head_bucket`` answers a missing bucket with a bare 404 (no body to name it).
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
    """One S3 client for one staging bucket. ``open`` checks the bucket; ``aclose`` releases the client."""

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
        self._connections = connections
        self._read_timeout = read_timeout
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None
        #: Single PUTs go through our own signed request (``s3put``); one pooled session per base URL.
        self._puts: dict[str, HttpClient] = {}

    def describe(self) -> str:
        return f"{self.settings.bucket}/{self.settings.prefix} at {self.settings.endpoint}"

    async def open(self) -> None:
        """Create the client and check that the bucket exists and the credentials reach it."""
        if self._client is None:
            try:
                # botocore's import takes a few hundred ms of CPU: off the loop, other checks go on meanwhile.
                await anyio.to_thread.run_sync(importlib.import_module, "aiobotocore.session")
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session
            except ImportError:
                raise ConfigError(
                    "the viking target stages files through aiobotocore: pip install 'ingest[viking]'"
                ) from None
            s = self.settings
            config = AioConfig(
                s3={"addressing_style": "path" if s.path_style else "virtual"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"total_max_attempts": 3, "mode": "standard"},
                max_pool_connections=self._connections,
                connect_timeout=30,
                read_timeout=self._read_timeout,
            )
            self._client = await self._stack.enter_async_context(
                get_session().create_client(
                    "s3",
                    endpoint_url=s.endpoint,
                    region_name=s.region,
                    aws_access_key_id=s.access_key,
                    aws_secret_access_key=s.secret_key,
                    config=config,
                )
            )
        bucket = self.settings.bucket
        await self._guard(
            f"checking staging bucket {bucket}", lambda: self.client.head_bucket(Bucket=bucket), BUCKET_CHECK_ERRORS
        )

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("the staging store is not open")
        return self._client

    async def aclose(self) -> None:
        self._client = None
        puts, self._puts = self._puts, {}
        for http in puts.values():
            await http.aclose()
        await self._stack.aclose()

    async def put(self, item: FileItem, key: str, metadata: Mapping[str, str]) -> Staged:
        """Upload ``item`` to ``key`` with user ``metadata``; returns the whole file's md5."""
        if is_small_local(item):
            # One thread hop reads, checks and hashes it (chunked reads took one hop each, and one more
            # to see the end).
            [(data, whole_md5)] = await anyio.to_thread.run_sync(read_small, [item])
            if self._on_bytes is not None:
                self._on_bytes(item.size)
            await self._put_one(item, key, io.BytesIO(data), base64.b64encode(whole_md5).decode(), metadata)
            return Staged(key, item.size, whole_md5.hex())
        digest = hashlib.md5(usedforsecurity=False)
        f = await open_body(item)  # a local file or a bucket object: read the same way
        try:
            if item.size <= self.settings.part_size:
                body, md5 = await self._read_part(f, item, item.size, digest, last=True)
                await self._put_one(item, key, body, md5, metadata)
            else:
                await self._put_multipart(f, item, key, metadata, digest)
        finally:
            await f.aclose()
        return Staged(key, item.size, digest.hexdigest())

    async def _put_one(self, item: FileItem, key: str, body: io.BytesIO, md5: str, metadata: Mapping[str, str]) -> None:
        what = f"staging {item.rel_path}"
        s = self.settings
        where = S3Object.locate(s.endpoint, s.bucket, key, path_style=s.path_style)
        if where is None:
            await self._guard(
                what,
                lambda: self.client.put_object(
                    Bucket=s.bucket,
                    Key=key,
                    Body=body,
                    ContentLength=item.size,
                    ContentMD5=md5,
                    Metadata=dict(metadata),
                ),
            )
            return
        base, host, path = where
        http = self._puts.get(base)
        if http is None:
            http = self._puts[base] = HttpClient(base, connections=self._connections, read_timeout=self._read_timeout)
        await put_object(
            S3Object(http, host, path),
            body.getbuffer(),
            content_md5=md5,
            metadata=metadata,
            access_key=s.access_key,
            secret_key=s.secret_key,
            region=s.region,
            what=what,
            errors=STAGING_ERRORS,
            endpoint=s.endpoint,
            bucket=s.bucket,
        )

    async def _put_multipart(
        self, f: BodyStream, item: FileItem, key: str, metadata: Mapping[str, str], digest: Any
    ) -> None:
        what = f"staging {item.rel_path}"
        bucket = self.settings.bucket
        created = await self._guard(
            what, lambda: self.client.create_multipart_upload(Bucket=bucket, Key=key, Metadata=dict(metadata))
        )
        upload_id = created["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            offset = 0
            while offset < item.size:
                want = min(self.settings.part_size, item.size - offset)
                offset += want
                body, md5 = await self._read_part(f, item, want, digest, last=offset >= item.size)
                number = len(parts) + 1
                reply = await self._guard(what, self._upload_part(key, upload_id, number, body, want, md5))
                del body  # one part in memory at a time
                parts.append({"ETag": reply["ETag"], "PartNumber": number})
            await self._guard(
                what,
                lambda: self.client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
        except BaseException:
            # Leave no half-uploaded parts behind (they cost storage); best effort, even when cancelled.
            with anyio.CancelScope(shield=True), suppress(Exception):
                await self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    def _upload_part(
        self, key: str, upload_id: str, number: int, body: io.BytesIO, size: int, md5: str
    ) -> Callable[[], Awaitable[Any]]:
        def call() -> Awaitable[Any]:
            body.seek(0)  # botocore may send it again after a transient failure
            return self.client.upload_part(
                Bucket=self.settings.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=size,
                ContentMD5=md5,
            )

        return call

    async def _read_part(
        self, f: BodyStream, item: FileItem, want: int, digest: Any, *, last: bool
    ) -> tuple[io.BytesIO, str]:
        """Read ``want`` bytes in chunks: the part (a buffer sent as is, never copied) and its base64 md5
        (for ``Content-MD5``). On the last part, also check that the file did not grow."""
        part_digest = hashlib.md5(usedforsecurity=False)
        buffer = io.BytesIO()
        got = 0
        while got < want:
            n = min(self._chunk_size, want - got)
            chunk = await f.read(n, (digest, part_digest))
            if not chunk:
                raise SourceFileError(item.rel_path, "file shrank while being sent; rerun to send it")
            buffer.write(chunk)
            got += len(chunk)
            if self._on_bytes is not None:
                self._on_bytes(len(chunk))
            _failpoints.failpoint("mid-body")
        if last:
            if await f.read(1):
                raise SourceFileError(item.rel_path, "file grew while being sent; rerun to send it")
        buffer.seek(0)
        return buffer, base64.b64encode(part_digest.digest()).decode()

    async def presign(self, key: str, expires: int) -> str:
        """A GET URL for ``key`` valid ``expires`` seconds (signed locally: no request is made)."""
        url: str = await self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.settings.bucket, "Key": key}, ExpiresIn=expires
        )
        return url

    async def _guard(self, what: str, call: Callable[[], Awaitable[T]], errors: ErrorRules = STAGING_ERRORS) -> T:
        """Run one S3 call, translating botocore's errors into ``ingest.errors`` (``errors`` for its replies)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        try:
            return await call()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            code = str(error.get("Code") or status)
            message = " ".join(str(error.get("Message") or "").split())[:200]
            detail = f"{code}: {message}" if message else code
            raise classify(
                errors,
                what=what,
                status=status,
                code=code,
                detail=detail,
                endpoint=self.settings.endpoint,
                bucket=self.settings.bucket,
            ) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise ConfigError(
                "the staging store needs an access key pair; set VOLC_ACCESSKEY / VOLC_SECRETKEY"
            ) from None
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            where = f"the staging store {self.settings.endpoint}"
            raise connection_failed(what, where, type(exc).__name__) from None
