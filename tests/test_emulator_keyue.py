"""The Baidu Keyue emulator, driven over real HTTP on 127.0.0.1 like a client would."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ingest.emulators import emulator_specs
from ingest.emulators.keyue import KEYUE_STATE, MESSAGES, KeyueEmulatorConfig, KeyueState, create_keyue_app
from tests.emulator_client import ServedEmulator, serving

pytestmark = pytest.mark.anyio

TOKEN = "ky-token-123"
HEADERS = {"token": TOKEN, "uid": "u1", "username": "alice"}
API = "/open/v1/api/v2"
INVALID, CONFLICT = 4002012, 4000526
#: Long enough that nothing finishes learning during a test.
FOREVER_MS = 600_000
AUTO = "{}"


@pytest.fixture
def config(tmp_path: Path) -> KeyueEmulatorConfig:
    return KeyueEmulatorConfig(data_dir=tmp_path / "ky", token=TOKEN, learn_delay_ms=0)


class Emulator(ServedEmulator):
    @property
    def state(self) -> KeyueState:
        return self.app[KEYUE_STATE]

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        status, body = await self.call(method, API + path, **kwargs)
        assert (status, body["code"], body["msg"]) == (200, 200, "OK"), body
        return body["data"]

    async def refused(self, method: str, path: str, code: int = INVALID, status: int = 200, **kwargs: Any) -> str:
        """Call, expect the documented failure envelope, and return its tip."""
        got_status, body = await self.call(method, API + path, **kwargs)
        assert (got_status, body["code"], body["msg"]) == (status, code, MESSAGES[code]), body
        assert len(body["requestId"]) == 32
        return str(body["tip"])

    async def import_doc(
        self, name: str, data: bytes, *, dir_id: str = "0", task_extend: str | None = AUTO, **kwargs: Any
    ) -> dict[str, Any]:
        return await self.ok(  # type: ignore[no-any-return]
            "POST", "/task/create/llm_document_import", params={"dirId": dir_id}, data=form(name, data, task_extend)
        )

    async def documents(self, **params: Any) -> dict[str, Any]:
        return await self.ok("GET", "/llm/document/list", params=params)  # type: ignore[no-any-return]

    async def directories(self, headers: dict[str, str] | None = None, **params: Any) -> list[dict[str, Any]]:
        return await self.ok("GET", "/directory", params=params, headers=headers)  # type: ignore[no-any-return]

    async def version(self) -> int:
        listed = await self.directories()
        return max((d["version"] for d in listed), default=0)

    async def mkdir(self, name: str, parent: str = "0") -> str:
        data = await self.ok(
            "POST", "/directory/create", json={"name": name, "parentId": parent, "version": await self.version()}
        )
        return str(data["id"])

    async def files(self, **params: Any) -> dict[str, dict[str, Any]]:
        status, body = await self.call("GET", "/_emulator/files", params=params)
        assert status == 200
        return {f["path"]: f for f in body}


def form(name: str, data: bytes, task_extend: str | None = AUTO, **fields: str) -> aiohttp.FormData:
    """The import body as the seed's curl builds it: ``file`` then ``taskExtend``."""
    body = aiohttp.FormData(quote_fields=False)
    # A stream, like the real client sends (aiohttp refuses large in-memory bytes in a form).
    body.add_field("file", io.BytesIO(data), filename=name, content_type="application/octet-stream")
    if task_extend is not None:
        body.add_field("taskExtend", task_extend)
    for key, value in fields.items():
        body.add_field(key, value)
    return body


@asynccontextmanager
async def running(config: KeyueEmulatorConfig) -> AsyncIterator[Emulator]:
    async with serving(create_keyue_app(config), Emulator, HEADERS) as emulator:
        yield emulator


@pytest.fixture
async def emu(config: KeyueEmulatorConfig) -> AsyncIterator[Emulator]:
    async with running(config) as emulator:
        yield emulator


def staged(config: KeyueEmulatorConfig) -> list[Path]:
    return list((config.data_dir / ".staging").iterdir())


