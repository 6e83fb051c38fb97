"""The VikingDB emulator, driven over real HTTP on 127.0.0.1 with signed requests, reading staged
objects from a real moto S3 server on loopback."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from ingest.emulators.kit.server import serve_in_background
from ingest.emulators.viking import VIKING_STATE, VikingEmulatorConfig, VikingState, create_viking_app
from ingest.emulators.viking.doctypes import SIZE_LIMITS
from ingest.platforms.viking.signing import Credentials, sign
from tests.harness import MOTO

pytestmark = pytest.mark.anyio

AK, SK = "AKLTemulatortest", "emulator-secret"
KB = "kb1"
DELAY_MS = 80


@dataclass
class Emulator:
    url: str
    app: Any
    http: aiohttp.ClientSession

    @property
    def state(self) -> VikingState:
        return self.app[VIKING_STATE]

    async def call(
        self,
        path: str,
        body: Any = None,
        *,
        secret: str = SK,
        region: str = "cn-beijing",
        with_host: bool = True,
        method: str = "POST",
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, Any], Any]:
        """A request signed like the SDKs sign theirs; ``raw`` replaces the body after signing."""
        data = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        if with_host:
            headers["Host"] = self.url.removeprefix("http://")
        headers.update(sign(method, path, [], headers, data, Credentials(AK, secret, region)))
        async with self.http.request(method, self.url + path, data=data if raw is None else raw, headers=headers) as r:
            return r.status, await r.json(), r.headers

    async def add(self, **fields: Any) -> tuple[int, dict[str, Any]]:
        status, body, _ = await self.call("/api/knowledge/doc/add", {"collection_name": KB, **fields})
        return status, body

    async def info(self, doc_id: str) -> tuple[int, dict[str, Any]]:
        status, body, _ = await self.call("/api/knowledge/doc/info", {"collection_name": KB, "doc_id": doc_id})
        return status, body

    async def wait_status(self, doc_id: str, wanted: int) -> dict[str, Any]:
        with anyio.fail_after(5):
            while True:  # polling, as a client does: the emulator has no push notification
                status, body = await self.info(doc_id)
                assert status == 200, body
                if body["data"]["status"]["process_status"] == wanted:
                    return body["data"]  # type: ignore[no-any-return]
                await anyio.sleep(0.02)

    async def files(self) -> list[dict[str, Any]]:
        async with self.http.get(self.url + "/_emulator/files") as r:
            return await r.json()  # type: ignore[no-any-return]


@pytest.fixture
def config(tmp_path: Path) -> VikingEmulatorConfig:
    return VikingEmulatorConfig(
        data_dir=tmp_path / "vk",
        access_key=AK,
        secret_key=SK,
        collections=(KB,),
        tos_endpoint=MOTO.url(),
        process_delay_ms=DELAY_MS,
        seed=3,
    )


async def running(config: VikingEmulatorConfig) -> AsyncIterator[Emulator]:
    app = create_viking_app(config)
    async with serve_in_background(app) as url, aiohttp.ClientSession() as http:
        yield Emulator(url, app, http)


@pytest.fixture
async def emu(config: VikingEmulatorConfig) -> AsyncIterator[Emulator]:
    async for emulator in running(config):
        yield emulator


def s3() -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=MOTO.url(), region_name=MOTO.region, aws_access_key_id="x", aws_secret_access_key="x"
    )


async def stage(data: bytes, name: str = "a.txt", **metadata: str) -> str:
    """Put an object in the moto bucket under a fresh prefix; returns its key."""
    key = f"emu-{uuid.uuid4().hex}/{name}"
    await anyio.to_thread.run_sync(lambda: s3().put_object(Bucket=MOTO.bucket, Key=key, Body=data, Metadata=metadata))
    return key


async def presigned(key: str) -> str:
    params = {"Bucket": MOTO.bucket, "Key": key}
    url: str = await anyio.to_thread.run_sync(lambda: s3().generate_presigned_url("get_object", Params=params))
    return url


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- signatures -------------------------------------------------------------------------------------------


async def test_ping_answers_without_a_signature(emu: Emulator) -> None:
    """GET /ping is a health check: 200 with the success envelope, signed or not (the SDK pings first)."""
    async with emu.http.get(emu.url + "/ping") as r:
        assert r.status == 200
        assert (await r.json())["code"] == 0


@pytest.mark.parametrize("with_host", [True, False])
async def test_both_signed_header_variants_are_accepted(emu: Emulator, with_host: bool) -> None:
    """A signature over content-type;host;x-content-sha256;x-date or without host is accepted."""
    status, body, headers = await emu.call(
        "/api/knowledge/collection/info", {"name": KB, "project": "default"}, with_host=with_host
    )
    assert (status, body["code"], body["message"]) == (200, 0, "success")
    assert body["data"]["collection_name"] == KB
    assert headers["X-Tt-Logid"] == body["request_id"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"secret": "wrong"}, "signature does not match"),
        ({"raw": b'{"name": "other"}'}, "X-Content-Sha256"),
        ({"region": "cn-shanghai"}, "region"),
    ],
)
async def test_bad_signatures_get_401_unauthorized(emu: Emulator, change: dict[str, Any], why: str) -> None:
    """A wrong secret key, a tampered body or another region is 401 code 1000001 "unauthorized"."""
    status, body, headers = await emu.call("/api/knowledge/collection/info", {"name": KB}, **change)
    assert (status, body["code"], body["message"]) == (401, 1000001, "unauthorized")
    assert why in headers["X-Emulator-Detail"]
    assert SK not in json.dumps(body) + headers["X-Emulator-Detail"]


async def test_unsigned_requests_are_refused(emu: Emulator) -> None:
    """A request without Authorization is 401 1000001."""
    async with emu.http.post(emu.url + "/api/knowledge/doc/info", json={"collection_name": KB}) as r:
        assert r.status == 401
        assert (await r.json())["code"] == 1000001


# --- doc/add and processing -------------------------------------------------------------------------------


async def test_url_add_downloads_processes_and_lists_the_document(emu: Emulator) -> None:
    """add_type url fetches the loopback URL; the document goes processing -> done, listed with md5."""
    data = "第一回 甄士隐梦幻识通灵\n".encode() * 50
    key = await stage(data, "red.txt", **{"source-path": "books/%E7%BA%A2.txt"})
    status, body = await emu.add(
        add_type="url", doc_id="doc_red", doc_name="red.txt", doc_type="txt", url=await presigned(key)
    )
    assert (status, body["code"]) == (200, 0), body
    assert body["data"]["doc_id"] == "doc_red"
    assert body["data"]["dedup_info"] == {"skip": False, "same_doc_ids": []}
    first = (await emu.info("doc_red"))[1]["data"]
    assert first["status"]["process_status"] == 2
    done = await emu.wait_status("doc_red", 0)
    assert (done["doc_size"], done["doc_hash"], done["doc_type"], done["meta"]) == (len(data), md5(data), "txt", "[]")
    [stored] = await emu.files()
    assert (stored["path"], stored["md5"], stored["uploads"]) == ("books/红.txt", md5(data), 1)
    assert stored["doc_id"] == "doc_red"


async def test_tos_add_reads_the_object_and_readding_overwrites(emu: Emulator) -> None:
    """add_type tos reads <bucket>/<key> from the S3 store; adding the same doc_id again overwrites it."""
    key = await stage(b"version one", "notes.md", **{"source-path": "notes.md"})
    meta = [{"field_name": "folder", "field_type": "string", "field_value": "top"}]
    status, body = await emu.add(add_type="tos", tos_path=f"{MOTO.bucket}/{key}", doc_id="doc_notes", meta=meta)
    assert (status, body["data"]["doc_id"]) == (200, "doc_notes")
    data = await emu.wait_status("doc_notes", 0)
    assert (data["doc_name"], data["doc_type"], data["tos_path"]) == ("notes.md", "markdown", f"{MOTO.bucket}/{key}")
    assert json.loads(data["meta"]) == meta
    key2 = await stage(b"version two!", "notes.md", **{"source-path": "notes.md"})
    await emu.add(add_type="tos", tos_path=f"{MOTO.bucket}/{key2}", doc_id="doc_notes")
    [stored] = await emu.files()
    assert (stored["size"], stored["md5"], stored["uploads"], stored["adds"]) == (12, md5(b"version two!"), 2, 2)


async def test_readding_a_failed_document_is_a_retry_not_a_second_upload(emu: Emulator) -> None:
    """Re-adding a doc_id whose processing failed counts in adds, not uploads (it is how one retries)."""
    emu.state.fail_rate = 1.0
    url = await presigned(await stage(b"retry me"))
    await emu.add(add_type="url", doc_id="doc_r", doc_name="a.txt", doc_type="txt", url=url)
    await emu.wait_status("doc_r", 1)
    emu.state.fail_rate = 0.0
    await emu.add(add_type="url", doc_id="doc_r", doc_name="a.txt", doc_type="txt", url=url)
    await emu.wait_status("doc_r", 0)
    [stored] = await emu.files()
    assert (stored["uploads"], stored["adds"]) == (1, 2)


async def test_tos_directory_adds_every_object_under_it(emu: Emulator) -> None:
    """A tos_path ending in '/' adds each object below it, named after its file."""
    key = await stage(b"one", "a.txt")
    folder = key.rsplit("/", 1)[0]
    await anyio.to_thread.run_sync(lambda: s3().put_object(Bucket=MOTO.bucket, Key=f"{folder}/b.pdf", Body=b"two"))
    status, body = await emu.add(add_type="tos", tos_path=f"{MOTO.bucket}/{folder}/")
    assert status == 200, body
    assert sorted(f["path"] for f in await emu.files()) == ["a.txt", "b.pdf"]


async def test_missing_objects_and_injected_failures_end_failed_with_documented_codes(
    emu: Emulator,
) -> None:
    """A download failure ends with failed_code 10002; --fail-rate 1 draws a documented failed_code."""
    await emu.add(add_type="tos", tos_path=f"{MOTO.bucket}/nowhere/x.txt", doc_id="doc_missing")
    missing = await emu.wait_status("doc_missing", 1)
    assert missing["status"]["failed_code"] == 10002
    assert "download failed" in missing["status"]["failed_msg"]
    emu.state.fail_rate = 1.0
    key = await stage(b"x")
    await emu.add(add_type="url", doc_id="doc_f", doc_name="a.txt", doc_type="txt", url=await presigned(key))
    failed = await emu.wait_status("doc_f", 1)
    assert failed["status"]["failed_code"] in (10001, 10002, 10003, 10005, 30001, 40004, 45002)
    assert failed["point_num"] == 0


async def test_documented_size_limits_fail_the_document(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A txt larger than the txt limit ends failed with failed_code 30001, nothing kept."""
    monkeypatch.setitem(SIZE_LIMITS, "txt", 10)
    key = await stage(b"x" * 11)
    await emu.add(add_type="tos", tos_path=f"{MOTO.bucket}/{key}", doc_id="doc_big")
    assert (await emu.wait_status("doc_big", 1))["status"]["failed_code"] == 30001
    assert await emu.files() == []


