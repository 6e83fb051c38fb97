"""A bucket in any S3-compatible store (S3, OSS, TOS, MinIO, …) as a ``Source``: ``ingest run s3://bucket/prefix``.

Listing is ``ListObjectsV2``, one page of up to 1,000 keys at a time, pulled only as fast as the engine
takes files (never the whole bucket in memory). Keys come in the store's order (UTF-8 binary order),
so two listings of an unchanged bucket yield the same sequence. The path of an object is its key
without the prefix (``s3://b/docs`` and ``s3://b/docs/`` both mean the keys under ``docs/``), non-ASCII
included. Platforms refuse empty folder names, so an empty segment of a key (``a//b``, ``/a``) is
written ``%2F`` in its path (``a/%2F/b``, ``%2F/a``): the mapping is lossless, a path leads back to
exactly one key (``key_of``) with no lookup table, which ``retry-failed`` and the workers of a shared job
(they get paths from the manifest) rely on. A key with a segment that is literally ``%2F`` would read
back as another key: it fails alone, saying so (docs/sources.md says why this scheme). Keys ending
in ``/`` are "folder" markers some tools create: nothing to send, counted in ``passed_over``.
``--include``/``--exclude``/``--max-size`` and the hidden rule (a path segment starting with ``.``)
apply to paths of keys as to local paths.

The change token of an object (``FileItem.mtime_ns``, beside ``size``) is its LastModified in whole
seconds with a fingerprint of its ETag in the sub-second digits: a new ETag, a new size or a new
LastModified is a changed file for ``decide``, with no change to the manifest.

Bodies: ``FileItem.origin`` is a ``BucketObject``; opening it is a GET with ``If-Match: <ETag as
listed>``, so a retry (which opens again) never sends a newer version under the old token: an object
overwritten since the listing fails that file with a clear reason, as does one deleted since. The body
streams through in the engine's chunks (aiohttp's read buffer is bounded); nothing is written to disk.
``refresh`` does not ask the store again: the conditional GET is the check, at no extra request.

Why aiobotocore (not obstore): it is already the S3 client of VikingDB staging (one client stack, one
error translation, the typed stubs), it runs on the engine's asyncio loop with its own connection
pool, takes a custom endpoint, region, path-style addressing and the standard credential chain, and
supports conditional GETs. obstore's Rust core lists and reads faster, but the engine spends its
time on the platform's side, not here (see ``benchmarks/README.md``), and it would be a second
native dependency doing what aiobotocore already does.

Credentials: ``[source] access_key/secret_key`` (config file), else botocore's standard chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, …). They are
never stored, logged or shown.
"""

from __future__ import annotations

import functools
import importlib
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import anyio

from ingest.errors import ConfigError, SourceFileError, TransientError
from ingest.models import FileItem
from ingest.sources.base import Rejected
from ingest.sources.globs import GlobSet
from ingest.sources.local import WalkOptions, WalkStats

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from ingest.config import EngineConfig, SourceConfig

__all__ = [
    "EMPTY_SEGMENT",
    "BucketObject",
    "BucketSettings",
    "BucketSource",
    "change_token",
    "is_bucket_url",
    "key_of",
    "open_bucket_source",
    "parse_bucket_url",
]

T = TypeVar("T")

_URL = re.compile(r"^s3://([^/]+)(?:/(.*))?$", re.DOTALL)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")
#: Chunks at least this large are md5-hashed in a worker thread (hashlib releases the GIL).
HASH_IN_THREAD = 256 * 1024
PAGE_SIZE = 1000
#: How an empty segment of a key is written in its path (``a//b`` → ``a/%2F/b``): what a ``/`` is when
#: URL-encoded, so a reader sees where the extra slash was.
EMPTY_SEGMENT = "%2F"

#: The error codes of a HEAD for a key that does not exist (HEAD answers carry no body: just "404").
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})


def is_bucket_url(text: str | Path) -> bool:
    return isinstance(text, str) and text.startswith("s3://")


def parse_bucket_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix/")``; ``s3://bucket`` → ``("bucket", "")``."""
    m = _URL.match(url)
    if not m or not _BUCKET.match(m.group(1)):
        raise ConfigError(f"{url!r} is not a bucket URL; write s3://BUCKET or s3://BUCKET/PREFIX")
    prefix = (m.group(2) or "").lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return m.group(1), prefix