# --- auth ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"token": "wrong"}, {"token": TOKEN, "uid": "u1"}, {"token": "wrong", "uid": "u1", "username": "alice"}],
)
async def test_missing_or_wrong_credentials_get_the_failure_envelope_with_401(
    emu: Emulator, headers: dict[str, str]
) -> None:
    """A missing header or wrong token is the documented failure envelope (HTTP 401); the token is never echoed."""
    async with (
        aiohttp.ClientSession(base_url=emu.url) as anonymous,
        anonymous.get(API + "/directory", headers=headers) as r,
    ):
        body = await r.json()
        assert (r.status, body["code"], body["msg"]) == (401, INVALID, MESSAGES[INVALID])
    assert TOKEN not in json.dumps(body)
    assert "wrong" not in body["tip"]


async def test_uid_and_username_are_checked_when_configured(config: KeyueEmulatorConfig) -> None:
    """With --uid/--username set, another user is refused even with the right token."""
    async with running(replace(config, uid="u1", username="bob")) as emu:
        assert "username" in await emu.refused("GET", "/directory", status=401)
        assert await emu.directories(headers={**HEADERS, "username": "bob"}) == []


async def test_test_hooks_need_no_credentials(emu: Emulator) -> None:
    """/_emulator/files and /_emulator/stats answer without headers and count nothing."""
    async with aiohttp.ClientSession(base_url=emu.url) as anonymous:
        for path in ("/_emulator/files", "/_emulator/stats"):
            async with anonymous.get(path) as r:
                assert r.status == 200
    assert emu.state.requests == {}


# --- import -------------------------------------------------------------------------------------------------


async def test_import_stores_the_body_and_answers_the_documented_fields(
    emu: Emulator, config: KeyueEmulatorConfig
) -> None:
    """An import answers the seed's data object and stores the body byte for byte."""
    content = "红楼梦 第一回\n".encode() * 1000
    extend = json.dumps(
        {"split_by": "wrap", "chunk_size": 700, "overlap_proportion": 10, "pre_handle_text": True,
         "pre_handle_directory": False},
        separators=(",", ":"),
    )  # fmt: skip
    data = await emu.import_doc("红楼梦.md", content, task_extend=extend)
    seed_fields = {
        "id", "agentId", "agentName", "agentType", "userId", "userName", "created", "updated", "module", "taskType",
        "taskStatus", "taskResult", "errorMsg", "filePath", "fileUrl", "taskUrl", "deleted", "reportFilePath",
        "reportFileUrl", "taskExtend", "commonExtend", "tenantId", "appName", "platform", "requestSource",
    }  # fmt: skip
    assert set(data) == seed_fields
    assert (data["userId"], data["userName"], data["taskStatus"], data["taskExtend"]) == ("u1", "alice", 0, extend)
    assert (data["taskUrl"], data["platform"], data["requestSource"]) == ("/api/v2/llm/document/import", "NGD", "UNIT")
    assert (config.data_dir / "documents" / data["id"]).read_bytes() == content
    stored = (await emu.files())["红楼梦.md"]
    assert (stored["size"], stored["md5"], stored["uploads"]) == (len(content), hashlib.md5(content).hexdigest(), 1)
    assert staged(config) == []


async def test_the_csp_service_prefix_serves_the_same_api(emu: Emulator) -> None:
    """The 2026 doc's /csp-service paths reach the same agent."""
    status, body = await emu.call(
        "POST",
        "/csp-service" + API + "/task/create/llm_document_import",
        params={"dirId": "0"},
        data=form("a.txt", b"a"),
    )
    assert (status, body["code"]) == (200, 200)
    status, body = await emu.call("GET", "/csp-service" + API + "/llm/document/list")
    assert body["data"]["list"][0]["name"] == "a.txt"


