"""The staging requests we sign ourselves (bucket check, PUT, multipart upload, presigned URL): the same
signatures botocore computes, objects stored intact by a real S3 (moto), refusals translated as
aiobotocore's ``ClientError`` was, and aiobotocore loaded only for what we do not send."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import os
import subprocess
import sys
import tracemalloc
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import anyio
import pytest
from aiohttp import web
from anyio.abc import TaskStatus
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ingest.emulators.kit.server import serve_in_background
from ingest.errors import ConfigError, SourceFileError, TransientError
from ingest.formdata import READ_ON_LOOP_MAX
from ingest.http import HttpClient
from ingest.models import FileItem
from ingest.platforms.viking import s3put
from ingest.platforms.viking import staging as staging_module
from ingest.platforms.viking.s3put import UNSIGNED_PAYLOAD, S3Bucket, sign_s3
from ingest.platforms.viking.staging import BUCKET_CHECK_ERRORS, STAGING_ERRORS, Staging, StagingSettings
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


def bucket_for(base: str, host: str, root: str, *, bucket: str = "stage", region: str = "cn-beijing") -> S3Bucket:
    return S3Bucket(
        HttpClient(base), host=host, root=root, bucket=bucket, endpoint=base, access_key="AKID",
        secret_key="s3cr3t/KEY", region=region, errors=STAGING_ERRORS, bucket_errors=BUCKET_CHECK_ERRORS,
    )  # fmt: skip


@pytest.mark.parametrize("path_style", [True, False])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_signature_is_botocores(path_style: bool, scheme: str) -> None:
    key = "ingest/doc 1/4096-17/résumé (final)+~!.pdf"
    base, host, root = S3Bucket.locate(f"{scheme}://tos.example:9000", "stage", path_style=path_style) or ("", "", "")
    assert host == ("tos.example:9000" if path_style else "stage.tos.example:9000")
    path = root + quote(f"/{key}", safe="/~")
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


def test_a_signed_query_is_botocores() -> None:
    """UploadPart and CreateMultipartUpload carry their parameters in the query, which is signed too."""
    body = b"part one"
    headers = {"host": "h:9000", "content-length": str(len(body))}
    payload = hashlib.sha256(body).hexdigest()
    for query, sent in (
        ([("partNumber", "2"), ("uploadId", "a/b+c=")], "partNumber=2&uploadId=a%2Fb%2Bc%3D"),
        ([("uploads", "")], "uploads"),
    ):
        ours = sign_s3("PUT", "/stage/k", headers, payload, access_key="AKID", secret_key="s3cr3t/KEY",
                       region="cn-beijing", query=query, now=WHEN)  # fmt: skip
        assert ours["Authorization"] == botocore_authorization(f"http://h:9000/stage/k?{sent}", headers, body, payload)


@pytest.mark.parametrize("path_style", [True, False])
def test_a_presigned_url_is_botocores(path_style: bool) -> None:
    """The GET URL of ``add_type = "url"``: the same query, signature included, as botocore presigns."""
    from botocore.config import Config
    from botocore.session import get_session

    key = "ingest/doc 1/4096-17/résumé (final)+~!.pdf"
    client = get_session().create_client(
        "s3", endpoint_url="http://tos.example:9000", region_name="cn-beijing", aws_access_key_id="AKID",
        aws_secret_access_key="s3cr3t/KEY", config=Config(s3={"addressing_style": "path" if path_style else "virtual"}),
    )  # fmt: skip
    theirs = client.generate_presigned_url("get_object", Params={"Bucket": "stage", "Key": key}, ExpiresIn=600)
    signed_at = dt.datetime.strptime(parse_qs(urlsplit(theirs).query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
    base, host, root = S3Bucket.locate("http://tos.example:9000", "stage", path_style=path_style) or ("", "", "")
    ours = bucket_for(base, host, root).presign_get(key, 600, now=signed_at.replace(tzinfo=dt.UTC))
    assert ours == theirs
    assert "s3cr3t" not in ours


def test_the_signing_key_is_derived_once_a_day() -> None:
    """The same signatures, with the four chained HMACs done once per day and region."""
    s3put._signing_key.cache_clear()
    headers = {"host": "127.0.0.1:9000", "content-md5": "x"}
    signatures = {
        sign_s3("PUT", "/b/k", headers, UNSIGNED_PAYLOAD, access_key="AKID", secret_key="s3cr3t/KEY",
                region="cn-beijing", now=WHEN + dt.timedelta(seconds=s))["Authorization"]
        for s in (0, 1, 2)
    }  # fmt: skip
    assert len(signatures) == 3
    assert s3put._signing_key.cache_info().misses == 1


def test_a_default_port_is_not_part_of_the_host() -> None:
    assert S3Bucket.locate("https://tos.example:443", "b", path_style=False) == (
        "https://b.tos.example",
        "b.tos.example",
        "",
    )


def test_a_key_with_a_dot_segment_is_left_to_aiobotocore() -> None:
    """An URL would resolve ``..`` and send another path than the one signed."""
    assert not bucket_for("http://h", "h", "/b").takes("p/../k")
    assert bucket_for("http://h", "h", "/b").takes("p/k")


def test_a_key_too_long_for_the_kept_reply_is_uploaded_in_parts_by_aiobotocore() -> None:
    """CreateMultipartUpload's UploadId comes after the key in its XML reply, and HttpClient keeps 500
    characters of a reply that is not JSON."""
    s3 = bucket_for("http://h", "h", "/b")
    assert s3.takes("k" * 300)
    assert not s3.takes("k" * 300, multipart=True)
    assert s3.takes("k" * 140, multipart=True)


@pytest.mark.parametrize("endpoint", ["http://h/base", "http://u:p@h", "ftp://h"])
def test_an_endpoint_with_more_than_scheme_and_host_is_left_to_aiobotocore(endpoint: str) -> None:
    assert S3Bucket.locate(endpoint, "b", path_style=True) is None


def moto_bucket(bucket: str = MOTO.bucket) -> S3Bucket:
    base, host, root = S3Bucket.locate(MOTO.url(), bucket, path_style=True) or ("", "", "")
    return bucket_for(base, host, root, bucket=bucket, region=MOTO.region)


def boto3_client() -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=MOTO.url(), region_name=MOTO.region, aws_access_key_id="x", aws_secret_access_key="x"
    )


def md5_of(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


async def test_a_real_s3_stores_the_body_and_metadata() -> None:
    key = "s3put/doc 1/naïve+name.txt"
    s3 = moto_bucket()
    try:
        await s3.put_object(
            key, b"hello staging", content_md5=md5_of(b"hello staging"),
            metadata={"doc_id": "doc-1", "source-path": "x/y%20z.txt"}, what=f"staging {key}",
        )  # fmt: skip
    finally:
        await s3.http.aclose()
    got = boto3_client().get_object(Bucket=MOTO.bucket, Key=key)
    assert got["Body"].read() == b"hello staging"
    assert got["Metadata"] == {"doc_id": "doc-1", "source-path": "x/y%20z.txt"}


async def test_the_bucket_check_finds_the_bucket_or_says_what_to_fix() -> None:
    present, missing = moto_bucket(), moto_bucket("no-such-bucket")
    try:
        await present.head_bucket("checking staging bucket")
        with pytest.raises(ConfigError, match=r"staging bucket no-such-bucket does not exist at http://127\.0\.0\.1:"):
            await missing.head_bucket("checking staging bucket")
        with pytest.raises(ConfigError, match="staging bucket no-such-bucket does not exist"):
            await missing.put_object("k.txt", b"x", content_md5=md5_of(b"x"), metadata={}, what="staging k.txt")
    finally:
        await present.http.aclose()
        await missing.http.aclose()


async def test_a_multipart_upload_stores_the_parts_in_order() -> None:
    key = "s3put/parts/big file+1.pdf"
    parts = [os.urandom(5 * 1024 * 1024), b"tail"]
    s3 = moto_bucket()
    try:
        upload_id = await s3.create_multipart(key, metadata={"doc_id": "d9"}, what="staging big")
        etags = [
            await s3.upload_part(key, upload_id, n, memoryview(p), content_md5=md5_of(p), what="staging big")
            for n, p in enumerate(parts, start=1)
        ]
        assert etags == [f'"{hashlib.md5(p).hexdigest()}"' for p in parts]
        await s3.complete_multipart(key, upload_id, etags, what="staging big")
    finally:
        await s3.http.aclose()
    got = boto3_client().get_object(Bucket=MOTO.bucket, Key=key)
    assert got["Body"].read() == b"".join(parts)
    assert got["Metadata"] == {"doc_id": "d9"}


async def test_an_aborted_upload_is_gone_and_a_5xx_is_transient() -> None:
    """After AbortMultipartUpload no upload is left open; a part sent to it then fails (moto answers a
    bare 500 where S3 says NoSuchUpload: both are transient in STAGING_ERRORS)."""
    key = "s3put/parts/aborted.pdf"
    s3 = moto_bucket()
    try:
        upload_id = await s3.create_multipart(key, metadata={}, what="staging aborted")
        await s3.upload_part(key, upload_id, 1, b"x", content_md5=md5_of(b"x"), what="staging aborted")
        assert open_uploads(key) == [upload_id]
        await s3.abort_multipart(key, upload_id, what="staging aborted")
        assert open_uploads(key) == []
        with pytest.raises(TransientError, match=r"staging aborted: the staging store http://\S+ failed \(500\)"):
            await s3.upload_part(key, upload_id, 2, b"y", content_md5=md5_of(b"y"), what="staging aborted")
    finally:
        await s3.http.aclose()


def open_uploads(key: str) -> list[str]:
    listed = boto3_client().list_multipart_uploads(Bucket=MOTO.bucket, Prefix=key)
    return [u["UploadId"] for u in listed.get("Uploads", [])]


async def test_a_presigned_url_reads_the_object() -> None:
    key = "s3put/presigned/a b.txt"
    boto3_client().put_object(Bucket=MOTO.bucket, Key=key, Body=b"read me")
    s3 = moto_bucket()
    try:
        url = s3.presign_get(key, 60)
    finally:
        await s3.http.aclose()
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=30) as resp:
        assert resp.read() == b"read me"


def settings_for(**changes: Any) -> StagingSettings:
    settings = StagingSettings(
        endpoint=MOTO.url(), bucket=MOTO.bucket, prefix="", region=MOTO.region, access_key="x", secret_key="x",
        path_style=True, part_size=5 * 1024 * 1024,
    )  # fmt: skip
    return dataclasses.replace(settings, **changes)


async def stage(tmp_path: Path, key: str, data: bytes) -> dict[str, Any]:
    """``Staging.put`` of one local file into moto; the stored object as boto3 reads it."""
    src = tmp_path / "f.txt"
    src.write_bytes(data)
    st = src.stat()
    staging = Staging(settings_for(), chunk_size=1024 * 1024)
    await staging.open()
    try:
        staged = await staging.put(FileItem("f.txt", src, st.st_size, st.st_mtime_ns), key, {"doc_id": "d1"})
    finally:
        await staging.aclose()
    assert staged.md5 == hashlib.md5(data).hexdigest()
    got = boto3_client().get_object(Bucket=MOTO.bucket, Key=key)
    return {"body": got["Body"].read(), "metadata": got["Metadata"]}


@pytest.mark.parametrize("key", ["s3put/staged one.txt", "s3put/./dotted.txt"])
@pytest.mark.parametrize("size", [11, 200 * 1024, 3 * 1024 * 1024, 11 * 1024 * 1024 + 5])
async def test_staging_a_file_stores_it_whichever_way_it_goes(tmp_path: Path, key: str, size: int) -> None:
    """Small (one read), up to a part (one PUT, sent in slices past 1 MiB) or in parts; through our signed
    requests, or aiobotocore's for a key an URL would rewrite: the same object every way."""
    data = os.urandom(size)
    assert await stage(tmp_path, key, data) == {"body": data, "metadata": {"doc_id": "d1"}}