def path_of(raw: str) -> str:
    """The path of a key (``raw``: the key without the prefix, not a folder marker): empty segments
    written ``EMPTY_SEGMENT``. ``key_of`` undoes it for every key without a literal ``%2F`` segment."""
    if "//" not in raw and not raw.startswith("/"):
        return raw  # the usual key: its path as it is
    return "/".join(part or EMPTY_SEGMENT for part in raw.split("/"))


def key_of(rel_path: str) -> str:
    """The key (without the prefix) of a path: the one key whose ``path_of`` it is."""
    return "/".join("" if part == EMPTY_SEGMENT else part for part in rel_path.split("/"))


def change_token(last_modified: Any, etag: str) -> int:
    """LastModified in whole seconds (as both listings and HEAD state it), in nanoseconds, plus a
    fingerprint of the ETag below the second: the ``mtime_ns`` of a bucket object."""
    seconds = int(last_modified.timestamp())
    return seconds * 1_000_000_000 + zlib.crc32(etag.strip('"').encode()) % 1_000_000_000


@dataclass(frozen=True, slots=True)
class BucketSettings:
    """Where the bucket is and how to reach it (secrets as plain strings: never print this)."""

    bucket: str
    prefix: str
    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"BucketSettings(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.endpoint!r})"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def where(self) -> str:
        return self.endpoint or "AWS S3" + (f" ({self.region})" if self.region else "")


@dataclass(frozen=True, slots=True)
class BucketObject:
    """The origin of one listed object's body (``ingest.sources.reader.BodyOrigin``)."""

    source: BucketSource
    key: str
    etag: str

    def describe(self) -> str:
        return f"s3://{self.source.settings.bucket}/{self.key}"

    async def open(self, item: FileItem) -> BucketStream:
        return await self.source.open_object(self, item)

    def reference(self) -> tuple[str | None, str, str] | None:
        return (self.source.settings.endpoint, self.source.settings.bucket, self.key)


class BucketStream:
    """One GET's body, read in exact-size chunks (``BodyStream``)."""

    def __init__(self, body: Any, item: FileItem, uri: str) -> None:
        self._body = body
        self._item = item
        self._uri = uri

    async def read(self, n: int, digests: Sequence[Any] = ()) -> bytes:
        from botocore.exceptions import BotoCoreError

        pieces: list[bytes] = []
        got = 0
        while got < n:
            try:
                piece = await self._body.read(n - got)
            except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise TransientError(f"reading {self._uri} failed ({_short(exc)})") from None
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        chunk = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if digests and chunk:
            if len(chunk) >= HASH_IN_THREAD:
                await anyio.to_thread.run_sync(_update, digests, chunk)
            else:
                _update(digests, chunk)
        return chunk

    def close_now(self) -> None:
        self._body.close()

    async def aclose(self) -> None:
        self._body.close()


def _update(digests: Sequence[Any], chunk: bytes) -> None:
    for digest in digests:
        digest.update(chunk)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