@pytest.mark.parametrize(
    ("extend", "field"),
    [
        ('{"chunk_size":199}', "chunk_size"),
        ('{"chunk_size":801}', "chunk_size"),
        ('{"chunk_size":"700"}', "chunk_size"),
        ('{"chunk_size":700.5}', "chunk_size"),
        ('{"chunk_size":true}', "chunk_size"),
        ('{"overlap_proportion":-1}', "overlap_proportion"),
        ('{"overlap_proportion":21}', "overlap_proportion"),
        ('{"split_by":"comma"}', "split_by"),
        ('{"pre_handle_text":"yes"}', "pre_handle_text"),
        ('{"pre_handle_directory":1}', "pre_handle_directory"),
        ('{"chunksize":500}', "chunksize"),
        ("{chunk_size: 500}", "not valid JSON"),
        ("[500]", "JSON object"),
    ],
)
async def test_invalid_task_extend_is_refused_with_the_field_named(
    emu: Emulator, config: KeyueEmulatorConfig, extend: str, field: str
) -> None:
    """Every taskExtend option is checked against its documented values; nothing is stored on refusal."""
    tip = await emu.refused(
        "POST", "/task/create/llm_document_import", params={"dirId": "0"}, data=form("a.txt", b"x", extend)
    )
    assert field in tip
    if field in ("chunk_size", "overlap_proportion"):
        assert ("200 to 800" if field == "chunk_size" else "0 to 20") in tip
    assert await emu.files() == {}
    assert staged(config) == []


@pytest.mark.parametrize(
    ("extend", "normalised"),
    [
        ("", AUTO),
        ("{}", AUTO),
        ('{"chunk_size":200,"overlap_proportion":0}', '{"chunk_size":200,"overlap_proportion":0}'),
        ('{"chunk_size": 800, "overlap_proportion": 20, "split_by": "punc"}', None),
        ('{"imageOcr":true,"multiQuery":false,"pre_handle_text":false}', None),
    ],
)
async def test_valid_task_extend_values_are_accepted(emu: Emulator, extend: str, normalised: str | None) -> None:
    """Empty means automatic ("{}"); the range ends and the 2026 doc's extra options are accepted."""
    data = await emu.import_doc("a.txt", b"x", task_extend=extend)
    assert json.loads(data["taskExtend"]) == json.loads(normalised or extend)


@pytest.mark.parametrize(
    ("params", "body", "expected"),
    [
        ({"dirId": "0"}, form("a.txt", b"x", None), "taskExtend is required"),
        ({}, form("a.txt", b"x"), "dirId is required"),
        ({"dirId": "42"}, form("a.txt", b"x"), "dirId '42' is not an existing directory"),
        ({"dirId": "0", "dirid": "0"}, form("a.txt", b"x"), "unknown query parameter 'dirid'"),
        ({"dirId": "0", "knowledgePublic": "2"}, form("a.txt", b"x"), "knowledgePublic must be 0 or 1"),
        ({"dirId": "0"}, form("a/b.txt", b"x"), "not a path"),
        ({"dirId": "0"}, form("a.txt", b"x", meta="1"), "unknown form field 'meta'"),
        ({"dirId": "0"}, form("a.txt", b"x", multipleFileKey='{"metadata":{"label":"x"}}'), "label"),
        ({"dirId": "0"}, {"taskExtend": "{}"}, "multipart/form-data"),
    ],
)
async def test_import_requests_are_validated_strictly(
    emu: Emulator, config: KeyueEmulatorConfig, params: dict[str, str], body: Any, expected: str
) -> None:
    """Missing, unknown or malformed import fields get 4002012 with a tip naming the field."""
    tip = await emu.refused("POST", "/task/create/llm_document_import", params=params, data=body)
    assert expected in tip
    assert staged(config) == []


async def test_two_files_in_one_import_are_refused(emu: Emulator) -> None:
    """One document per request: a second file part is an error, and neither is stored."""
    body = form("a.txt", b"a")
    body.add_field("file", io.BytesIO(b"b"), filename="b.txt")
    assert "given twice" in await emu.refused(
        "POST", "/task/create/llm_document_import", params={"dirId": "0"}, data=body
    )
    assert await emu.files() == {}


