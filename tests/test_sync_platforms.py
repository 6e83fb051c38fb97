"""Listing and deleting on every platform (issue 9, "Platforms and emulators"), client against emulator
over real HTTP: ``Target.list_documents`` pages lazily through more than one page, ``Target.delete`` is
idempotent and counts unknown ids as gone, the per-document test hook (``/_emulator/documents``) shows
every version of a file and same-name files in different folders apart, and the emulators refuse
malformed list/delete requests with the documented envelope.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ingest.config import EngineConfig, RunConfig, SourceConfig, SyncConfig
from ingest.errors import PermanentError
from ingest.platforms.base import RemoteDocument
from tests.harness import HARNESSES, KEYUE, MOI, VIKING

pytestmark = pytest.mark.anyio

#: Where each target reads its page size, and the name of its list request in ``/_emulator/stats``.
PAGE_SIZE = {
    "moi": ("ingest.platforms.moi.target", "CATALOG_PAGE"),
    "keyue": ("ingest.platforms.keyue.api", "PAGE_SIZE"),
    "viking": ("ingest.platforms.viking.target", "LIST_CHUNK"),
}
LIST_REQUEST = {
    "moi": "POST /catalog/file/list",
    "keyue": "GET /open/v1/api/v2/llm/document/list",
    "viking": "POST /api/knowledge/doc/list",
}
#: An id of the platform's shape that it never handed out.
UNKNOWN_ID = {"moi": "123456789012345", "keyue": str(uuid.uuid4()), "viking": "d_never_added_0123456789"}


@pytest.fixture(params=HARNESSES, ids=lambda h: h.name)
def harness(request: pytest.FixtureRequest) -> Any:
    return request.param


def config_for(deployment: Any, src: Path, manifest: Path) -> RunConfig:
    return RunConfig(
        source=SourceConfig(path=src),
        target=deployment.target_config,
        engine=EngineConfig(concurrency=8, poll_initial=0.02, poll_max=0.2),
        manifest=manifest,
        quiet=True,
    )


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def platform(dep: Any) -> str:
    return str(dep.target_config.type)


async def list_calls(dep: Any) -> int:
    return (await dep.request_counts()).get(LIST_REQUEST[platform(dep)], 0)


async def test_list_pages_lazily_through_every_document(
    harness: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven documents at three a page: several list requests, the first document after one of them
    (a page at a time, never the whole listing), and every document exactly once."""
    files = {f"f{i}.txt": f"body {i}".encode() for i in range(7)}
    write(tmp_path / "src", files)
    async with harness.start(tmp_path / "data") as dep:
        assert (await dep.run(config_for(dep, tmp_path / "src", tmp_path / "m.db"))).exit_code == 0
        module, name = PAGE_SIZE[platform(dep)]
        monkeypatch.setattr(module + "." + name, 3)
        async with dep.target() as target:
            assert target.features.can_list
            before = await list_calls(dep)
            listing = target.list_documents()
            first = await anext(listing)
            assert await list_calls(dep) - before == 1
            listed = [first] + [doc async for doc in listing]
        pages = await list_calls(dep) - before
        expected = {d["id"]: d for d in await dep.documents()}
    assert all(isinstance(d, RemoteDocument) for d in listed)
    assert sorted(d.remote_id for d in listed) == sorted(expected)
    assert sorted(d.name for d in listed) == sorted(files)
    assert pages >= 3
    assert {d.remote_id: d.size for d in listed} == {i: d["size"] for i, d in expected.items()}


async def test_receipt_ids_are_the_ids_listed_and_deleted(harness: Any, tmp_path: Path) -> None:
    """``Receipt.remote_id`` is what the listing shows and ``delete`` takes; a delete is idempotent and
    an id the platform never knew counts as gone."""
    write(tmp_path / "src", {"a.txt": b"alpha", "b.txt": b"beta"})
    async with harness.start(tmp_path / "data") as dep:
        foreign = await dep.add_foreign_document("c.txt", b"gamma")
        async with dep.target() as target:
            assert target.features.can_delete
            listed = {d.name: d.remote_id async for d in target.list_documents()}
            assert listed["c.txt"] == foreign
            unknown = UNKNOWN_ID[platform(dep)]
            assert sorted(await target.delete([foreign, unknown])) == sorted([foreign, unknown])
            assert await target.delete([foreign]) == [foreign]
            remaining = {d.name async for d in target.list_documents()}
        documents = await dep.documents()
    assert "c.txt" not in remaining
    assert all(d["id"] != foreign or d["state"] == "deleting" for d in documents)


