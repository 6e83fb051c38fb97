"""Reading the sources behind MOI connectors: S3 and OSS buckets for real, the others by reachability.

S3 and OSS connectors are real in the emulator: they list and read objects from the S3-compatible
endpoint in their config. This uses **boto3 in worker threads** (the ``s3`` extra), not aiobotocore:
boto3 is the reference S3 client (moto, which the tests serve buckets with, is built on the same
botocore), it has no tight pin on a botocore version the way aiobotocore does, and the emulator only
needs a few calls that each run in one thread hop (a listing page, a streamed ``get_object``). boto3
is imported lazily, so the emulator runs without it until a bucket connector is used.

DIFY, HDFS and MO connectors cannot be read by the emulator; ``probe`` opens a TCP connection to the
host they name, which is what "reachable" means for them here.

Every connection goes only to this machine unless the emulator runs with ``--allow-remote-sources``
(``kit.netguard``): a request must not make the emulator reach into the user's network.

Every failure is a ``SourceUnavailable`` with one secret-free line: the bucket, endpoint or address,
and what went wrong.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from ingest.emulators.kit.netguard import remote_problem

__all__ = [
    "BucketConfig",
    "SourceObject",
    "SourceUnavailable",
    "copy_object",
    "list_objects",
    "probe_bucket",
    "probe_tcp",
]

#: Seconds to wait for a TCP connection (validate, and every S3 call).
CONNECT_TIMEOUT = 3.0
#: Seconds to wait for bytes on an open S3 connection.
READ_TIMEOUT = 30.0
#: Bytes per read of an object body: memory per copy stays at about this much.
COPY_CHUNK = 1 << 20


class SourceUnavailable(Exception):
    """The source cannot be reached or read; ``str()`` is the reason, one line, no secrets."""


@dataclass(frozen=True, slots=True)
class BucketConfig:
    """Where a bucket is and how to address it."""

    endpoint: str
    access_key_id: str
    access_key_secret: str
    bucket_name: str
    region: str
    #: ``True``: ``http://host/bucket/key``; ``False``: ``http://bucket.host/key`` (virtual-hosted).
    path_style: bool
    #: Whether the endpoint may be another machine (``--allow-remote-sources``); else loopback only.
    allow_remote: bool = False


@dataclass(frozen=True, slots=True)
class SourceObject:
    key: str
    size: int
    etag: str


def endpoint_url(endpoint: str) -> str:
    """The endpoint as a URL: the seed writes bare host names (``oss-cn-hangzhou.aliyuncs.com``)."""
    return endpoint if "://" in endpoint else "https://" + endpoint


def host_is_literal(endpoint: str) -> bool:
    """True when the endpoint's host is an IP address or ``localhost``: no virtual hosting possible."""
    host = urlsplit(endpoint_url(endpoint)).hostname or ""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_clients: dict[tuple[BucketConfig, int], Any] = {}
_clients_lock = threading.Lock()


def _client(config: BucketConfig, attempts: int = 2) -> Any:
    """One boto3 client per config (clients are thread-safe; building one costs tens of ms).

    ``attempts``: a probe answers at once (1); a copy rides out one dropped connection (2).
    """
    where = f"bucket {config.bucket_name!r} at {config.endpoint}"
    try:
        host = urlsplit(endpoint_url(config.endpoint)).hostname or ""
    except ValueError:
        raise SourceUnavailable(f"{where}: the endpoint is not a valid URL") from None
    problem = remote_problem(host, allow_remote=config.allow_remote)
    if problem is not None:
        raise SourceUnavailable(f"{where}: {problem}")
    with _clients_lock:
        found = _clients.get((config, attempts))
        if found is not None:
            return found
        try:
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config
        except ImportError:
            raise SourceUnavailable(
                "reading S3/OSS buckets needs boto3; install it with: pip install 'ingest[s3]'"
            ) from None
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url(config.endpoint),
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.access_key_secret,
            region_name=config.region or "us-east-1",
            config=Config(
                s3={"addressing_style": "path" if config.path_style else "virtual"},
                signature_version="s3v4",
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"max_attempts": attempts, "mode": "standard"},
            ),
        )
        _clients[(config, attempts)] = client
        return client