async def test_an_upload_cut_mid_body_leaves_nothing_behind(emu: Emulator, config: KeyueEmulatorConfig) -> None:
    """A connection reset mid-body stores no document and no staged part."""
    emu.state.faults.settings.reset_rate = 1.0
    with pytest.raises(aiohttp.ClientError):
        await emu.call(
            "POST", API + "/task/create/llm_document_import", params={"dirId": "0"}, data=form("a.txt", b"x" * 500_000)
        )
    emu.state.faults.settings.reset_rate = 0.0
    assert await emu.files() == {}
    assert staged(config) == []


# --- document list ------------------------------------------------------------------------------------------


async def test_document_list_pages_newest_first(emu: Emulator) -> None:
    """pn/ps page through a directory's documents, newest first, with the total."""
    for i in range(5):
        await emu.import_doc(f"f{i}.txt", b"x")
    first = await emu.documents(dirId="0", pn=1, ps=2)
    last = await emu.documents(dirId="0", pn=3, ps=2)
    assert (first["total"], first["pn"], first["ps"]) == (5, 1, 2)
    assert [d["name"] for d in first["list"]] == ["f4.txt", "f3.txt"]
    assert [d["name"] for d in last["list"]] == ["f0.txt"]
    assert (await emu.documents(pn=4, ps=2))["list"] == []
    item = first["list"][0]
    assert {"_effect", "agentId", "id", "name", "size", "wordNumber", "learnStatus"} <= set(item)


@pytest.mark.parametrize(
    ("params", "expected"),
    [({"ps": "0"}, "ps"), ({"ps": "101"}, "between 1 and 100"), ({"pn": "0"}, "pn"), ({"pn": "x"}, "integer")],
)
async def test_document_list_paging_is_validated(emu: Emulator, params: dict[str, str], expected: str) -> None:
    """pn below 1, ps outside 1-100 and non-numbers are refused."""
    assert expected in await emu.refused("GET", "/llm/document/list", params=params)


async def test_document_list_filters_by_keyword_and_directory(emu: Emulator) -> None:
    """keyword matches names case-insensitively; dirId lists that directory only (not below it)."""
    sub = await emu.mkdir("sub")
    await emu.import_doc("Report-2024.pdf", b"x")
    await emu.import_doc("notes.txt", b"x")
    await emu.import_doc("report-old.pdf", b"x", dir_id=sub)
    assert {d["name"] for d in (await emu.documents(keyword="REPORT"))["list"]} == {"Report-2024.pdf", "report-old.pdf"}
    assert [d["name"] for d in (await emu.documents(keyword="report", dirId="0"))["list"]] == ["Report-2024.pdf"]
    assert [d["name"] for d in (await emu.documents(dirId=sub))["list"]] == ["report-old.pdf"]
    assert "dirId '9' is not an existing directory" in await emu.refused(
        "GET", "/llm/document/list", params={"dirId": "9"}
    )


# --- directories --------------------------------------------------------------------------------------------


async def test_directories_are_created_listed_and_versioned(emu: Emulator) -> None:
    """create needs the current list version, which every change increments; the list filters by parent."""
    assert await emu.directories() == []
    a = await emu.mkdir("a")
    b = await emu.mkdir("b", parent=a)
    listed = await emu.directories()
    assert [(d["id"], d["name"], d["parentId"], d["hasPerm"]) for d in listed] == [
        (a, "a", "0", True),
        (b, "b", a, True),
    ]
    assert {d["version"] for d in listed} == {2}
    assert [d["name"] for d in await emu.directories(parentId=a)] == ["b"]
    assert [d["name"] for d in await emu.directories(keyword="B")] == ["b"]


async def test_a_stale_version_is_the_documented_conflict(emu: Emulator) -> None:
    """Creating or renaming with an outdated version answers 4000526 and changes nothing."""
    a = await emu.mkdir("a")
    tip = await emu.refused("POST", "/directory/create", CONFLICT, json={"name": "b", "parentId": "0", "version": 0})
    assert "version 0" in tip
    await emu.refused("POST", "/directory/update", CONFLICT, json={"name": "z", "id": a, "version": 0})
    assert [d["name"] for d in await emu.directories()] == ["a"]