async def test_a_file_of_a_few_kib_is_staged_without_a_worker_thread(tmp_path: Path) -> None:
    """Up to ``READ_ON_LOOP_MAX`` a file is read on the event loop, as a form's small files are (the hop
    cost more than the read); a bigger small file still goes to a worker thread. Shown by keeping the
    only worker thread busy: the 4 KiB file is stored meanwhile, the 64 KiB + 1 one waits."""
    few, more = tmp_path / "few.txt", tmp_path / "more.txt"
    few.write_bytes(b"a" * 4096)
    more.write_bytes(b"b" * (READ_ON_LOOP_MAX + 1))
    threads = anyio.to_thread.current_default_thread_limiter()
    total = threads.total_tokens
    release = anyio.Event()

    async def hold_the_thread(*, task_status: TaskStatus[None]) -> None:
        async with threads:
            task_status.started()
            await release.wait()

    staging = Staging(settings_for())
    await staging.open()  # before the thread is held: resolving the host may take one
    try:
        threads.total_tokens = 1
        async with anyio.create_task_group() as tg:
            await tg.start(hold_the_thread)
            with anyio.fail_after(10):
                staged = await staging.put(FileItem("few.txt", few, 4096, few.stat().st_mtime_ns), "s3put/few.txt", {})
            assert staged.md5 == hashlib.md5(b"a" * 4096).hexdigest()
            item = FileItem("more.txt", more, READ_ON_LOOP_MAX + 1, more.stat().st_mtime_ns)
            with anyio.move_on_after(0.3) as waiting:
                await staging.put(item, "s3put/more.txt", {})
            assert waiting.cancelled_caught
            release.set()
    finally:
        threads.total_tokens = total
        await staging.aclose()
    assert boto3_client().get_object(Bucket=MOTO.bucket, Key="s3put/few.txt")["Body"].read() == b"a" * 4096