def _reason(config: BucketConfig, exc: Exception) -> SourceUnavailable:
    """A one-line, secret-free description of a boto3 failure."""
    where = f"bucket {config.bucket_name!r} at {config.endpoint}"
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error") or {}
        code = str(err.get("Code") or "")
        message = str(err.get("Message") or "")
        if code in ("404", "NoSuchBucket"):
            return SourceUnavailable(f"{where}: the bucket does not exist")
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            return SourceUnavailable(f"{where}: access denied ({code}); check access_key_id and access_key_secret")
        return SourceUnavailable(f"{where}: {code or 'error'} {message}".strip())
    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    return SourceUnavailable(f"{where}: cannot connect ({text})")


def _guard(config: BucketConfig, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except SourceUnavailable:
        raise
    except Exception as exc:  # botocore raises many unrelated types; all mean "cannot read"
        raise _reason(config, exc) from None


def probe_bucket(config: BucketConfig) -> None:
    """Connect, authenticate and look at the bucket; raise ``SourceUnavailable`` when any step fails."""
    client = _client(config, attempts=1)
    _guard(config, lambda: client.list_objects_v2(Bucket=config.bucket_name, MaxKeys=1))


def list_objects(config: BucketConfig) -> Iterator[SourceObject]:
    """Every object of the bucket, page by page (keys ending in ``/`` are folder markers)."""
    client = _client(config)
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": config.bucket_name, "MaxKeys": 1000}
        if token:
            kwargs["ContinuationToken"] = token
        page = _guard(config, functools.partial(client.list_objects_v2, **kwargs))
        for item in page.get("Contents") or []:
            yield SourceObject(str(item["Key"]), int(item.get("Size") or 0), str(item.get("ETag") or "").strip('"'))
        if not page.get("IsTruncated"):
            return
        token = page.get("NextContinuationToken")


def head_object(config: BucketConfig, key: str) -> SourceObject | None:
    """The object's size and etag, or ``None`` when the key does not exist."""
    client = _client(config)
    try:
        head = client.head_object(Bucket=config.bucket_name, Key=key)
    except Exception as exc:
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and str((response.get("Error") or {}).get("Code")) in ("404", "NoSuchKey"):
            return None
        raise _reason(config, exc) from None
    return SourceObject(key, int(head.get("ContentLength") or 0), str(head.get("ETag") or "").strip('"'))


def copy_object(config: BucketConfig, key: str, dest: Path) -> tuple[int, str, str]:
    """Stream one object into ``dest`` in ``COPY_CHUNK`` pieces; return (size, md5, etag).

    Runs in a worker thread. Never holds more than one chunk of the body in memory.
    """
    client = _client(config)
    response = _guard(config, lambda: client.get_object(Bucket=config.bucket_name, Key=key))
    body = response["Body"]
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    try:
        with open(dest, "wb") as out:
            size = _pump(config, body.iter_chunks(COPY_CHUNK), out, digest)
    finally:
        body.close()
    return size, digest.hexdigest(), str(response.get("ETag") or "").strip('"')


def _pump(config: BucketConfig, chunks: Iterator[bytes], out: IO[bytes], digest: Any) -> int:
    size = 0
    try:
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    except OSError as exc:
        if isinstance(exc, (ConnectionError, TimeoutError)):
            raise _reason(config, exc) from None
        raise
    except Exception as exc:
        raise _reason(config, exc) from None
    return size


def probe_tcp(host: str, port: int, *, allow_remote: bool = False) -> None:
    """Open (and close) a TCP connection to ``host:port``; ``SourceUnavailable`` when it fails, or when
    ``host`` is another machine and ``allow_remote`` is off (then nothing is sent, not even a DNS query)."""
    problem = remote_problem(host, allow_remote=allow_remote)
    if problem is not None:
        raise SourceUnavailable(f"cannot connect to {host}:{port}: {problem}")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = "timed out"
        raise SourceUnavailable(f"cannot connect to {host}:{port} ({reason})") from None