async def test_directory_names_are_unique_among_siblings(emu: Emulator) -> None:
    """A second 'a' under the same parent is refused; under another parent it is fine."""
    a = await emu.mkdir("a")
    tip = await emu.refused("POST", "/directory/create", json={"name": "a", "parentId": "0", "version": 1})
    assert "already exists" in tip
    assert await emu.mkdir("a", parent=a)


async def test_update_renames_and_returns_the_new_version(emu: Emulator) -> None:
    """update takes {name, id, version} and answers {version}; documents follow the new name."""
    a = await emu.mkdir("a")
    await emu.import_doc("x.txt", b"x", dir_id=a)
    assert await emu.ok("POST", "/directory/update", json={"name": "renamed", "id": a, "version": 1}) == {"version": 2}
    assert [d["name"] for d in await emu.directories()] == ["renamed"]
    assert set(await emu.files()) == {"renamed/x.txt"}


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/directory/create", {"name": "a", "parentId": "0"}, "version is required"),
        ("/directory/create", {"name": "a", "parentId": "0", "version": True}, "version is required"),
        ("/directory/create", {"name": "", "parentId": "0", "version": 0}, "is empty"),
        ("/directory/create", {"name": "a/b", "parentId": "0", "version": 0}, "'/'"),
        ("/directory/create", {"name": "a", "parentId": "77", "version": 0}, "parentId '77'"),
        ("/directory/create", {"name": "a", "parentId": "0", "version": 0, "sort": 1}, "unknown field 'sort'"),
        ("/directory/update", {"name": "a", "id": "0", "version": 0}, "default directory"),
        ("/directory/update", {"name": "a", "id": "77", "version": 0}, "id '77'"),
    ],
)
async def test_directory_requests_are_validated(emu: Emulator, path: str, body: dict[str, Any], expected: str) -> None:
    """Missing or invalid fields, unknown parents and the default directory are refused with 4002012."""
    assert expected in await emu.refused("POST", path, json=body)


# --- learning -----------------------------------------------------------------------------------------------


async def test_documents_learn_then_enhance_then_are_learned(emu: Emulator) -> None:
    """learnStatus goes 0 (learning) → 2 (enhancing) → 1 (learned) by the configured delays."""
    state = emu.state
    state.learn_delay_ms = FOREVER_MS
    await emu.import_doc("learning.txt", b"x")
    state.learn_delay_ms, state.enhance_delay_ms = 0, FOREVER_MS
    await emu.import_doc("enhancing.txt", b"x")
    state.enhance_delay_ms = 0
    await emu.import_doc("learned.txt", "四个字符".encode())
    page = await emu.documents()
    by_name = {d["name"]: d for d in page["list"]}
    assert {n: d["learnStatus"] for n, d in by_name.items()} == {
        "learning.txt": 0,
        "enhancing.txt": 2,
        "learned.txt": 1,
    }
    assert (by_name["learned.txt"]["wordNumber"], by_name["learning.txt"]["wordNumber"]) == (4, 0)
    assert page["refresh"] is True


async def test_failed_documents_are_retrained(emu: Emulator) -> None:
    """With fail rate 1 learning fails (-1, with errorMsg); batchRetrain learns them again."""
    emu.state.fail_rate = 1.0
    doc = await emu.import_doc("a.txt", b"x")
    failed = (await emu.documents())["list"][0]
    assert (failed["learnStatus"], bool(failed["errorMsg"])) == (-1, True)
    emu.state.fail_rate = 0.0
    assert await emu.ok("POST", "/llm/document/batchRetrain", json={"documentIds": [doc["id"]]}) is None
    learned = (await emu.documents())["list"][0]
    assert (learned["learnStatus"], learned["errorMsg"]) == (1, None)