_md5 = hashlib.md5


class CountingMd5:
    """``hashlib.md5`` counting the bytes given to ``update`` (``hashed``): how many passes a body costs.
    (Bytes given at construction are the test's own check, not counted.)"""

    hashed = 0

    def __init__(self, data: bytes = b"", *, usedforsecurity: bool = True) -> None:
        self._md5 = _md5(data, usedforsecurity=usedforsecurity)

    def update(self, data: bytes) -> None:
        CountingMd5.hashed += len(data)
        self._md5.update(data)

    def digest(self) -> bytes:
        return self._md5.digest()

    def hexdigest(self) -> str:
        return self._md5.hexdigest()


@pytest.mark.parametrize(("size", "passes"), [(200 * 1024, 1), (11 * 1024 * 1024 + 5, 2)])
async def test_a_file_sent_in_one_put_is_md5_hashed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, passes: int
) -> None:
    """Up to a part, the part's md5 (``Content-MD5``) is the file's (the manifest's): one pass serves
    both. In parts, each byte goes into its part's md5 and the file's."""
    monkeypatch.setattr(staging_module.hashlib, "md5", CountingMd5)
    CountingMd5.hashed = 0
    data = os.urandom(size)
    assert await stage(tmp_path, "s3put/hashed.bin", data) == {"body": data, "metadata": {"doc_id": "d1"}}
    assert CountingMd5.hashed == passes * size