def url_add(**changes: Any) -> dict[str, Any]:
    return {
        "add_type": "url",
        "doc_id": "ok",
        "doc_name": "a",
        "doc_type": "txt",
        "url": "http://127.0.0.1/a",
        **changes,
    }


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({}, "add_type is required"),
        ({"add_type": "ftp"}, "add_type must be one of"),
        ({"add_type": "lark"}, "lark"),
        (url_add(doc_id="9bad"), "doc_id"),
        (url_add(doc_type="exe"), "doc_type"),
        (url_add(url="https://example.com/a"), "loopback"),
        (url_add(doc_name=""), "doc_name"),
        ({"add_type": "tos", "tos_path": "bucket-only"}, "tos_path"),
        (url_add(meta=[{"field_name": "n", "field_type": "int64", "field_value": "x"}]), "field_value"),
        (url_add(surprise=1), "unknown field 'surprise'"),
    ],
)  # fmt: skip
async def test_invalid_adds_are_400_invalid_request(emu: Emulator, fields: dict[str, Any], problem: str) -> None:
    """Every documented field is checked: 400, code 1000003, "invalid request:<what is wrong>"."""
    status, body = await emu.add(**fields)
    assert (status, body["code"]) == (400, 1000003), body
    assert body["message"].startswith("invalid request:")
    assert problem in body["message"]


