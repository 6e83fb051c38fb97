"""Volcengine SignerV4 (HMAC-SHA256), as the VikingDB knowledge-base API expects it (service ``air``).

Implemented from the algorithm in ``API-NOTES.md`` section 1 (read in ``volcengine/auth/SignerV4.py``):

- ``X-Date`` is ``%Y%m%dT%H%M%SZ`` (UTC); ``X-Content-Sha256`` is the hex sha256 of the raw body.
- The signed headers are those named exactly ``Content-Type``, ``Content-Md5`` or ``Host``, or starting
  with ``X-``, lowercased and sorted; a ``host`` ending in ``:80``/``:443`` loses the port.
- canonical request = ``METHOD \\n norm_uri(path) \\n norm_query \\n canonical headers (each ``k:v\\n``)
  \\n signed names \\n body hash``; the signing key is ``HMAC`` chained over date, region, service and
  ``"request"``; ``Authorization: HMAC-SHA256 Credential=AK/scope, SignedHeaders=a;b, Signature=hex``.

``sign`` is the client side; ``verify`` is the emulator's: it rebuilds the canonical request from the
headers the request actually carried (whichever set the client chose to sign) and compares signatures
in constant time. Secrets appear in no return value and no error message.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

__all__ = [
    "ALGORITHM",
    "SERVICE",
    "Credentials",
    "SignatureProblem",
    "canonical_request",
    "format_x_date",
    "sha256_hex",
    "sign",
    "verify",
    "x_date_now",
]

ALGORITHM = "HMAC-SHA256"
#: The service name of the VikingDB knowledge-base API in the credential scope.
SERVICE = "air"
#: How far a request's ``X-Date`` may be from the verifier's clock (as AWS SigV4 allows).
MAX_CLOCK_SKEW = dt.timedelta(minutes=15)

_X_DATE = re.compile(r"\d{8}T\d{6}Z")
_AUTHORIZATION = re.compile(
    r"HMAC-SHA256 Credential=(?P<ak>[^/\s,]+)/(?P<date>\d{8})/(?P<region>[^/\s,]+)/(?P<service>[^/\s,]+)/request,"
    r" SignedHeaders=(?P<signed>[a-z0-9_.;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key pair and where it is used. ``repr`` leaves the secret out."""

    access_key: str
    secret_key: str
    region: str
    service: str = SERVICE

    def __repr__(self) -> str:
        return f"Credentials(access_key={self.access_key!r}, region={self.region!r}, service={self.service!r})"


class SignatureProblem(Exception):
    """Why a request's signature was not accepted: one sentence, never containing a secret."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def format_x_date(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


class _XDateClock:
    """The current time as ``X-Date``, formatted once a second (``datetime.now`` and ``strftime`` took
    ~2.6 µs a signature, and a staged file is signed twice)."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
        return self._text


#: ``x_date_now()``: the current ``X-Date`` (also the S3 signer's ``x-amz-date``, the same format).
x_date_now = _XDateClock()


def _norm_uri(path: str) -> str:
    return quote(path or "/").replace("%2F", "/").replace("+", "%20")


def _norm_query(query: Iterable[tuple[str, str]]) -> str:
    # Sorted by key; repeated keys keep their order (a stable sort), as the SDK's list handling does.
    pairs = sorted(query, key=lambda kv: kv[0])
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs).replace("+", "%20")


def _strip_default_port(host: str) -> str:
    name, sep, port = host.rpartition(":")
    return name if sep and port in ("80", "443") else host


def _is_signed(name: str) -> bool:
    # Case-sensitive on purpose: it is what the SDK does, and both sides must agree on the set.
    return name in ("Content-Type", "Content-Md5", "Host") or name.startswith("X-")


def canonical_request(
    method: str, path: str, query: Iterable[tuple[str, str]], headers: Mapping[str, str], body_hash: str
) -> tuple[str, str]:
    """``(canonical request, signed header names)`` for ``headers`` already lowercased and chosen."""
    names = sorted(headers)
    canonical_headers = "".join(f"{name}:{headers[name]}\n" for name in names)
    signed = ";".join(names)
    text = "\n".join([method.upper(), _norm_uri(path), _norm_query(query), canonical_headers, signed, body_hash])
    return text, signed