async def test_a_key_too_long_for_our_multipart_goes_through_aiobotocore(tmp_path: Path) -> None:
    key = "s3put/long/" + "n" * 300 + ".pdf"
    data = os.urandom(6 * 1024 * 1024)
    assert await stage(tmp_path, key, data) == {"body": data, "metadata": {"doc_id": "d1"}}


async def test_a_file_that_shrinks_between_parts_fails_and_leaves_no_upload_open(tmp_path: Path) -> None:
    """The walk said 11 MiB; the file holds 6: the second part comes short, the upload is aborted."""
    src = tmp_path / "big.pdf"
    src.write_bytes(os.urandom(6 * 1024 * 1024))
    key = "s3put/shrunk/big.pdf"
    staging = Staging(settings_for())
    await staging.open()
    try:
        with pytest.raises(SourceFileError, match=r"big\.pdf: file shrank while being sent"):
            await staging.put(FileItem("big.pdf", src, 11 * 1024 * 1024, src.stat().st_mtime_ns), key, {})
    finally:
        await staging.aclose()
    assert open_uploads(key) == []
    assert "Contents" not in boto3_client().list_objects_v2(Bucket=MOTO.bucket, Prefix=key)


async def test_a_file_that_grew_after_the_walk_fails_and_leaves_no_upload_open(tmp_path: Path) -> None:
    """The walk said 11 MiB; the file holds a byte more: found when the last part is hashed, before it is
    sent, and the upload is aborted."""
    src = tmp_path / "big.pdf"
    src.write_bytes(os.urandom(11 * 1024 * 1024 + 1))
    key = "s3put/grown/big.pdf"
    staging = Staging(settings_for())
    await staging.open()
    try:
        with pytest.raises(SourceFileError, match=r"big\.pdf: file grew while being sent"):
            await staging.put(FileItem("big.pdf", src, 11 * 1024 * 1024, src.stat().st_mtime_ns), key, {})
    finally:
        await staging.aclose()
    assert open_uploads(key) == []
    assert "Contents" not in boto3_client().list_objects_v2(Bucket=MOTO.bucket, Prefix=key)