async def test_unknown_knowledge_bases_are_1000005(emu: Emulator) -> None:
    """A collection name or resource id that does not exist is 400 "collection not exist"."""
    for kb in ({"collection_name": "nope"}, {"resource_id": "kb-0000"}, {"collection_name": KB, "project": "other"}):
        status, body, _ = await emu.call("/api/knowledge/doc/info", {**kb, "doc_id": "x"})
        assert (status, body["code"], body["message"]) == (400, 1000005, "collection not exist")


async def test_full_knowledge_base_refuses_new_documents_but_not_overwrites(emu: Emulator) -> None:
    """At the document limit a new doc_id is 400 1001010; re-adding an existing one still works."""
    emu.state.max_docs = 1
    key = await stage(b"x")
    url = await presigned(key)
    assert (await emu.add(add_type="url", doc_id="one", doc_name="a.txt", doc_type="txt", url=url))[0] == 200
    status, body = await emu.add(add_type="url", doc_id="two", doc_name="a.txt", doc_type="txt", url=url)
    assert (status, body["code"], body["message"]) == (400, 1001010, "doc num is exceed 1")
    assert (await emu.add(add_type="url", doc_id="one", doc_name="a.txt", doc_type="txt", url=url))[0] == 200


async def test_rate_limit_is_429_with_code_1000029(config: VikingEmulatorConfig) -> None:
    """Past --rate-limit, requests get 429, code 1000029 and a Retry-After."""
    async for emu in running(replace(config, rate_limit=1.0)):
        results = [await emu.call("/api/knowledge/collection/info", {"name": KB}) for _ in range(3)]
    limited = [(s, b, h) for s, b, h in results if s == 429]
    assert limited
    assert all(b["code"] == 1000029 and int(h["Retry-After"]) >= 1 for _, b, h in limited)