@functools.lru_cache(maxsize=8)
def _signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """Four chained HMACs, the same for every request of a day: cached (~9 µs a signature, half of it).
    The key is kept in memory only, as ``Credentials`` keeps the secret it comes from."""
    key = secret_key.encode()
    for part in (date, region, service, "request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _signature(secret_key: str, x_date: str, region: str, service: str, canonical: str) -> tuple[str, str]:
    scope = f"{x_date[:8]}/{region}/{service}/request"
    string_to_sign = "\n".join([ALGORITHM, x_date, scope, sha256_hex(canonical.encode())])
    key = _signing_key(secret_key, x_date[:8], region, service)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest(), scope


def sign(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    credentials: Credentials,
    *,
    now: dt.datetime | None = None,
) -> dict[str, str]:
    """The headers to add to a request: ``X-Date``, ``X-Content-Sha256`` and ``Authorization``.

    ``headers`` are the ones the request will carry (names as sent: the signed set is chosen by exact
    name); include ``Host`` to sign it. Send the body bytes exactly as signed.
    """
    x_date = format_x_date(now) if now is not None else x_date_now()
    body_hash = sha256_hex(body)
    added = {"X-Date": x_date, "X-Content-Sha256": body_hash}
    chosen = {name.lower(): value for name, value in {**headers, **added}.items() if _is_signed(name)}
    if "host" in chosen:
        chosen["host"] = _strip_default_port(chosen["host"])
    canonical, signed = canonical_request(method, path, query, chosen, body_hash)
    signature, scope = _signature(credentials.secret_key, x_date, credentials.region, credentials.service, canonical)
    added["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return added


def verify(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    header: Callable[[str], str | None],
    body_hash: str,
    *,
    secret_for: Callable[[str], str | None],
    region: str | None,
    service: str = SERVICE,
    now: dt.datetime | None = None,
) -> str:
    """Check a signed request; return the access key that signed it or raise ``SignatureProblem``.

    ``header(name)`` looks a received header up case-insensitively; ``body_hash`` is the sha256 of the
    body as received (so a tampered body fails). ``secret_for(access_key)`` gives the secret key of a
    known access key, ``None`` otherwise. ``region=None`` accepts whichever region the client signed for.
    """
    authorization = header("Authorization")
    if not authorization:
        raise SignatureProblem("missing Authorization header")
    m = _AUTHORIZATION.fullmatch(authorization.strip())
    if m is None:
        raise SignatureProblem(
            "malformed Authorization header; expected 'HMAC-SHA256 Credential=AK/date/region/service/request,"
            " SignedHeaders=..., Signature=...'"
        )
    x_date = header("X-Date") or ""
    if not _X_DATE.fullmatch(x_date):
        raise SignatureProblem("missing or malformed X-Date header (want YYYYMMDDTHHMMSSZ)")
    if m["date"] != x_date[:8]:
        raise SignatureProblem("the credential scope's date differs from X-Date")
    signed_at = dt.datetime.strptime(x_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    if abs((now or dt.datetime.now(dt.UTC)) - signed_at) > MAX_CLOCK_SKEW:
        raise SignatureProblem("X-Date is more than 15 minutes away from the server's clock")
    if m["service"] != service:
        raise SignatureProblem(f"the credential scope names service {m['service']!r}, not {service!r}")
    if region is not None and m["region"] != region:
        raise SignatureProblem(f"the credential scope names region {m['region']!r}, not {region!r}")
    names = m["signed"].split(";")
    if names != sorted(set(names)) or "x-date" not in names:
        raise SignatureProblem("SignedHeaders must be sorted, unique and include x-date")
    declared_hash = header("X-Content-Sha256")
    if declared_hash is not None and not hmac.compare_digest(declared_hash.strip().lower(), body_hash):
        raise SignatureProblem("X-Content-Sha256 does not match the body")
    values: dict[str, str] = {}
    for name in names:
        value = header(name)
        if value is None:
            raise SignatureProblem(f"signed header {name!r} is missing from the request")
        values[name] = _strip_default_port(value) if name == "host" else value
    secret = secret_for(m["ak"])
    # An unknown access key still costs a full signature computation, so timing does not reveal it.
    canonical, _ = canonical_request(method, path, query, values, body_hash)
    expected, _ = _signature(secret or "\0unknown", x_date, m["region"], m["service"], canonical)
    if not hmac.compare_digest(expected, m["signature"]) or secret is None:
        raise SignatureProblem("signature does not match")
    return m["ak"]