async def test_retraining_a_learned_document_changes_nothing(emu: Emulator) -> None:
    """Only failed documents are retrained; a learned one stays learned."""
    doc = await emu.import_doc("a.txt", b"x")
    emu.state.learn_delay_ms = FOREVER_MS
    await emu.ok("POST", "/llm/document/batchRetrain", json={"documentIds": [doc["id"]]})
    assert (await emu.documents())["list"][0]["learnStatus"] == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"documentIds": []}, "non-empty array"),
        ({"documentIds": "abc"}, "non-empty array"),
        ({"documentIds": [1]}, "id strings"),
        ({"documentIds": ["nope"]}, "'nope' does not exist"),
        ({"ids": ["x"]}, "unknown field 'ids'"),
        ({"documentIds": ["x"] * 101}, "at most 100"),
    ],
)
async def test_batch_retrain_is_validated(emu: Emulator, body: dict[str, Any], expected: str) -> None:
    """documentIds must be a non-empty array of known document ids."""
    assert expected in await emu.refused("POST", "/llm/document/batchRetrain", json=body)


# --- test hooks, faults, persistence ------------------------------------------------------------------------


async def test_emulator_files_give_directory_paths_and_count_imports(emu: Emulator) -> None:
    """Paths are directory path + name; uploads counts every import at that path; dirId scopes them."""
    sub = await emu.mkdir("sub")
    deeper = await emu.mkdir("dir", parent=sub)
    await emu.import_doc("a.txt", b"one", dir_id=deeper)
    await emu.import_doc("a.txt", b"second", dir_id=deeper)
    await emu.import_doc("a.txt", b"top")
    files = await emu.files()
    assert {p: (f["size"], f["uploads"]) for p, f in files.items()} == {"sub/dir/a.txt": (6, 2), "a.txt": (3, 1)}
    assert set(await emu.files(dirId=sub)) == {"dir/a.txt"}


async def test_injected_faults_use_the_envelope(emu: Emulator) -> None:
    """Injected server errors answer 500 and rate limits 429 with Retry-After, both enveloped."""
    emu.state.faults.settings.error_rate = 1.0
    status, body = await emu.call("GET", API + "/directory")
    assert (status, body["code"]) == (500, 500)
    emu.state.faults.settings.error_rate = 0.0
    emu.state.faults.settings.rate_limit = 0.001
    await emu.call("GET", API + "/directory")  # takes the one token of the bucket
    async with emu.http.get(API + "/directory") as r:
        assert (r.status, (await r.json())["code"]) == (429, 429)
        assert int(r.headers["Retry-After"]) >= 1


async def test_state_survives_a_restart(config: KeyueEmulatorConfig) -> None:
    """Directories, the list version, documents and their learning state persist in the data dir."""
    async with running(replace(config, fail_rate=1.0)) as emu:
        sub = await emu.mkdir("sub")
        doc = await emu.import_doc("a.txt", b"x", dir_id=sub)
        before = await emu.files()
    async with running(config) as emu:
        assert await emu.files() == before
        assert await emu.version() == 1
        assert (await emu.documents(dirId=sub))["list"][0]["learnStatus"] == -1
        await emu.ok("POST", "/llm/document/batchRetrain", json={"documentIds": [doc["id"]]})
        assert (await emu.documents(dirId=sub))["list"][0]["learnStatus"] == 1
        assert await emu.mkdir("second")


def test_serve_flags_build_the_app(tmp_path: Path) -> None:
    """`ingest serve keyue` takes the issue's flags and refuses out-of-range ones."""
    spec = emulator_specs()["keyue"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    spec.add_arguments(parser)
    args = parser.parse_args(
        ["--data-dir", str(tmp_path), "--token", "T", "--learn-delay-ms", "5", "--fail-rate", "0.5", "--seed", "1"]
    )
    assert spec.build_app(args)[KEYUE_STATE].fail_rate == 0.5
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--data-dir", str(tmp_path), "--token", "T", "--fail-rate", "2"])