async def test_dedup_reports_and_skips_same_content(emu: Emulator) -> None:
    """dedup.content_dedup lists documents with the same content; auto_skip then stores nothing."""
    key = await stage(b"same")
    url = await presigned(key)
    await emu.add(add_type="url", doc_id="first", doc_name="a.txt", doc_type="txt", url=url)
    dedup = {"content_dedup": True, "doc_name_dedup": False, "auto_skip": True}
    _, body = await emu.add(add_type="url", doc_id="second", doc_name="b.txt", doc_type="txt", url=url, dedup=dedup)
    assert body["data"]["dedup_info"] == {"skip": True, "same_doc_ids": ["first"]}
    assert (await emu.info("second"))[1]["code"] == 1001001


# --- list, delete, persistence ----------------------------------------------------------------------------


async def test_list_pages_newest_first_and_filters_by_id(emu: Emulator) -> None:
    """doc/list: newest first, offset/limit paging, doc_id_list filter, limit required past offset 100."""
    url = await presigned(await stage(b"x"))
    for i in range(3):
        await emu.add(add_type="url", doc_id=f"d{i}", doc_name="a.txt", doc_type="txt", url=url)
        await anyio.sleep(0.002)  # distinct add times
    _, page, _ = await emu.call("/api/knowledge/doc/list", {"collection_name": KB, "offset": 1, "limit": 1})
    assert (page["data"]["total_num"], page["data"]["count"]) == (3, 1)
    assert [d["doc_id"] for d in page["data"]["doc_list"]] == ["d1"]
    body = {"collection_name": KB, "filter": {"doc_id_list": ["d0", "zz"]}}
    _, only, _ = await emu.call("/api/knowledge/doc/list", body)
    assert [d["doc_id"] for d in only["data"]["doc_list"]] == ["d0"]
    status, bad, _ = await emu.call("/api/knowledge/doc/list", {"collection_name": KB, "offset": 100})
    assert (status, bad["code"]) == (400, 1000003)
    status, bad, _ = await emu.call("/api/knowledge/doc/list", {"collection_name": KB, "limit": 101})
    assert (status, bad["code"]) == (400, 1000003)


