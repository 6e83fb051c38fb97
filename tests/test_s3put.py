"""The staging PUT we sign ourselves: the same signature botocore computes, stored intact by a real S3
(moto), and a refusal translated as aiobotocore's ``ClientError`` was."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ingest.errors import ConfigError
from ingest.http import HttpClient
from ingest.models import FileItem
from ingest.platforms.viking.s3put import UNSIGNED_PAYLOAD, S3Object, put_object, sign_s3
from ingest.platforms.viking.staging import STAGING_ERRORS, Staging, StagingSettings
from tests.harness import MOTO

pytestmark = pytest.mark.anyio

WHEN = dt.datetime(2026, 12, 3, 9, 58, 7, tzinfo=dt.UTC)


def botocore_authorization(url: str, headers: dict[str, str], body: bytes, payload_hash: str) -> str:
    """What botocore's S3 signer makes of the same request at the same instant."""
    request = AWSRequest(method="PUT", url=url, headers={**headers, "X-Amz-Content-SHA256": payload_hash}, data=body)
    auth = S3SigV4Auth(Credentials("AKID", "s3cr3t/KEY"), "s3", "cn-beijing")
    request.context["timestamp"] = WHEN.strftime("%Y%m%dT%H%M%SZ")
    request.headers["X-Amz-Date"] = request.context["timestamp"]
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    signed = auth.signed_headers(auth.headers_to_sign(request))
    return f"AWS4-HMAC-SHA256 Credential={auth.scope(request)}, SignedHeaders={signed}, Signature={signature}"


@pytest.mark.parametrize("path_style", [True, False])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_signature_is_botocores(path_style: bool, scheme: str) -> None:
    key = "ingest/doc 1/4096-17/résumé (final)+~!.pdf"
    base, host, path = S3Object.locate(f"{scheme}://tos.example:9000", "stage", key, path_style=path_style) or (
        "",
        "",
        "",
    )
    assert host == ("tos.example:9000" if path_style else "stage.tos.example:9000")
    body = b"%PDF-1.4 hello"
    headers = {
        "host": host,
        "content-md5": base64.b64encode(hashlib.md5(body).digest()).decode(),
        "content-length": str(len(body)),
        "x-amz-meta-doc_id": "doc-1",
        "x-amz-meta-source-path": "a/r%C3%A9sum%C3%A9.pdf",
    }
    payload = UNSIGNED_PAYLOAD if scheme == "https" else hashlib.sha256(body).hexdigest()
    ours = sign_s3(
        "PUT", path, headers, payload, access_key="AKID", secret_key="s3cr3t/KEY", region="cn-beijing", now=WHEN
    )
    assert ours["Authorization"] == botocore_authorization(base + path, headers, body, payload)
    assert "s3cr3t" not in repr(ours)


def test_a_default_port_is_not_part_of_the_host() -> None:
    assert S3Object.locate("https://tos.example:443", "b", "k", path_style=False) == (
        "https://b.tos.example",
        "b.tos.example",
        "/k",
    )


def test_a_key_with_a_dot_segment_is_left_to_aiobotocore() -> None:
    """An URL would resolve ``..`` and send another path than the one signed."""
    assert S3Object.locate("http://h", "b", "p/../k", path_style=True) is None


@pytest.mark.parametrize("endpoint", ["http://h/base", "http://u:p@h", "ftp://h"])
def test_an_endpoint_with_more_than_scheme_and_host_is_left_to_aiobotocore(endpoint: str) -> None:
    assert S3Object.locate(endpoint, "b", "k", path_style=True) is None


async def put(key: str, body: bytes, *, bucket: str = MOTO.bucket) -> None:
    base, host, path = S3Object.locate(MOTO.url(), bucket, key, path_style=True) or ("", "", "")
    http = HttpClient(base)
    try:
        await put_object(
            S3Object(http, host, path),
            body,
            content_md5=base64.b64encode(hashlib.md5(body).digest()).decode(),
            metadata={"doc_id": "doc-1", "source-path": "x/y%20z.txt"},
            access_key="x",
            secret_key="x",
            region=MOTO.region,
            what=f"staging {key}",
            errors=STAGING_ERRORS,
            endpoint=MOTO.url(),
            bucket=bucket,
        )
    finally:
        await http.aclose()


async def test_a_real_s3_stores_the_body_and_metadata() -> None:
    import boto3

    key = "s3put/doc 1/naïve+name.txt"
    await put(key, b"hello staging")
    s3 = boto3.client(
        "s3", endpoint_url=MOTO.url(), region_name=MOTO.region, aws_access_key_id="x", aws_secret_access_key="x"
    )
    got = s3.get_object(Bucket=MOTO.bucket, Key=key)
    assert got["Body"].read() == b"hello staging"
    assert got["Metadata"] == {"doc_id": "doc-1", "source-path": "x/y%20z.txt"}


async def test_a_missing_bucket_says_what_to_fix() -> None:
    with pytest.raises(ConfigError, match="staging bucket no-such-bucket does not exist"):
        await put("k.txt", b"x", bucket="no-such-bucket")


async def stage(tmp_path: Path, key: str, data: bytes) -> dict[str, Any]:
    """``Staging.put`` of one small local file into moto; the stored object as boto3 reads it."""
    import boto3

    src = tmp_path / "f.txt"
    src.write_bytes(data)
    st = src.stat()
    settings = StagingSettings(
        endpoint=MOTO.url(), bucket=MOTO.bucket, prefix="", region=MOTO.region, access_key="x", secret_key="x",
        path_style=True, part_size=5 * 1024 * 1024,
    )  # fmt: skip
    staging = Staging(settings)
    await staging.open()
    try:
        staged = await staging.put(FileItem("f.txt", src, st.st_size, st.st_mtime_ns), key, {"doc_id": "d1"})
    finally:
        await staging.aclose()
    assert staged.md5 == hashlib.md5(data).hexdigest()
    s3 = boto3.client(
        "s3", endpoint_url=MOTO.url(), region_name=MOTO.region, aws_access_key_id="x", aws_secret_access_key="x"
    )
    got = s3.get_object(Bucket=MOTO.bucket, Key=key)
    return {"body": got["Body"].read(), "metadata": got["Metadata"]}


@pytest.mark.parametrize("key", ["s3put/staged one.txt", "s3put/./dotted.txt"])
async def test_staging_a_small_file_stores_it_whichever_way_it_goes(tmp_path: Path, key: str) -> None:
    """Our signed PUT, or aiobotocore's for a key an URL would rewrite: the same object either way."""
    assert await stage(tmp_path, key, b"staged body") == {"body": b"staged body", "metadata": {"doc_id": "d1"}}