async def test_a_missing_staging_bucket_fails_the_check_with_what_to_fix() -> None:
    staging = Staging(settings_for(bucket="no-such-staging"))
    try:
        with pytest.raises(ConfigError, match=r"staging bucket no-such-staging does not exist at http://127\.0\.0\.1:"):
            await staging.open()
    finally:
        await staging.aclose()


def test_staging_needs_no_aiobotocore(tmp_path: Path) -> None:
    """The bucket check, a small file, a file in parts and a presigned URL, with aiobotocore and botocore
    unimportable: a usual run never loads them (~25 MiB); a key only aiobotocore sends says to install it."""
    (tmp_path / "small.txt").write_bytes(b"small")
    (tmp_path / "big.pdf").write_bytes(os.urandom(6 * 1024 * 1024))
    code = f"""
import sys
sys.modules["aiobotocore"] = sys.modules["botocore"] = None
import anyio, dataclasses, os, urllib.request
import ingest
from ingest.models import FileItem
from ingest.platforms.viking.staging import Staging, StagingSettings

async def main():
    settings = StagingSettings(endpoint={MOTO.url()!r}, bucket={MOTO.bucket!r}, prefix="", region={MOTO.region!r},
                               access_key="x", secret_key="x", path_style=True, part_size=5 * 1024 * 1024)
    staging = Staging(settings)
    await staging.open()
    try:
        for name in ("small.txt", "big.pdf"):
            path = os.path.join({str(tmp_path)!r}, name)
            st = os.stat(path)
            staged = await staging.put(FileItem(name, path, st.st_size, st.st_mtime_ns), "nobotocore/" + name, {{}})
            url = await staging.presign(staged.key, 60)
            with urllib.request.build_opener(urllib.request.ProxyHandler({{}})).open(url) as resp:
                assert resp.read() == open(path, "rb").read()
        try:
            await staging.put(FileItem("small.txt", path, st.st_size, st.st_mtime_ns), "nobotocore/./x", {{}})
        except ingest.ConfigError as exc:
            print(exc)
    finally:
        await staging.aclose()
    assert not any(name.startswith(("aiobotocore", "botocore")) and sys.modules[name] for name in sys.modules)

anyio.run(main)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "goes through aiobotocore: pip install 'ingest[viking]'" in result.stdout


class FlakyStore:
    """A real HTTP server in front of moto that answers the first ``failures`` ``UploadPart`` requests for
    part ``part`` with a bare 500 (calling ``on_failure`` first) and passes every other request through: a
    store failing mid-upload."""

    def __init__(self, *, part: int, failures: int, on_failure: Callable[[], None] | None = None) -> None:
        self.part, self.failures, self.on_failure = part, failures, on_failure
        self.seen: list[str] = []  # "METHOD partNumber-or-query" of every request, in order
        self.received: list[str] = []  # "partNumber md5" of every part received whole

    async def handle(self, request: web.Request) -> web.StreamResponse:
        number = request.query.get("partNumber")
        self.seen.append(f"{request.method} {number or request.query_string}")
        body = await request.read()
        if number is not None:
            self.received.append(f"{number} {hashlib.md5(body).hexdigest()}")
        if number == str(self.part) and self.failures > 0:
            self.failures -= 1
            if self.on_failure is not None:
                self.on_failure()
            return web.Response(status=500)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        url = MOTO.url() + request.path_qs
        async with (
            aiohttp.ClientSession() as session,
            session.request(request.method, url, headers=headers, data=io.BytesIO(body)) as resp,
        ):
            payload = await resp.read()
            passed = {k: v for k, v in resp.headers.items() if k.lower() in ("etag", "content-type")}
            return web.Response(status=resp.status, body=payload, headers=passed)

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # parts of 5 MiB
        app.router.add_route("*", "/{tail:.*}", self.handle)
        async with serve_in_background(app) as url:
            yield url


async def stage_through(store: FlakyStore, tmp_path: Path, key: str, data: bytes) -> None:
    src = tmp_path / "big.pdf"
    src.write_bytes(data)
    async with store.serve() as url:
        staging = Staging(settings_for(endpoint=url))
        await staging.open()
        try:
            await staging.put(FileItem("big.pdf", src, len(data), src.stat().st_mtime_ns), key, {})
        finally:
            await staging.aclose()


async def test_a_part_the_store_fails_once_is_sent_again(tmp_path: Path) -> None:
    """The part is not kept in memory: it is read from the file again, the same bytes under the same
    ``Content-MD5``."""
    store = FlakyStore(part=2, failures=1)
    data = os.urandom(11 * 1024 * 1024)
    await stage_through(store, tmp_path, "s3put/flaky/once.pdf", data)
    # Several parts are in flight at once, so part 3 may go out while part 2 is sent again.
    assert store.seen[:2] == ["HEAD ", "POST uploads"]
    assert sorted(store.seen[2:-1]) == ["PUT 1", "PUT 2", "PUT 2", "PUT 3"]
    assert store.seen[-1].startswith("POST uploadId=")
    part_2 = hashlib.md5(data[5 * 1024 * 1024 : 10 * 1024 * 1024]).hexdigest()
    assert [line for line in store.received if line.startswith("2 ")] == [f"2 {part_2}", f"2 {part_2}"]
    assert boto3_client().get_object(Bucket=MOTO.bucket, Key="s3put/flaky/once.pdf")["Body"].read() == data


async def test_a_file_changed_before_a_part_is_sent_again_is_refused_and_leaves_no_upload_open(
    tmp_path: Path,
) -> None:
    """Part 2 fails once; meanwhile the file is rewritten in place (same size). Sent again from the file,
    its bytes no longer match what was hashed and signed: the body is cut short before its end (the store
    never receives that part whole, whether or not it checks ``Content-MD5``: moto does not), the upload
    is aborted and the file fails with one line saying why."""
    data = os.urandom(11 * 1024 * 1024)
    src = tmp_path / "big.pdf"

    def rewrite_part_2() -> None:
        with open(src, "r+b") as f:
            f.seek(6 * 1024 * 1024)
            f.write(b"changed")

    store = FlakyStore(part=2, failures=1, on_failure=rewrite_part_2)
    key = "s3put/flaky/changed.pdf"
    with pytest.raises(SourceFileError) as raised:
        await stage_through(store, tmp_path, key, data)
    assert str(raised.value) == "big.pdf: file changed while being sent; rerun to send it"
    assert [line for line in store.received if line.startswith("2 ")] == [
        f"2 {hashlib.md5(data[5 * 1024 * 1024 : 10 * 1024 * 1024]).hexdigest()}"
    ]
    assert not any(line.startswith("POST uploadId=") for line in store.seen)  # never completed
    assert store.seen[-1].startswith("DELETE uploadId=")
    assert open_uploads(key) == []
    assert "Contents" not in boto3_client().list_objects_v2(Bucket=MOTO.bucket, Prefix=key)


async def test_a_file_in_parts_is_never_held_a_part_at_a_time(tmp_path: Path) -> None:
    """Parts are streamed from the file (read in chunks, hashed first, sent after): the Python heap's peak
    while ``STREAMED_PARTS_IN_FLIGHT`` parts of 5 MiB go out stays under one part. Holding the parts,
    as a bucket source's upload still does, took two."""
    data = os.urandom(8 * 5 * 1024 * 1024 + 5)
    src = tmp_path / "big.pdf"
    src.write_bytes(data)
    item = FileItem("big.pdf", src, len(data), src.stat().st_mtime_ns)
    staging = Staging(settings_for(), chunk_size=256 * 1024)
    await staging.open()
    tracemalloc.start()
    try:
        staged = await staging.put(item, "s3put/streamed/big.pdf", {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await staging.aclose()
    assert staged.md5 == hashlib.md5(data).hexdigest()
    assert peak < 5 * 1024 * 1024, peak
    assert boto3_client().get_object(Bucket=MOTO.bucket, Key="s3put/streamed/big.pdf")["Body"].read() == data


async def test_a_part_the_store_keeps_failing_aborts_the_upload(tmp_path: Path) -> None:
    """Three attempts (as aiobotocore made), then the upload is aborted and the error is transient: the
    engine sends the file again later."""
    store = FlakyStore(part=2, failures=99)
    with pytest.raises(TransientError, match=r"staging big\.pdf: the staging store http://\S+ failed \(500\)"):
        await stage_through(store, tmp_path, "s3put/flaky/never.pdf", os.urandom(11 * 1024 * 1024))
    sent = store.seen[2:-1]
    assert (sent.count("PUT 1"), sent.count("PUT 2"), sent.count("PUT 3") <= 1) == (1, 3, True)
    assert not any(line.startswith("POST uploadId=") for line in store.seen)  # never completed
    assert store.seen[-1].startswith("DELETE uploadId=")
    assert open_uploads("s3put/flaky/never.pdf") == []
