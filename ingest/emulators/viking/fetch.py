"""How the VikingDB emulator gets a document's body: from an S3-compatible store (``add_type: tos``,
standing in for TOS) or from a URL (``add_type: url``, loopback only), streamed to disk with its md5.

Failures are ``FetchFailed`` with the ``failed_code`` the platform documents (10001 download timeout,
10002 download failed, 30001 file over size limit); the emulator records them on the document, as the
platform reports download problems through ``doc/info`` rather than by refusing ``doc/add``.
The S3 client (aiobotocore, the ``viking`` extra) is imported only when ``--tos-endpoint`` is given.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiofiles
import aiohttp

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = [
    "DOWNLOAD_FAILED",
    "DOWNLOAD_TIMEOUT",
    "FILE_TOO_LARGE",
    "FetchFailed",
    "Fetched",
    "TosReader",
    "fetch_url",
    "is_loopback_url",
    "source_path",
]

log = logging.getLogger(__name__)

# failed_code values (API-NOTES section 2, doc/info).
DOWNLOAD_TIMEOUT = 10001
DOWNLOAD_FAILED = 10002
FILE_TOO_LARGE = 30001

READ_CHUNK = 1 << 16
#: Object metadata holding the client's relative path (percent-encoded UTF-8), used by the test hook.
SOURCE_PATH_META = "source-path"


class FetchFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Fetched:
    size: int = 0
    md5: str = ""
    #: The object's user metadata (``x-amz-meta-*`` / ``x-tos-meta-*``), names lowercased.
    metadata: dict[str, str] = field(default_factory=dict)


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` is http(s) on this machine: the only place the emulator will fetch from."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def source_path(metadata: Mapping[str, str]) -> str | None:
    value = metadata.get(SOURCE_PATH_META)
    return unquote(value) if value else None


async def _write(chunks: AsyncIterator[bytes], dest: Path, limit: int | None) -> tuple[int, str]:
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    async with aiofiles.open(dest, "wb") as out:
        async for chunk in chunks:
            size += len(chunk)
            if limit is not None and size > limit:
                raise FetchFailed(FILE_TOO_LARGE, f"file over size limit ({limit} bytes)")
            digest.update(chunk)
            await out.write(chunk)
    return size, digest.hexdigest()


def _metadata(headers: Mapping[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        for prefix in ("x-amz-meta-", "x-tos-meta-"):
            if lowered.startswith(prefix):
                found[lowered.removeprefix(prefix)] = value
    return found


async def fetch_url(session: aiohttp.ClientSession, url: str, dest: Path, *, limit: int | None) -> Fetched:
    """GET ``url`` (already checked to be loopback) into ``dest``."""
    try:
        async with session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise FetchFailed(DOWNLOAD_FAILED, f"download failed: HTTP {response.status} from the url")

            async def chunks() -> AsyncIterator[bytes]:
                async for chunk in response.content.iter_chunked(READ_CHUNK):
                    yield chunk

            size, md5 = await _write(chunks(), dest, limit)
            return Fetched(size, md5, _metadata(response.headers))
    except TimeoutError:
        raise FetchFailed(DOWNLOAD_TIMEOUT, "download timeout") from None
    except aiohttp.ClientError as exc:
        raise FetchFailed(DOWNLOAD_FAILED, f"download failed: {type(exc).__name__}") from None


class TosReader:
    """Reads objects from the S3-compatible store given by ``--tos-endpoint``."""

    def __init__(self, endpoint: str, *, access_key: str, secret_key: str, region: str) -> None:
        self.endpoint = endpoint
        self._settings = {"access_key": access_key, "secret_key": secret_key, "region": region}
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None

    async def __aenter__(self) -> TosReader:
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError:
            raise RuntimeError(
                "ingest serve viking --tos-endpoint needs aiobotocore: pip install 'ingest[viking]'"
            ) from None
        config = AioConfig(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"total_max_attempts": 3, "mode": "standard"},
        )
        self._client = await self._stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=self._settings["region"],
                aws_access_key_id=self._settings["access_key"],
                aws_secret_access_key=self._settings["secret_key"],
                config=config,
            )
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._client = None
        await self._stack.aclose()

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("the TOS reader is not open")
        return self._client

    async def _guard(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await call()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code") or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            raise FetchFailed(DOWNLOAD_FAILED, f"download failed: {what}: {code}") from None
        except (BotoCoreError, aiohttp.ClientError) as exc:
            raise FetchFailed(DOWNLOAD_FAILED, f"download failed: {what}: {type(exc).__name__}") from None
        except TimeoutError:
            raise FetchFailed(DOWNLOAD_TIMEOUT, "download timeout") from None

    async def fetch(self, bucket: str, key: str, dest: Path, *, limit: int | None) -> Fetched:
        """GET ``bucket/key`` into ``dest``."""

        async def get() -> Fetched:
            reply = await self.client.get_object(Bucket=bucket, Key=key)
            async with reply["Body"] as body:

                async def chunks() -> AsyncIterator[bytes]:
                    while chunk := await body.read(READ_CHUNK):
                        yield chunk

                size, md5 = await _write(chunks(), dest, limit)
            return Fetched(size, md5, {k.lower(): v for k, v in reply.get("Metadata", {}).items()})

        result: Fetched = await self._guard(f"{bucket}/{key}", get)
        return result

    async def list_keys(self, bucket: str, prefix: str, *, limit: int) -> list[str]:
        """Object keys under ``prefix`` (a "directory" ``tos_path``), at most ``limit``."""

        async def listing() -> list[str]:
            keys: list[str] = []
            token: str | None = None
            while len(keys) < limit:
                kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
                if token:
                    kwargs["ContinuationToken"] = token
                page = await self.client.list_objects_v2(**kwargs)
                keys.extend(o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/"))
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    break
            return keys[:limit]

        result: list[str] = await self._guard(f"listing {bucket}/{prefix}", listing)
        return result
