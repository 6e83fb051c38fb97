"""The staging calls through aiobotocore, for what ``s3put.S3Bucket`` does not send itself: an endpoint
that is more than scheme and host (a path, credentials in the URL), a key an URL would rewrite (a ``.``
or ``..`` segment), and the multipart upload of a key too long for the reply ``HttpClient`` keeps.

Created on first use, so a run that never needs it never imports botocore (~25 MiB and a few hundred
ms of CPU); aiobotocore is the ``viking`` extra. botocore's flexible checksums are limited to "when
required": S3-compatible stores do not all accept them. The methods match ``S3Bucket``'s, and so do
the errors: a ``ClientError`` becomes what ``errors`` gives its S3 code.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, TypeVar

import aiohttp
import anyio

from ingest.errors import ConfigError, ErrorRules, classify, connection_failed

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ["BotoBucket"]

T = TypeVar("T")


class BotoBucket:
    """One aiobotocore S3 client for the staging bucket, created by ``open``. ``repr`` leaves the keys out."""

    def __repr__(self) -> str:
        return f"BotoBucket({self._bucket!r} at {self._endpoint!r})"

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        region: str,
        access_key: str,
        secret_key: str,
        path_style: bool,
        connections: int,
        read_timeout: float,
        errors: ErrorRules,
        bucket_errors: ErrorRules,
    ) -> None:
        self._endpoint = endpoint
        self._bucket = bucket
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._path_style = path_style
        self._connections = connections
        self._read_timeout = read_timeout
        self._errors = errors
        self._bucket_errors = bucket_errors
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None

    async def open(self) -> None:
        if self._client is not None:
            return
        try:
            # botocore's import takes a few hundred ms of CPU: off the loop, other work goes on meanwhile.
            await anyio.to_thread.run_sync(importlib.import_module, "aiobotocore.session")
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError:
            raise ConfigError(
                f"staging in {self._endpoint} (an endpoint with a path, or a key with '.' segments) goes"
                " through aiobotocore: pip install 'ingest[viking]'"
            ) from None
        config = AioConfig(
            s3={"addressing_style": "path" if self._path_style else "virtual"},
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
                endpoint_url=self._endpoint,
                region_name=self._region,
                aws_access_key_id=self._access_key,
                aws_secret_access_key=self._secret_key,
                config=config,
            )
        )

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("the aiobotocore staging client is not open")
        return self._client

    async def aclose(self) -> None:
        self._client = None
        await self._stack.aclose()

    async def head_bucket(self, what: str) -> None:
        await self._guard(what, lambda: self.client.head_bucket(Bucket=self._bucket), self._bucket_errors)

    async def put_object(
        self, key: str, body: bytes | memoryview, *, content_md5: str, metadata: Mapping[str, str], what: str
    ) -> None:
        await self._guard(
            what,
            lambda: self.client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=bytes(body),
                ContentLength=len(body),
                ContentMD5=content_md5,
                Metadata=dict(metadata),
            ),
        )

    async def create_multipart(self, key: str, *, metadata: Mapping[str, str], what: str) -> str:
        created = await self._guard(
            what,
            lambda: self.client.create_multipart_upload(Bucket=self._bucket, Key=key, Metadata=dict(metadata)),
        )
        return created["UploadId"]

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: bytes | memoryview, *, content_md5: str, what: str
    ) -> str:
        reply = await self._guard(
            what,
            lambda: self.client.upload_part(
                Bucket=self._bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=bytes(body),
                ContentLength=len(body),
                ContentMD5=content_md5,
            ),
        )
        return reply["ETag"]

    async def complete_multipart(self, key: str, upload_id: str, etags: Sequence[str], *, what: str) -> None:
        parts = [{"ETag": etag, "PartNumber": n} for n, etag in enumerate(etags, start=1)]
        await self._guard(
            what,
            lambda: self.client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            ),
        )

    async def abort_multipart(self, key: str, upload_id: str, *, what: str) -> None:
        await self._guard(
            what, lambda: self.client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
        )

    async def presign_get(self, key: str, expires: int) -> str:
        url: str = await self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=expires
        )
        return url

    async def _guard(self, what: str, call: Callable[[], Awaitable[T]], errors: ErrorRules | None = None) -> T:
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
                errors or self._errors,
                what=what,
                status=status,
                code=code,
                detail=detail,
                endpoint=self._endpoint,
                bucket=self._bucket,
            ) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise ConfigError(
                "the staging store needs an access key pair; set VOLC_ACCESSKEY / VOLC_SECRETKEY"
            ) from None
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            where = f"the staging store {self._endpoint}"
            raise connection_failed(what, where, type(exc).__name__) from None
