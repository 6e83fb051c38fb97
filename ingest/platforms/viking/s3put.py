"""One object PUT to the S3-compatible staging store, signed here (AWS Signature Version 4, service ``s3``)
and sent through ``ingest.http.HttpClient``: the staging path of every small file.

Why not aiobotocore for this one call: its request machinery (event hooks, endpoint rules, the user
agent, serialising and parsing through the service model) cost ~4 ms of CPU per PUT, most of the
client's CPU per file for VikingDB (benchmarks/README.md, "Client CPU per file"); the PUT itself is
one header block and a body. Everything else the store is asked (the bucket check, multipart uploads
of big files, presigned URLs) stays with aiobotocore, where per-call cost does not matter.

The signature is what botocore's ``S3SigV4Auth`` computes for the same request
(``tests/test_s3put.py`` checks it against botocore): the canonical URI is the path as sent (each key
segment percent-encoded once, ``/`` kept), the signed headers are ``host``, ``content-md5``,
``x-amz-*`` (metadata included), and the payload hash is ``UNSIGNED-PAYLOAD`` over https (as botocore
does for S3, so TOS accepts it) or the body's sha256 over plain http. ``Content-MD5`` makes the store
reject a body damaged in transit either way. The secret key is used for the HMAC and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ingest.errors import ErrorRules, IngestError, classify
from ingest.http import HttpClient
from ingest.platforms.viking.signing import format_x_date, sha256_hex

__all__ = ["S3Object", "put_object", "sign_s3"]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_CODE = re.compile(r"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


@dataclass(frozen=True, slots=True)
class S3Object:
    """Where an object goes: the client for its base URL (``https://bucket.host`` or the endpoint with
    path-style addressing) and its path below it, percent-encoded once (the form that is signed and sent)."""

    http: HttpClient
    host: str
    path: str

    @staticmethod
    def locate(endpoint: str, bucket: str, key: str, *, path_style: bool) -> tuple[str, str, str] | None:
        """``(base URL, host header, encoded path)``, or ``None`` (left to aiobotocore) for a key an URL
        would rewrite (a ``.`` or ``..`` segment) or an endpoint that is more than scheme and host."""
        if any(segment in (".", "..") for segment in key.split("/")):
            return None
        parts = urlsplit(endpoint.rstrip("/"))
        if parts.scheme not in ("http", "https") or parts.path or parts.query or "@" in parts.netloc:
            return None
        host = parts.netloc if path_style else f"{bucket}.{parts.netloc}"
        host = _strip_default_port(host, parts.scheme)
        path = quote(f"/{bucket}/{key}" if path_style else f"/{key}", safe="/~")
        return f"{parts.scheme}://{host}", host, path


def _strip_default_port(host: str, scheme: str) -> str:
    name, sep, port = host.rpartition(":")
    default = {"http": "80", "https": "443"}.get(scheme)
    return name if sep and "]" not in port and port == default else host


def _signing_key(secret_key: str, date: str, region: str) -> bytes:
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign_s3(
    method: str,
    path: str,
    headers: Mapping[str, str],
    payload_hash: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    now: dt.datetime | None = None,
) -> dict[str, str]:
    """The headers to add: ``x-amz-date``, ``x-amz-content-sha256`` and ``Authorization``. Every header in
    ``headers`` is signed (include ``host``); ``path`` is signed as given (already encoded), no query."""
    amz_date = format_x_date(now or dt.datetime.now(dt.UTC))
    added = {"x-amz-date": amz_date, "x-amz-content-sha256": payload_hash}
    chosen = {name.lower(): " ".join(value.split()) for name, value in {**headers, **added}.items()}
    names = sorted(chosen)
    signed = ";".join(names)
    canonical = "\n".join(
        [method.upper(), path, "", "".join(f"{n}:{chosen[n]}\n" for n in names), signed, payload_hash]
    )
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, sha256_hex(canonical.encode())])
    signature = hmac.new(_signing_key(secret_key, amz_date[:8], region), to_sign.encode(), hashlib.sha256).hexdigest()
    added["Authorization"] = (
        f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return added


async def put_object(
    target: S3Object,
    body: bytes | memoryview,
    *,
    content_md5: str,
    metadata: Mapping[str, str],
    access_key: str,
    secret_key: str,
    region: str,
    what: str,
    errors: ErrorRules,
    endpoint: str,
    bucket: str,
) -> None:
    """``PUT`` ``body`` (held whole: one part, at most ``part_size``); a refusal becomes the error ``errors``
    gives its S3 code, as aiobotocore's ``ClientError`` does in ``Staging._guard``."""
    headers = {"host": target.host, "content-md5": content_md5, "content-length": str(len(body))}
    headers.update({f"x-amz-meta-{name.lower()}": value for name, value in metadata.items()})
    payload_hash = UNSIGNED_PAYLOAD if target.http.base_url.startswith("https:") else sha256_hex(bytes(body))
    signed = sign_s3(
        "PUT", target.path, headers, payload_hash, access_key=access_key, secret_key=secret_key, region=region
    )
    reply = await target.http.request(
        "PUT", target.path, what=what, data=body, headers={**headers, **signed}, encoded_path=True
    )
    if 200 <= reply.status < 300:
        return
    text = reply.body if isinstance(reply.body, str) else ""
    code_match, message_match = _CODE.search(text), _MESSAGE.search(text)
    code = code_match.group(1) if code_match else str(reply.status)
    message = " ".join((message_match.group(1) if message_match else "").split())[:200]
    error: IngestError = classify(
        errors,
        what=what,
        status=reply.status,
        code=code,
        detail=f"{code}: {message}" if message else code,
        endpoint=endpoint,
        bucket=bucket,
    )
    raise error
