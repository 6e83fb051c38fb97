"""Volcengine SignerV4: the API-NOTES test vector, and the verifier the VikingDB emulator uses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from ingest.platforms.viking import signing
from ingest.platforms.viking.signing import (
    Credentials,
    SignatureProblem,
    format_x_date,
    sha256_hex,
    sign,
    verify,
    x_date_now,
)

NOW = dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
BODY = (
    b'{"collection_name": "test_kb", "project": "default", "add_type": "url", "doc_id": "doc_001",'
    b' "doc_name": "a.pdf", "doc_type": "pdf", "url": "https://example.com/a.pdf"}'
)
PATH = "/api/knowledge/doc/add"
AK, SK = "AKLTtestaccesskey", "testsecretkey"
BODY_HASH = "a4d703979fac2dee6939d6b22b4403523d81b1e51ccd1c0c19a5892018dcd521"

VECTOR = [
    (
        "cn-beijing",
        True,
        "HMAC-SHA256 Credential=AKLTtestaccesskey/20240101/cn-beijing/air/request, "
        "SignedHeaders=content-type;host;x-content-sha256;x-date, "
        "Signature=a9576915d576ce04bb49e5dfbef31b31a8a4a73063783c29de8941ec3742e27b",
    ),
    (
        "cn-north-1",
        True,
        "HMAC-SHA256 Credential=AKLTtestaccesskey/20240101/cn-north-1/air/request, "
        "SignedHeaders=content-type;host;x-content-sha256;x-date, "
        "Signature=d485b27c0dc534b2dadb19c4cedb170b4c1fead1b5bf8d46bf84fce09976ca3e",
    ),
    (
        "cn-beijing",
        False,
        "HMAC-SHA256 Credential=AKLTtestaccesskey/20240101/cn-beijing/air/request, "
        "SignedHeaders=content-type;x-content-sha256;x-date, "
        "Signature=91bd4a1c5f701a401adf612bd3810c8759dd247d818759760ff31b5a27156db1",
    ),
]


def request_headers(with_host: bool) -> dict[str, str]:
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if with_host:
        headers["Host"] = "127.0.0.1:8080"
    return headers


@pytest.mark.parametrize(("region", "with_host", "authorization"), VECTOR)
def test_signer_matches_the_sdk_test_vector(region: str, with_host: bool, authorization: str) -> None:
    """The three Authorization values of the API-NOTES vector come out exactly, with X-Date and body hash."""
    added = sign("POST", PATH, [], request_headers(with_host), BODY, Credentials(AK, SK, region), now=NOW)
    assert added == {"X-Date": "20240101T120000Z", "X-Content-Sha256": BODY_HASH, "Authorization": authorization}


def received(headers: dict[str, str]) -> Callable[[str], str | None]:
    lowered = {k.lower(): v for k, v in headers.items()}
    return lambda name: lowered.get(name.lower())


@pytest.mark.parametrize(("region", "with_host", "authorization"), VECTOR)
def test_verifier_accepts_both_signed_header_variants(region: str, with_host: bool, authorization: str) -> None:
    """The verifier accepts the vector's requests, with and without a signed Host, and names the signer."""
    headers = {**request_headers(with_host), "X-Date": "20240101T120000Z", "X-Content-Sha256": BODY_HASH}
    headers["Authorization"] = authorization
    assert check(headers, query=[], region=region, now=NOW) == AK


def signed(body: bytes = BODY, secret: str = SK, **headers: str) -> dict[str, str]:
    base = {"Content-Type": "application/json", "Host": "127.0.0.1:8080", **headers}
    return {**base, **sign("POST", PATH, [("b", "2"), ("a", "1 x")], base, body, Credentials(AK, secret, "cn-beijing"))}


def check(
    headers: dict[str, str],
    body: bytes = BODY,
    *,
    query: list[tuple[str, str]] | None = None,
    keys: dict[str, str] | None = None,
    region: str = "cn-beijing",
    now: dt.datetime | None = None,
) -> str:
    return verify(
        "POST",
        PATH,
        [("a", "1 x"), ("b", "2")] if query is None else query,
        received(headers),
        sha256_hex(body),
        secret_for=({AK: SK} if keys is None else keys).get,
        region=region,
        now=now,
    )