class BucketSource:
    """The objects under ``s3://bucket/prefix`` (see the module docstring). Use as an async context
    manager, or call ``open`` and ``aclose``: ``open`` checks bucket, credentials and endpoint."""

    def __init__(
        self,
        settings: BucketSettings,
        options: WalkOptions,
        *,
        connections: int = 64,
        read_timeout: float = 300.0,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.settings = settings
        self.options = options
        self.stats = WalkStats()
        self.folders = 0
        self._connections = connections
        self._read_timeout = read_timeout
        self._page_size = page_size
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None

    # ----- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> BucketSource:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create the client; check that the bucket exists and the credentials may list it."""
        if self._client is None:
            try:
                await anyio.to_thread.run_sync(importlib.import_module, "aiobotocore.session")
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session
            except ImportError:
                raise ConfigError("bucket sources read through aiobotocore: pip install 'ingest[remote]'") from None
            s = self.settings
            config = AioConfig(
                s3={"addressing_style": "path" if s.path_style else "auto"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"total_max_attempts": 4, "mode": "standard"},
                max_pool_connections=self._connections,
                connect_timeout=10,
                read_timeout=self._read_timeout,
            )
            self._client = await self._stack.enter_async_context(
                get_session().create_client(
                    "s3",
                    endpoint_url=s.endpoint,
                    region_name=s.region,
                    aws_access_key_id=s.access_key,
                    aws_secret_access_key=s.secret_key,
                    aws_session_token=s.session_token,
                    config=config,
                )
            )
        s = self.settings
        await self._checked(
            f"listing {s.url}", lambda: self.client.list_objects_v2(Bucket=s.bucket, Prefix=s.prefix, MaxKeys=1)
        )

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("the bucket source is not open")
        return self._client

    async def aclose(self) -> None:
        self._client = None
        await self._stack.aclose()

    # ----- Source --------------------------------------------------------------------------------

    def identity(self) -> str:
        """``s3://bucket/prefix/`` on AWS, ``<endpoint>/bucket/prefix/`` elsewhere (the default manifest is
        named after the prefix's last folder)."""
        s = self.settings
        return s.url if not s.endpoint else f"{s.endpoint}/{s.bucket}/{s.prefix}"

    def describe(self) -> str:
        return f"bucket {self.settings.url} at {self.settings.where}"

    async def entries(self) -> AsyncIterator[FileItem | Rejected]:
        s, o, stats = self.settings, self.options, self.stats
        include, exclude = GlobSet(o.include), GlobSet(o.exclude)
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": s.bucket, "Prefix": s.prefix, "MaxKeys": self._page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._checked(f"listing {s.url}", functools.partial(self.client.list_objects_v2, **kwargs))
            for obj in page.get("Contents", []):
                key = obj["Key"]
                raw = key[len(s.prefix) :]
                if not raw or key.endswith("/"):
                    self.folders += 1
                    continue
                rel = path_of(raw)
                parts = rel.split("/")
                if not o.hidden and any(p.startswith(".") for p in parts):
                    stats.hidden += 1
                    continue
                if (include and not include.matches(rel)) or (exclude and _excluded(exclude, rel, parts)):
                    stats.excluded += 1
                    continue
                size = int(obj.get("Size", 0))
                if o.max_size is not None and size > o.max_size:
                    stats.too_large += 1
                    continue
                stats.files_seen += 1
                if EMPTY_SEGMENT in raw and EMPTY_SEGMENT in raw.split("/"):
                    yield Rejected(raw, _RESERVED.format(raw=raw, other=key_of(raw)))
                    continue
                yield self._item(rel, key, size, obj["LastModified"], obj.get("ETag", ""))
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                return

    async def refresh(self, item: FileItem) -> FileItem | str:
        # No HEAD per object: the GET that reads the body is conditioned on the listed ETag.
        return item

    async def lookup(self, rel_path: str) -> FileItem | Rejected:
        from botocore.exceptions import ClientError

        key = self.settings.prefix + key_of(rel_path)
        try:
            head = await self.client.head_object(Bucket=self.settings.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return Rejected(rel_path, f"not in {self.settings.url} any more", gone=True)
            return Rejected(rel_path, f"cannot look it up in {self.settings.url}: {_short(exc)}")
        except Exception as exc:  # one object's problem, reported on it
            return Rejected(rel_path, f"cannot look it up in {self.settings.url}: {_short(exc)}")
        return self._item(rel_path, key, int(head["ContentLength"]), head["LastModified"], head.get("ETag", ""))

    def passed_over(self) -> Mapping[str, int]:
        s = self.stats
        return {
            "hidden (use --hidden)": s.hidden,
            "excluded by --include/--exclude": s.excluded,
            "larger than --max-size": s.too_large,
            "folder markers (keys ending in /)": self.folders,
        }

    # ----- bodies --------------------------------------------------------------------------------

    def _item(self, rel: str, key: str, size: int, last_modified: Any, etag: str) -> FileItem:
        return FileItem(
            rel_path=rel,
            abs_path=Path(self.settings.url, rel),  # never opened: the body comes from ``origin``
            size=size,
            mtime_ns=change_token(last_modified, etag),
            origin=BucketObject(self, key, etag),
        )

    async def open_object(self, obj: BucketObject, item: FileItem) -> BucketStream:
        """GET the object as it was listed (``If-Match``); failures as ``SourceFileError``/``TransientError``."""
        from botocore.exceptions import BotoCoreError, ClientError

        uri = obj.describe()
        kwargs: dict[str, Any] = {"Bucket": self.settings.bucket, "Key": obj.key}
        if obj.etag:
            kwargs["IfMatch"] = obj.etag
        try:
            reply = await self.client.get_object(**kwargs)
        except ClientError as exc:
            code, status, detail = _client_error(exc)
            if code in ("NoSuchKey", "404") or status == 404:
                raise SourceFileError(item.rel_path, f"{uri} was deleted after it was listed") from None
            if code == "PreconditionFailed" or status == 412:
                raise SourceFileError(
                    item.rel_path, f"{uri} was overwritten after it was listed (its ETag changed); rerun to send it"
                ) from None
            if status in (429, 500, 502, 503, 504) or code in ("SlowDown", "InternalError", "ServiceUnavailable"):
                raise TransientError(f"reading {uri}: the store failed ({detail})") from None
            raise SourceFileError(item.rel_path, f"the store refused reading {uri} ({detail})") from None
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransientError(f"reading {uri}: cannot reach {self.settings.where} ({_short(exc)})") from None
        return BucketStream(reply["Body"], item, uri)

    async def _checked(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """A listing call; what the user must fix becomes a one-line ``ConfigError``."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        s = self.settings
        try:
            return await call()
        except ClientError as exc:
            code, status, detail = _client_error(exc)
            if code == "NoSuchBucket" or (status == 404 and code in ("404", "NotFound")):
                raise ConfigError(
                    f"bucket {s.bucket} does not exist at {s.where}; check the URL and --source-endpoint"
                ) from None
            if status in (401, 403) or code in (
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "InvalidToken",
                "ExpiredToken",
            ):
                raise ConfigError(
                    f"{what}: {s.where} refused the credentials ({detail}); check AWS_ACCESS_KEY_ID /"
                    " AWS_SECRET_ACCESS_KEY (or [source] access_key / secret_key)"
                ) from None
            if status >= 500 or status == 429:
                raise TransientError(f"{what}: the store {s.where} failed ({detail})") from None
            raise ConfigError(f"{what}: {s.where} refused it ({detail})") from None
        except (NoCredentialsError, PartialCredentialsError):
            raise ConfigError(
                f"{what}: no credentials; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                " (or [source] access_key / secret_key in --config)"
            ) from None
        except (EndpointConnectionError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ConfigError(
                f"{what}: cannot reach {s.where} ({type(exc).__name__}); check --source-endpoint"
            ) from None
        except BotoCoreError as exc:
            raise ConfigError(f"{what}: {_short(exc)}") from None


_RESERVED = (
    "its path would lead back to the key {other!r}: a path segment '%2F' stands for an empty one ('//'); rename it"
)


def _excluded(exclude: GlobSet, rel: str, parts: list[str]) -> bool:
    """Excluded itself, or inside an excluded folder (as the local walk prunes excluded folders)."""
    if exclude.matches(rel):
        return True
    return any(exclude.matches("/".join(parts[:i])) for i in range(1, len(parts)))


def _client_error(exc: Any) -> tuple[str, int, str]:
    error = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(error.get("Code") or status)
    message = " ".join(str(error.get("Message") or "").split())[:200]
    return code, status, f"{code}: {message}" if message else code


@asynccontextmanager
async def open_bucket_source(
    config: SourceConfig, options: WalkOptions, engine: EngineConfig
) -> AsyncIterator[BucketSource]:
    """The ``BucketSource`` of a ``[source]`` whose path is ``s3://…``, open and checked."""
    bucket, prefix = parse_bucket_url(str(config.path))
    settings = BucketSettings(
        bucket=bucket,
        prefix=prefix,
        endpoint=config.endpoint,
        region=config.region,
        path_style=config.path_style,
        access_key=config.access_key.get_secret_value() if config.access_key else None,
        secret_key=config.secret_key.get_secret_value() if config.secret_key else None,
    )
    source = BucketSource(settings, options, connections=engine.concurrency + 8)
    try:
        await source.open()
        yield source
    finally:
        await source.aclose()