async def test_changed_file_sent_again_is_a_second_version_where_ids_are_per_version(
    harness: Any, tmp_path: Path
) -> None:
    """With ``--on-change keep`` (the engine before replace on change) a changed file is re-sent without
    deleting anything: where each version has its own id (``version_ids="new"``) the per-document view
    shows the stale version next to the new one; where the id is reused (VikingDB) the platform
    overwrote it. (Replace on change, the default, is checked in ``test_conformance_sync.py``.)"""
    write(tmp_path / "src", {"doc1.txt": b"version one", "other.txt": b"unchanged"})
    async with harness.start(tmp_path / "data") as dep:
        keep = config_for(dep, tmp_path / "src", tmp_path / "m.db")
        keep = keep.model_copy(update={"sync": SyncConfig(on_change="keep")})
        await dep.run(keep)
        first = {d["name"]: d for d in await dep.documents()}
        (tmp_path / "src" / "doc1.txt").write_bytes(b"version two, longer")
        assert (await dep.run(keep)).done == 1
        versions = [d for d in await dep.documents() if d["name"] == "doc1.txt"]
        async with dep.target() as target:
            policy = target.features.version_ids
        stored = await dep.stored()
    assert stored["doc1.txt"].size == len(b"version two, longer")  # the by-path hook is unchanged
    sizes = sorted(d["size"] for d in versions)
    if policy == "new":
        assert sizes == [len(b"version one"), len(b"version two, longer")]
        assert len({d["id"] for d in versions}) == 2
        assert first["doc1.txt"]["id"] in {d["id"] for d in versions}
    else:
        assert sizes == [len(b"version two, longer")]
        assert [d["id"] for d in versions] == [first["doc1.txt"]["id"]]


async def test_same_name_in_different_folders_are_two_documents(harness: Any, tmp_path: Path) -> None:
    write(tmp_path / "src", {"a/x.txt": b"in a", "b/x.txt": b"in b, not a"})
    async with harness.start(tmp_path / "data") as dep:
        assert (await dep.run(config_for(dep, tmp_path / "src", tmp_path / "m.db"))).exit_code == 0
        documents = [d for d in await dep.documents() if d["name"] == "x.txt"]
        stored = await dep.stored()
    assert sorted((d["folder"], d["size"]) for d in documents) == [("a", 4), ("b", 11)]
    assert {d["state"] for d in documents} == {"done"}
    assert all(len(d["md5"]) == 32 and d["created"] > 0 for d in documents)
    assert set(stored) == {"a/x.txt", "b/x.txt"}


async def test_documents_deleted_behind_our_back_leave_the_view(harness: Any, tmp_path: Path) -> None:
    async with harness.start(tmp_path / "data") as dep:
        doc_id = await dep.add_foreign_document("foreign/z.txt", b"someone else's")
        assert [d["name"] for d in await dep.documents() if d["id"] == doc_id] == ["z.txt"]
        await dep.delete_behind_our_back(doc_id)
        left = [d for d in await dep.documents() if d["id"] == doc_id]
    assert all(d["state"] == "deleting" for d in left)


# --- strict emulators: malformed list and delete requests ------------------------------------------------


async def moi_call(url: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + path, json=body, headers={"moi-key": MOI.api_key}) as r,
    ):
        return r.status, await r.json()


@pytest.mark.parametrize(
    "body",
    [
        {"page": 1, "page_size": 20},  # no filters
        {"filters": [{"name": "volume_id", "values": []}]},
        {"filters": [{"name": "volume_id", "values": ["1001", "1002"]}]},
        {"filters": [{"name": "volume_id", "values": ["1001"]}, {"name": "volume_id", "values": ["1001"]}]},
        {"filters": [{"name": "owner", "values": ["x"]}, {"name": "volume_id", "values": ["1001"]}]},
        {"filters": [{"name": "volume_id", "values": ["1001"]}], "page_size": 0},
        {"filters": [{"name": "volume_id", "values": ["1001"]}], "page": "1"},
        {"filters": [{"name": "volume_id", "values": ["1001"]}], "order": "sideways"},
        {"filters": [{"name": "volume_id", "values": ["1001"]}], "pageSize": 10},
        {"filters": [{"name": "volume_id", "values": ["1001"]}], "common_condition": {}},
    ],
)
async def test_moi_emulator_refuses_malformed_file_lists(tmp_path: Path, body: dict[str, Any]) -> None:
    async with MOI.start(tmp_path / "data") as dep:
        status, reply = await moi_call(dep.url, "/catalog/file/list", body)
    assert (status, reply["code"], reply["data"]) == (400, "ErrParamInvalid", None)
    assert reply["msg"]
    assert reply["request_id"]


