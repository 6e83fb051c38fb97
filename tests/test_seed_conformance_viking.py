"""Issue 13 item 15, seed conformance for VikingDB ``doc/add`` (seed 003) and ``doc/v2/add`` (the official
vikingdb SDK's ``add_doc_v2``), both directions: what the seed allows is accepted, what it refuses is refused
with the documented code, and no message shows an internal type name."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ingest.emulators.kit.server import serve_in_background
from ingest.emulators.viking import VikingEmulatorConfig, create_viking_app
from ingest.platforms.viking.signing import Credentials, sign
from tests.harness import MOTO
from tests.test_emulator_viking import AK, KB, SK, presigned, stage

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the SDK's pydantic models warn on import
    from vikingdb.knowledge.models.doc import AddDocV2Request, MetaItem

pytestmark = pytest.mark.anyio

READER_AK, READER_SK = "AKLTreader", "reader-secret"


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    config = VikingEmulatorConfig(
        data_dir=tmp_path / "vk", access_key=AK, secret_key=SK, collections=(KB, "kb2"), tos_endpoint=MOTO.url(),
        process_delay_ms=20, restricted_keys=((READER_AK, READER_SK, ("kb2",)),),
    )  # fmt: skip
    async with serve_in_background(create_viking_app(config)) as served:
        yield served


async def call(
    url: str, path: str, body: Any, *, content_type: str = "application/json", ak: str = AK, sk: str = SK
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body, ensure_ascii=False).encode()
    headers = {"Content-Type": content_type, "Host": url.removeprefix("http://")}
    headers.update(sign("POST", path, [], headers, data, Credentials(ak, sk, "cn-beijing")))
    async with aiohttp.ClientSession() as http, http.post(url + path, data=data, headers=headers) as r:
        return r.status, await r.json()


async def add(base: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    return await call(base, "/api/knowledge/doc/add", {"collection_name": KB, **fields})


async def test_url_add_without_doc_id_name_or_type(url: str) -> None:
    """Seed 003 marks doc_id, doc_name and doc_type optional: an id is generated, name and type come from
    the URL."""
    link = await presigned(await stage(b"hello", name="notes.md"))
    status, body = await add(url, add_type="url", url=link)
    assert (status, body["code"]) == (200, 0), body
    doc_id = body["data"]["doc_id"]
    assert doc_id.startswith("_sys_auto_gen_doc_id-")
    status, info = await call(url, "/api/knowledge/doc/info", {"collection_name": KB, "doc_id": doc_id})
    assert (info["data"]["doc_name"], info["data"]["doc_type"]) == ("notes.md", "markdown")


async def test_meta_fields_follow_the_seed(url: str) -> None:
    """meta's field_name/field_type/field_value are optional and field_type is not limited to a list; a
    value that contradicts a known type is still refused."""
    link = await presigned(await stage(b"m", name="m.txt"))
    loose = [
        {"field_name": "行业", "field_value": "企业服务"},
        {"field_name": "day", "field_type": "date", "field_value": "2024-03-25"},
        {"field_name": "是否公开", "field_type": "bool", "field_value": True},
    ]
    status, body = await add(url, add_type="url", url=link, doc_id="m1", doc_name="m.txt", doc_type="txt", meta=loose)
    assert (status, body["code"]) == (200, 0), body
    wrong = [{"field_name": "n", "field_type": "int64", "field_value": "x"}]
    status, body = await add(url, add_type="url", url=link, doc_id="m2", meta=wrong)
    assert (status, body["code"]) == (400, 1000003)


@pytest.mark.parametrize("value", [7, None, [1], {"a": 1}, True])
async def test_messages_never_show_internal_type_names(url: str, value: Any) -> None:
    status, body = await add(url, add_type="url", url="http://127.0.0.1/a.txt", doc_id=value if value else 0)
    assert (status, body["code"]) == (400, 1000003)
    for word in ("int", "NoneType", "list", "dict", "bool", "str"):
        assert f"'{word}'" not in body["message"]
        assert f" {word})" not in body["message"]
    assert "got a " in body["message"] or "got an " in body["message"] or "got null" in body["message"]


async def test_content_type_must_be_json(url: str) -> None:
    """The seed's header is Content-Type: application/json; a signed text/plain request is 400 1000003."""
    status, body = await call(
        url, "/api/knowledge/doc/info", {"collection_name": KB, "doc_id": "x"}, content_type="text/plain"
    )
    assert (status, body["code"]) == (400, 1000003)
    assert "Content-Type" in body["message"]


async def test_restricted_key_gets_1000002_no_permission(url: str) -> None:
    """An access key limited to kb2 gets 403 / 1000002 "no permission" on kb1, and works on kb2."""
    body = {"collection_name": KB, "doc_id": "x"}
    status, reply = await call(url, "/api/knowledge/doc/info", body, ak=READER_AK, sk=READER_SK)
    assert (status, reply["code"], reply["message"]) == (403, 1000002, "no permission")
    status, reply = await call(url, "/api/knowledge/doc/list", {"collection_name": "kb2"}, ak=READER_AK, sk=READER_SK)
    assert (status, reply["code"]) == (200, 0), reply


async def test_doc_v2_add_in_the_official_sdk_shape(url: str) -> None:
    """``doc/v2/add`` with the body the vikingdb SDK's add_doc_v2 builds; content duplicates are refused."""
    link = await presigned(await stage(b"v2 body", name="v2.txt"))
    request = AddDocV2Request(
        uri=link, doc_id="v2doc", doc_name="v2.txt", doc_type="txt",
        tag_list=[MetaItem(field_name="k", field_type="string", field_value="v")], path_segments=["a", "b"],
    )  # fmt: skip
    payload = {"collection_name": KB, **request.model_dump(by_alias=True, exclude_none=True)}
    status, body = await call(url, "/api/knowledge/doc/v2/add", payload)
    assert (status, body["code"]) == (200, 0), body
    assert body["data"]["doc_id"] == "v2doc"
    again = {**payload, "doc_id": "v2copy"}
    status, body = await call(url, "/api/knowledge/doc/v2/add", again)
    assert (status, body["code"]) == (400, 1000003)
    assert "v2doc" in body["message"]
    status, body = await call(url, "/api/knowledge/doc/v2/add", {"collection_name": KB, "uri": "ftp-only"})
    assert (status, body["code"]) == (400, 1000003)