async def test_delete_shows_deleting_then_the_document_is_gone(emu: Emulator) -> None:
    """doc/delete: process_status 5 for the delay, then doc/info says 1001001 "doc not exist"."""
    url = await presigned(await stage(b"x"))
    await emu.add(add_type="url", doc_id="gone", doc_name="a.txt", doc_type="txt", url=url)
    status, _, _ = await emu.call("/api/knowledge/doc/delete", {"collection_name": KB, "doc_id": "gone"})
    assert status == 200
    assert (await emu.info("gone"))[1]["data"]["status"]["process_status"] == 5
    with anyio.fail_after(5):
        while True:
            status, body = await emu.info("gone")
            if status != 200:
                break
            await anyio.sleep(0.02)
    assert (status, body["code"], body["message"]) == (400, 1001001, "doc not exist")
    assert await emu.files() == []


async def test_state_survives_a_restart(config: VikingEmulatorConfig) -> None:
    """Documents and collections persist in the data dir across emulator restarts."""
    async for emu in running(config):
        url = await presigned(await stage(b"kept"))
        await emu.add(add_type="url", doc_id="kept", doc_name="a.txt", doc_type="txt", url=url)
    async for emu in running(config):
        data = await emu.wait_status("kept", 0)
        assert data["doc_hash"] == md5(b"kept")


async def test_collections_can_be_created_once(emu: Emulator) -> None:
    """collection/create returns a resource_id usable in every call; a second create is 1000004."""
    status, body, _ = await emu.call("/api/knowledge/collection/create", {"name": "kb2", "description": "d"})
    assert status == 200
    resource_id = body["data"]["resource_id"]
    _, info, _ = await emu.call("/api/knowledge/collection/info", {"resource_id": resource_id})
    assert (info["data"]["collection_name"], info["data"]["doc_num"]) == ("kb2", 0)
    status, again, _ = await emu.call("/api/knowledge/collection/create", {"name": "kb2"})
    assert (status, again["code"]) == (400, 1000004)


# --- download tasks ---------------------------------------------------------------------------------------


async def test_task_info_follows_a_download_task_to_its_attachment(emu: Emulator) -> None:
    """task/info: running with a percentage, then success with a working attachment link."""
    url = await presigned(await stage(b"x"))
    await emu.add(add_type="url", doc_id="in_zip", doc_name="a.txt", doc_type="txt", url=url)
    async with emu.http.post(emu.url + "/_emulator/tasks", json={"collection_name": KB}) as r:
        task_id = (await r.json())["task_id"]
    _, running_task, _ = await emu.call("/api/knowledge/task/info", {"task_id": task_id})
    assert running_task["data"]["status"] == "running"
    with anyio.fail_after(5):
        while True:
            done = (await emu.call("/api/knowledge/task/info", {"task_id": task_id}))[1]
            if done["data"]["status"] != "running":
                break
            await anyio.sleep(0.02)
    assert (done["data"]["status"], done["data"]["percentage"]) == ("success", 100)
    async with emu.http.get(done["data"]["attachment_link"]) as r:
        archive = zipfile.ZipFile(io.BytesIO(await r.read()))
    assert json.loads(archive.read("docs.jsonl"))["doc_id"] == "in_zip"


async def test_unknown_tasks_are_invalid_requests(emu: Emulator) -> None:
    """An unknown task_id is 400 with "invalid request:task not exist", as documented."""
    status, body, _ = await emu.call("/api/knowledge/task/info", {"task_id": "123"})
    assert (status, body["code"], body["message"]) == (400, 1000003, "invalid request:task not exist")


def test_serve_flags_build_a_working_config(tmp_path: Path) -> None:
    """`ingest serve viking` flags map onto the emulator config; bad values are usage errors."""
    import argparse

    from ingest.emulators.viking import add_viking_arguments, build_viking_app

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_viking_arguments(parser)
    args = parser.parse_args(
        ["--data-dir", str(tmp_path), "--access-key", AK, "--secret-key", SK, "--collection", KB,
         "--fail-rate", "0.5", "--fail-codes", "10002,30001", "--max-docs", "5", "--region", "any"]
    )  # fmt: skip
    app = build_viking_app(args)
    state = app[VIKING_STATE]
    assert (state.fail_rate, state.max_docs, state.config.fail_codes, state.config.region) == (
        0.5, 5, (10002, 30001), None,
    )  # fmt: skip
    with pytest.raises(argparse.ArgumentError, match="failed codes must be among"):
        parser.parse_args(["--data-dir", "x", "--access-key", AK, "--secret-key", SK, "--fail-codes", "123"])