def test_verifier_accepts_a_fresh_signature_with_a_query() -> None:
    """A request signed now, with query parameters in any order, verifies."""
    assert check(signed()) == AK


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda h: signed(secret="wrong"), "signature does not match"),
        (lambda h: {**h, "Content-Type": "text/plain"}, "signature does not match"),
        (lambda h: {k: v for k, v in h.items() if k != "Authorization"}, "missing Authorization"),
        (lambda h: {**h, "Authorization": "Bearer x"}, "malformed Authorization"),
        (lambda h: {k: v for k, v in h.items() if k != "Host"}, "'host' is missing"),
        (lambda h: {**h, "X-Date": "20200101T000000Z"}, "credential scope's date"),
    ],
)
def test_verifier_rejects_wrong_keys_and_tampered_headers(
    tamper: Callable[[dict[str, str]], dict[str, str]], problem: str
) -> None:
    """A wrong secret, a changed signed header or a missing/malformed signature is refused, saying why."""
    with pytest.raises(SignatureProblem, match=problem):
        check(tamper(signed()))


def test_verifier_rejects_a_tampered_body_and_query() -> None:
    """Changing the body or the query after signing breaks the signature."""
    with pytest.raises(SignatureProblem, match="X-Content-Sha256"):
        check(signed(), BODY + b" ")
    without_declared_hash = {k: v for k, v in signed().items() if k != "X-Content-Sha256"}
    with pytest.raises(SignatureProblem, match="'x-content-sha256' is missing"):
        check(without_declared_hash, BODY + b" ")
    with pytest.raises(SignatureProblem, match="signature does not match"):
        check(signed(), query=[("a", "1 x"), ("b", "3")])


def test_verifier_rejects_unknown_keys_regions_and_stale_dates() -> None:
    """An unknown access key, another region or an X-Date far from now is refused."""
    headers = signed()
    with pytest.raises(SignatureProblem, match="signature does not match"):
        check(headers, keys={})
    with pytest.raises(SignatureProblem, match="region 'cn-beijing', not 'cn-shanghai'"):
        check(headers, region="cn-shanghai")
    with pytest.raises(SignatureProblem, match="15 minutes"):
        check(headers, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))


def test_the_signing_key_is_derived_once_a_day_per_secret_region_and_service() -> None:
    """Four chained HMACs were half of a signature's CPU and give the same key all day: derived once."""
    signing._signing_key.cache_clear()
    credentials = Credentials(AK, SK, "cn-beijing")
    first = sign("POST", PATH, [], request_headers(True), BODY, credentials, now=NOW)
    for minutes in (1, 2):
        later = NOW + dt.timedelta(minutes=minutes)
        assert sign("POST", PATH, [], request_headers(True), BODY, credentials, now=later) != first
    assert signing._signing_key.cache_info().misses == 1
    sign("POST", PATH, [], request_headers(True), BODY, credentials, now=NOW + dt.timedelta(days=1))
    sign("POST", PATH, [], request_headers(True), BODY, Credentials(AK, SK, "cn-shanghai"), now=NOW)
    assert signing._signing_key.cache_info().misses == 3


def test_a_signature_made_now_is_dated_this_second() -> None:
    """Without ``now``, ``X-Date`` is the current second (formatted once a second, then reused)."""
    before = format_x_date(dt.datetime.now(dt.UTC))
    stamped = sign("POST", PATH, [], request_headers(True), BODY, Credentials(AK, SK, "cn-beijing"))["X-Date"]
    assert before <= stamped == x_date_now() <= format_x_date(dt.datetime.now(dt.UTC))


def test_credentials_repr_hides_the_secret() -> None:
    """Printing credentials never shows the secret key."""
    assert SK not in repr(Credentials(AK, SK, "cn-beijing"))