async def test_moi_emulator_file_list_forms_and_delete_errors(tmp_path: Path) -> None:
    """The flat form (MOI 5.0, Go SDK) and the Python SDK helper's ``common_condition`` form list alike;
    delete wants ``{"id"}`` and answers 404 ``ErrNotFound`` for a file it does not hold."""
    async with MOI.start(tmp_path / "data") as dep:
        file_id = await dep.add_foreign_document("dir/a.txt", b"abc")
        flt = [{"name": "volume_id", "values": [MOI.volume_id]}]
        flat = await moi_call(dep.url, "/catalog/file/list", {"filters": flt, "page": 1, "page_size": 20})
        nested = await moi_call(
            dep.url,
            "/catalog/file/list",
            {"keyword": "", "common_condition": {"page": 1, "page_size": 10, "order": "desc", "filters": flt}},
        )
        by_name = await moi_call(
            dep.url,
            "/catalog/file/list",
            {"filters": [*flt, {"name": "file_name", "values": ["a.txt"], "fuzzy": False}]},
        )
        missing_volume = await moi_call(
            dep.url, "/catalog/file/list", {"filters": [{"name": "volume_id", "values": ["9"]}]}
        )
        no_id = await moi_call(dep.url, "/catalog/file/delete", {})
        bad_id = await moi_call(dep.url, "/catalog/file/delete", {"id": "../x"})
        extra = await moi_call(dep.url, "/catalog/file/delete", {"id": file_id, "ids": [file_id]})
        deleted = await moi_call(dep.url, "/catalog/file/delete", {"id": file_id})
        again = await moi_call(dep.url, "/catalog/file/delete", {"id": file_id})
    for status, reply in (flat, nested, by_name):
        assert status == 200
        assert reply["data"]["total"] == 1
        (entry,) = reply["data"]["list"]
        assert (entry["id"], entry["name"], entry["file_type"], entry["file_ext"]) == (file_id, "a.txt", "file", "txt")
        assert (entry["size"], entry["volume_id"], entry["show_path"]) == (3, MOI.volume_id, "dir/a.txt")
    assert (missing_volume[0], missing_volume[1]["code"]) == (404, "ErrNotFound")
    for status, reply in (no_id, bad_id, extra):
        assert (status, reply["code"]) == (400, "ErrParamInvalid")
    assert deleted == (200, {**deleted[1], "code": "OK", "data": {"id": file_id}})
    assert (again[0], again[1]["code"]) == (404, "ErrNotFound")


async def test_moi_dedup_replace_is_the_platforms_own_replace(tmp_path: Path) -> None:
    """An upload with dedup strategy replace takes the place of the same-name file in the catalog."""
    from ingest.models import FileItem
    from ingest.platforms.moi.wire import DedupConfig

    (tmp_path / "v1").write_bytes(b"one")
    (tmp_path / "v2").write_bytes(b"two!")
    async with MOI.start(tmp_path / "data") as dep, dep.target() as target:
        for body in ("v1", "v2"):
            item = FileItem("r.txt", tmp_path / body, (tmp_path / body).stat().st_size, 0)
            await target.client.upload_files(MOI.volume_id, [item], dedup=DedupConfig(by=["name"], strategy="replace"))
        documents = [d for d in await dep.documents() if d["name"] == "r.txt"]
    assert [d["size"] for d in documents] == [4]


async def keyue_call(url: str, body: Any) -> dict[str, Any]:
    headers = {"token": KEYUE.token, "uid": KEYUE.uid, "username": KEYUE.username}
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + "/open/v1/api/v2/llm/document/batchDelete", json=body, headers=headers) as r,
    ):
        assert r.status == 200
        return await r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "body",
    [{}, {"documentIds": []}, {"documentIds": "abc"}, {"documentIds": [1]}, {"documentIds": ["a"], "dirId": "0"}],
)
async def test_keyue_emulator_refuses_malformed_batch_deletes(tmp_path: Path, body: Any) -> None:
    async with KEYUE.start(tmp_path / "data") as dep:
        reply = await keyue_call(dep.url, body)
    assert reply["code"] == 4002012
    assert reply["msg"] == "服务器处理该请求失败,请检查请求是否合法"
    assert reply["tip"]
    assert reply["requestId"]


async def test_keyue_batch_delete_fails_whole_with_4007283_for_an_unknown_id(tmp_path: Path) -> None:
    async with KEYUE.start(tmp_path / "data") as dep:
        doc_id = await dep.add_foreign_document("k.txt", b"kept")
        refused = await keyue_call(dep.url, {"documentIds": [doc_id, str(uuid.uuid4())]})
        kept = [d["id"] for d in await dep.documents()]
        done = await keyue_call(dep.url, {"documentIds": [doc_id]})
        left = await dep.documents()
    assert (refused["code"], refused["msg"]) == (4007283, "文档删除失败")
    assert kept == [doc_id]  # all or nothing
    assert (done["code"], done["msg"], done["data"]) == (200, "OK", None)
    assert left == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/knowledge/doc/delete", {}),
        ("/api/knowledge/doc/delete", {"doc_id": 5}),
        ("/api/knowledge/doc/delete", {"doc_id": "a", "doc_ids": ["a"]}),
        ("/api/knowledge/doc/list", {"offset": 0, "limit": 101}),
        ("/api/knowledge/doc/list", {"offset": 100}),
        ("/api/knowledge/doc/list", {"offset": -1, "limit": 10}),
    ],
)
async def test_viking_emulator_refuses_malformed_list_and_delete(tmp_path: Path, path: str, body: Any) -> None:
    async with VIKING.start(tmp_path / "data") as dep, dep.target() as target:
        with pytest.raises(PermanentError) as caught:
            await target.api.call("POST", path, {**target.api.kb_fields, **body}, what="test")
    assert (caught.value.status, caught.value.code) == (400, "1000003")
