"""The MOI emulator, driven over real HTTP on 127.0.0.1 like a client would."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from ingest.emulators import emulator_specs
from ingest.emulators.kit.common import relative_path_problem, safe_join
from ingest.emulators.moi import MOI_STATE, FileStatus, MoiEmulatorConfig, MoiState, TaskStatus, create_moi_app
from ingest.emulators.moi.store import BODY_IN_DB_MAX
from ingest.emulators.moi.uploads import KEEP_IN_MEMORY
from tests.emulator_client import ServedEmulator, serving
from tests.harness import MOI, ServerProcess

pytestmark = pytest.mark.anyio

KEY = "test-key-123"
VOLUME = "1001"
DELAY_MS = 100


@pytest.fixture
def config(tmp_path: Path) -> MoiEmulatorConfig:
    return MoiEmulatorConfig(data_dir=tmp_path / "moi", api_key=KEY, volumes=(VOLUME,), task_delay_ms=DELAY_MS)


class Emulator(ServedEmulator):
    @property
    def state(self) -> MoiState:
        return self.app[MOI_STATE]

    async def files(self) -> list[dict[str, Any]]:
        return (await self.call("GET", "/_emulator/files"))[1]  # type: ignore[no-any-return]

    async def upload(self, files: list[tuple[str, bytes]], **kwargs: Any) -> tuple[int, Any]:
        return await self.call("POST", "/connectors/upload", data=upload_form(files, **kwargs))

    async def task(self, task_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", "/task/get", params={"task_id": task_id})
        assert (status, body["code"]) == (200, "OK"), body
        return body["data"]["task"]  # type: ignore[no-any-return]

    async def task_files(self, task_id: str, **params: Any) -> dict[str, Any]:
        status, body = await self.call("GET", "/task/files", params={"task_id": task_id, **params})
        assert (status, body["code"]) == (200, "OK"), body
        return body["data"]  # type: ignore[no-any-return]

    async def wait_finished(self, task_id: str) -> dict[str, Any]:
        with anyio.fail_after(5):
            while True:  # polling, as a client does: the emulator has no push notification
                task = await self.task(task_id)
                if task["status"] == TaskStatus.FINISHED:
                    return task
                await anyio.sleep(0.02)


@asynccontextmanager
async def running(config: MoiEmulatorConfig) -> AsyncIterator[Emulator]:
    async with serving(create_moi_app(config), Emulator, {"moi-key": KEY}) as emulator:
        yield emulator


@pytest.fixture
async def emu(config: MoiEmulatorConfig) -> AsyncIterator[Emulator]:
    async with running(config) as emulator:
        yield emulator


def seed_meta(files: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    return [{"file_name": name, "file_size": len(data), "mime_type": "text/plain"} for name, data in files]


def upload_form(
    files: list[tuple[str, bytes]],
    *,
    meta: Any = None,
    volume: str | None = VOLUME,
    dedup: dict[str, Any] | None = None,
    meta_last: bool = False,
    extra: dict[str, str] | None = None,
) -> aiohttp.FormData:
    form = aiohttp.FormData(quote_fields=False)
    meta_text = json.dumps(seed_meta(files) if meta is None else meta)
    if volume is not None:
        form.add_field("VolumeID", volume)
    if not meta_last:
        form.add_field("meta", meta_text)
    if dedup is not None:
        form.add_field("dedup", json.dumps(dedup))
    for name, value in (extra or {}).items():
        form.add_field(name, value)
    for name, data in files:
        # A stream, like the real client sends (aiohttp refuses large in-memory bytes in a form).
        form.add_field(
            "file", io.BytesIO(data), filename=name.rsplit("/", 1)[-1], content_type="application/octet-stream"
        )
    if meta_last:
        form.add_field("meta", meta_text)
    return form


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def stored_body(emu: Emulator, path: str) -> bytes | None:
    """What the volume holds at ``path``, wherever the store keeps it (a small body is a database row)."""
    body = emu.state.store.open_body(VOLUME, path)
    if body is None:
        return None
    with body:
        return body.read()


def staging_files(config: MoiEmulatorConfig) -> list[Path]:
    return list((config.data_dir / ".staging").iterdir())


# --- auth and envelope ------------------------------------------------------------------------------------


async def test_missing_or_wrong_key_is_401(emu: Emulator) -> None:
    """No key or a wrong key gets 401 ErrUnauthorized in the envelope, without echoing the key."""
    async with aiohttp.ClientSession(base_url=emu.url) as anonymous:
        for headers in ({}, {"moi-key": "wrong-key"}, {"X-API-Key": "wrong-key"}):
            async with anonymous.get("/task/list", headers=headers) as response:
                body = await response.json()
            assert response.status == 401
            assert body["code"] == "ErrUnauthorized"
            assert body["data"] is None
            assert body["request_id"]
            assert "wrong-key" not in json.dumps(body)
            assert KEY not in json.dumps(body)
        for header in ("Moi-Key", "X-API-Key"):
            async with anonymous.get("/task/list", headers={header: KEY}) as response:
                assert response.status == 200, header


async def test_unknown_route_wrong_method_and_bad_json_are_enveloped(emu: Emulator) -> None:
    """Unknown routes (404), wrong methods (405) and malformed JSON (400) all answer in the envelope."""
    status, body = await emu.call("GET", "/no/such/api")
    assert (status, body["code"]) == (404, "ErrNotFound")
    status, body = await emu.call("GET", "/task/retry")
    assert status == 405
    assert body["data"] is None
    assert "POST" in body["msg"]
    status, body = await emu.call(
        "POST", "/task/retry", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert (status, body["code"]) == (400, "ErrParamInvalid")
    assert "JSON" in body["msg"]


# --- upload -----------------------------------------------------------------------------------------------


async def test_upload_several_files_with_seed_meta(emu: Emulator, config: MoiEmulatorConfig) -> None:
    """One request stores every file at its file_name path (subfolders included) and creates one task."""
    files = [("a.txt", b"alpha"), ("sub/dir/b.md", b"# beta\n"), ("sub/c.pdf", b"%PDF-1.4 fake")]
    status, body = await emu.upload(files)
    assert (status, body["code"]) == (200, "OK"), body
    data = body["data"]
    assert data["success"] is True
    assert data["task_id"].isdigit()
    assert [r["success"] for r in data["results"]] == [True, True, True]
    assert data["file_id"] == data["results"][0]["file_id"]
    assert len({r["file_id"] for r in data["results"]}) == 3
    for name, content in files:
        assert stored_body(emu, name) == content
    assert await emu.files() == [
        {"volume_id": VOLUME, "path": name, "size": len(content), "md5": md5(content), "uploads": 1}
        for name, content in sorted(files)
    ]
    assert staging_files(config) == []


async def test_upload_with_sdk_meta_after_the_files(emu: Emulator, config: MoiEmulatorConfig) -> None:
    """SDK-form meta ({filename, path}) is accepted, also when it arrives after the file parts."""
    files = [("x.txt", b"x" * 70_000), ("y.csv", b"a,b\n1,2\n")]
    meta = [{"filename": "x.txt", "path": "/src/x.txt"}, {"filename": "y.csv", "path": "/src/y.csv"}]
    status, body = await emu.upload(files, meta=meta, meta_last=True)
    assert status == 200, body
    assert [f["path"] for f in await emu.files()] == ["x.txt", "y.csv"]
    assert stored_body(emu, "x.txt") == b"x" * 70_000


async def test_small_parts_in_memory_and_large_ones_staged_store_alike(
    emu: Emulator, config: MoiEmulatorConfig
) -> None:
    """Parts kept in memory (up to KEEP_IN_MEMORY per request) and parts staged on disk end up the same:
    every body stored whole, new paths and replaced ones, and nothing left in staging."""
    big = 700_000  # the first fits the request's allowance, the second no longer does, the third is staged
    files = [("a.bin", b"a" * big), ("b.bin", b"b" * big), ("c.bin", b"c" * (KEEP_IN_MEMORY + 1)), ("d.txt", b"d")]
    assert (await emu.upload(files))[0] == 200
    again = [(name, data.upper()) for name, data in files]  # the same paths again: each replaced
    assert (await emu.upload(again))[0] == 200
    for name, data in again:
        assert stored_body(emu, name) == data
    assert [(f["path"], f["md5"], f["uploads"]) for f in await emu.files()] == [
        (name, md5(data), 2) for name, data in again
    ]
    assert staging_files(config) == []


async def test_uploads_committed_together_fail_alone(emu: Emulator) -> None:
    """Uploads that wait for the store while it is busy are committed as one group; an upload of the
    group that is refused (here its folder is a file stored by an earlier upload of the same group)
    leaves no file, row or task behind, and every other upload of the group is stored and answered."""
    store = emu.state.store
    assert (await emu.upload([("warm.txt", b"w")]))[0] == 200  # the volume is known: no lookup waits
    release = threading.Event()

    def busy() -> None:
        with store.reading():  # holds the store's lock, as a long commit would
            release.wait()

    holder = threading.Thread(target=busy)
    holder.start()
    sends = [[("first.txt", b"1")], [("a", b"file a")], [("a/b.txt", b"under a file")], [("c.txt", b"c")]]
    answers: list[tuple[int, Any]] = [(0, None)] * len(sends)

    async def send(index: int) -> None:
        answers[index] = await emu.upload(sends[index])

    try:
        async with anyio.create_task_group() as tg:
            for index in range(len(sends)):
                tg.start_soon(send, index)
                await anyio.sleep(0.02)  # in this order: "a" is committed before "a/b.txt" is tried
            with anyio.fail_after(10):
                while True:  # the first went ahead and waits on the lock; the others wait for the next group
                    if len(store._group) == len(sends) - 1:
                        break
                    await anyio.sleep(0.01)
            release.set()
    finally:
        release.set()
        holder.join()
    assert [status for status, _ in answers] == [200, 200, 400, 200]
    assert "'a' is a file" in answers[2][1]["msg"]
    assert stored_body(emu, "a/b.txt") is None
    assert [f["path"] for f in await emu.files()] == ["a", "c.txt", "first.txt", "warm.txt"]
    _, listed = await emu.call("GET", "/task/list")
    assert listed["data"]["total"] == 4


async def test_a_groups_savepoint_journal_is_kept_in_memory(emu: Emulator) -> None:
    """Each upload of a group commit is a savepoint; what SQLite journals for it must not spill to a
    temporary file (with bodies in the database it did, for every group: a file created, ~34 writes per
    small upload, then removed). Only ``ROLLBACK TO`` reads that journal, so nothing durable is lost."""
    assert emu.state.store._db.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY


async def test_small_bodies_are_kept_in_the_database_and_bigger_ones_as_files(
    emu: Emulator, config: MoiEmulatorConfig
) -> None:
    """A body of at most BODY_IN_DB_MAX bytes is a database row, not a file of its own; a bigger one is a
    file under the volume's folder. A path that changes from one to the other keeps one body, the new one:
    the file a small body replaces is removed, the row a big body replaces is dropped."""
    small, big = b"s" * BODY_IN_DB_MAX, b"b" * (BODY_IN_DB_MAX + 1)
    on_disk = config.data_dir / VOLUME / "p.bin"
    for body, as_file in ((small, False), (big, True), (small, False), (big, True)):
        assert (await emu.upload([("p.bin", body)]))[0] == 200
        assert stored_body(emu, "p.bin") == body
        assert on_disk.is_file() is as_file
        assert emu.state.store.has_stored_file(VOLUME, "p.bin")
    assert [(f["path"], f["size"], f["uploads"]) for f in await emu.files()] == [("p.bin", len(big), 4)]


async def test_deleting_a_small_file_drops_its_body(emu: Emulator) -> None:
    """/catalog/file/delete of a path's only file leaves no body behind, in the database or on disk."""
    _, body = await emu.upload([("gone.txt", b"bye"), ("kept.txt", b"hi")])
    status, _ = await emu.call("POST", "/catalog/file/delete", json={"id": body["data"]["file_id"]})
    assert status == 200
    assert stored_body(emu, "gone.txt") is None
    assert not emu.state.store.has_stored_file(VOLUME, "gone.txt")
    assert stored_body(emu, "kept.txt") == b"hi"
    with emu.state.store.reading() as db:
        assert db.execute("SELECT path FROM stored_bodies").fetchall() == [("kept.txt",)]


async def test_meta_count_must_match_file_parts(emu: Emulator) -> None:
    """Fewer meta entries than file parts is a 400 that says both counts, and stores nothing."""
    files = [("a.txt", b"a"), ("b.txt", b"b")]
    status, body = await emu.upload(files, meta=seed_meta(files[:1]))
    assert (status, body["code"]) == (400, "ErrParamInvalid")
    assert "1 entries" in body["msg"]
    assert "2 file parts" in body["msg"]
    assert await emu.files() == []


async def test_file_size_mismatch_names_the_file(emu: Emulator, config: MoiEmulatorConfig) -> None:
    """A file_size that differs from the bytes received is a 400 naming the file; nothing is kept."""
    meta = [{"file_name": "ok.txt", "file_size": 2}, {"file_name": "bad.txt", "file_size": 99}]
    status, body = await emu.upload([("ok.txt", b"ok"), ("bad.txt", b"short")], meta=meta)
    assert (status, body["code"]) == (400, "ErrParamInvalid")
    assert "bad.txt" in body["msg"]
    assert "99" in body["msg"]
    assert "5 bytes" in body["msg"]
    assert await emu.files() == []
    assert staging_files(config) == []
    assert stored_body(emu, "ok.txt") is None
    assert not (config.data_dir / VOLUME / "ok.txt").exists()


@pytest.mark.parametrize(
    "name", ["../evil.txt", "a/../../evil.txt", "/etc/evil.txt", "a\\b.txt", "", "a//b.txt", "nul\x00.txt"]
)
async def test_unsafe_destination_paths_are_rejected(emu: Emulator, config: MoiEmulatorConfig, name: str) -> None:
    """Traversal, absolute, backslash, empty and NUL paths are refused with a 400 naming meta[0]."""
    meta = [{"file_name": name, "file_size": 4}]
    status, body = await emu.upload([("x", b"evil")], meta=meta)
    assert (status, body["code"]) == (400, "ErrParamInvalid")
    assert "meta[0]" in body["msg"]
    assert await emu.files() == []
    assert not (config.data_dir / "evil.txt").exists()
    assert not (config.data_dir.parent / "evil.txt").exists()


async def test_unknown_or_missing_volume(emu: Emulator) -> None:
    """An unknown VolumeID is 404 ErrNotFound naming it; a missing one is 400."""
    status, body = await emu.upload([("a.txt", b"a")], volume="4242")
    assert (status, body["code"]) == (404, "ErrNotFound")
    assert body["msg"] == "volume 4242 not found"
    status, body = await emu.upload([("a.txt", b"a")], volume=None)
    assert (status, body["code"]) == (400, "ErrParamInvalid")
    assert "VolumeID" in body["msg"]


async def test_invalid_optional_fields_are_400(emu: Emulator) -> None:
    """Bad dedup, file_types, path_regex, table_config and unknown fields are each a 400 naming the field."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"dedup": {"by": [], "strategy": "skip"}}, "dedup.by"),
        ({"dedup": {"by": ["name"], "strategy": "merge"}}, "dedup.strategy"),
        ({"extra": {"file_types": "[99]"}}, "file_types"),
        ({"extra": {"path_regex": "("}}, "path_regex"),
        ({"extra": {"table_config": "[1]"}}, "table_config"),
        ({"extra": {"volume_id": "1001"}}, "volume_id"),
    ]
    for kwargs, field_name in cases:
        status, body = await emu.upload([("a.txt", b"a")], **kwargs)
        assert (status, body["code"]) == (400, "ErrParamInvalid"), kwargs
        assert field_name in body["msg"], body["msg"]
    assert await emu.files() == []


async def test_file_types_and_path_regex_refuse_single_files(emu: Emulator) -> None:
    """Files excluded by file_types or path_regex get success=false in results; the others are stored."""
    files = [("keep.txt", b"1"), ("drop.pdf", b"2")]
    status, body = await emu.upload(files, extra={"file_types": "[1]"})
    assert status == 200, body
    results = body["data"]["results"]
    assert results[0]["success"] is True
    assert results[1] == {"success": False, "file_id": "", "message": "skipped: file type 2 is not in file_types"}
    assert [f["path"] for f in await emu.files()] == ["keep.txt"]


async def test_dedup_skip_keeps_a_single_upload(emu: Emulator) -> None:
    """With dedup skip, an identical re-upload is not stored again and reports the existing file id."""
    dedup = {"by": ["name", "md5"], "strategy": "skip"}
    _, first = await emu.upload([("a.txt", b"same")], dedup=dedup)
    _, second = await emu.upload([("a.txt", b"same")], dedup=dedup)
    result = second["data"]["results"][0]
    assert result == {"success": True, "file_id": first["data"]["file_id"], "message": "skipped: duplicate"}
    assert [f["uploads"] for f in await emu.files()] == [1]
    files = await emu.task_files(second["data"]["task_id"])
    assert files["files"][0]["status"] == FileStatus.SUCCESS
    assert (await emu.task(second["data"]["task_id"]))["status"] == TaskStatus.FINISHED


async def test_dedup_skip_by_name_stores_changed_content_only_when_asked(emu: Emulator) -> None:
    """Dedup by md5 matches equal content under another name; by name+md5 a changed body is stored."""
    await emu.upload([("a.txt", b"one")])
    _, body = await emu.upload([("copy.txt", b"one")], dedup={"by": ["md5"], "strategy": "skip"})
    assert body["data"]["results"][0]["message"] == "skipped: duplicate"
    _, body = await emu.upload([("a.txt", b"two")], dedup={"by": ["name", "md5"], "strategy": "skip"})
    assert body["data"]["results"][0]["message"] == "uploaded"
    assert [(f["path"], f["uploads"], f["md5"]) for f in await emu.files()] == [("a.txt", 2, md5(b"two"))]


@pytest.mark.parametrize("strategy", ["replace", "overwrite"])
async def test_dedup_replace_stores_again(emu: Emulator, config: MoiEmulatorConfig, strategy: str) -> None:
    """replace (or its synonym overwrite) stores the file again: uploads becomes 2 and the body is new."""
    dedup = {"by": ["name"], "strategy": strategy}
    _, first = await emu.upload([("a.txt", b"old")], dedup=dedup)
    _, second = await emu.upload([("a.txt", b"new!")], dedup=dedup)
    assert second["data"]["results"][0]["message"] == "uploaded"
    assert second["data"]["file_id"] != first["data"]["file_id"]
    assert [(f["uploads"], f["size"]) for f in await emu.files()] == [(2, 4)]
    assert stored_body(emu, "a.txt") == b"new!"


async def test_path_below_a_stored_file_is_refused(emu: Emulator) -> None:
    """A path whose folder is already a stored file is a 400, not a server error."""
    await emu.upload([("a", b"file")])
    status, body = await emu.upload([("a/b.txt", b"x")])
    assert (status, body["code"]) == (400, "ErrParamInvalid")
    assert "'a' is a file" in body["msg"]


# --- tasks ------------------------------------------------------------------------------------------------


async def test_task_progresses_to_success(config: MoiEmulatorConfig) -> None:
    """A task runs (files waiting, then uploading) and finishes with every file successful."""
    async with running(replace(config, task_delay_ms=400)) as emu:
        await _check_task_progress(emu)


async def _check_task_progress(emu: Emulator) -> None:
    _, body = await emu.upload([("doc.pdf", b"%PDF"), ("notes/readme.md", b"hi")])
    task_id = body["data"]["task_id"]
    task = await emu.task(task_id)
    assert task["status"] == TaskStatus.RUNNING
    assert task["end_at"] == 0
    assert task["volume_id"] == VOLUME
    assert task["volume_name"] == VOLUME
    assert task["source_config"]["common_file_task_config"]["uris"] == ["doc.pdf", "notes/readme.md"]
    early = await emu.task_files(task_id)
    assert {f["status"] for f in early["files"]} <= {FileStatus.WAITING, FileStatus.UPLOADING}
    task = await emu.wait_finished(task_id)
    assert task["end_at"] >= task["start_at"] > 0
    done = await emu.task_files(task_id)
    assert (done["total"], done["total_success"], done["total_failed"]) == (2, 2, 0)
    first = done["files"][0]
    assert first["id"] == body["data"]["results"][0]["file_id"]
    assert (first["name"], first["type"], first["status"], first["size"]) == ("doc.pdf", 2, 5, 4)
    assert first["path"] == f"/{VOLUME}/doc.pdf"
    assert first["reason"] == ""
    assert first["end_time"] > 0
    assert done["files"][1]["type"] == 6  # MARKDOWN


async def test_failed_files_can_be_retried(config: MoiEmulatorConfig) -> None:
    """With task_fail_rate=1 files fail with a reason; /task/retry sends them through retrying to success."""
    async with running(replace(config, task_fail_rate=1.0, task_delay_ms=60)) as emu:
        _, body = await emu.upload([("a.txt", b"a"), ("b.txt", b"b")])
        task_id = body["data"]["task_id"]
        await emu.wait_finished(task_id)
        files = await emu.task_files(task_id)
        assert files["total_failed"] == 2
        assert {f["reason"] for f in files["files"]} == {"parse failed: injected fault"}
        emu.state.task_fail_rate = 0.0
        emu.state.task_delay_ms = 400  # long enough to see "retrying" even on a slow machine
        ids = [f["id"] for f in files["files"]]
        status, reply = await emu.call("POST", "/task/retry", json={"task_id": task_id, "ids": ids})
        assert (status, reply["code"], reply["data"]) == (200, "OK", None)
        retrying = await emu.task_files(task_id)
        assert {f["status"] for f in retrying["files"]} == {FileStatus.RETRYING}
        assert (await emu.task(task_id))["status"] == TaskStatus.RUNNING
        await emu.wait_finished(task_id)
        done = await emu.task_files(task_id)
        assert (done["total_success"], done["total_failed"]) == (2, 0)
        assert {f["reason"] for f in done["files"]} == {""}


async def test_retry_validates_task_and_ids(emu: Emulator) -> None:
    """Retry needs task_id and ids: unknown task is 404, an id outside the task 400, missing fields 400."""
    _, body = await emu.upload([("a.txt", b"a")])
    task_id = body["data"]["task_id"]
    status, reply = await emu.call("POST", "/task/retry", json={"task_id": "123", "ids": ["1"]})
    assert (status, reply["code"]) == (404, "ErrNotFound")
    status, reply = await emu.call("POST", "/task/retry", json={"task_id": task_id, "ids": ["1"]})
    assert (status, reply["code"]) == (400, "ErrParamInvalid")
    assert "ids" in reply["msg"]
    status, reply = await emu.call("POST", "/task/retry", json={"task_id": task_id})
    assert status == 400
    assert "ids" in reply["msg"]
    file_id = body["data"]["file_id"]
    status, reply = await emu.call("POST", "/task/retry", json={"task_id": int(task_id), "ids": [file_id]})
    assert (status, reply["code"]) == (200, "OK")  # not failed: ignored


async def test_unknown_task_answers(emu: Emulator) -> None:
    """/task/get and /task/files on an unknown task are HTTP 200 with ErrServer (as API-NOTES records for
    /task/get; issue 13 item 13: /task/files answered an invented 404); no task_id is 400."""
    status, body = await emu.call("GET", "/task/get", params={"task_id": "777"})
    assert (status, body["code"], body["data"]) == (200, "ErrServer", None)
    status, body = await emu.call("GET", "/task/files", params={"task_id": "777"})
    assert (status, body["code"], body["data"]) == (200, "ErrServer", None)
    assert body["msg"] == "task 777 not found"
    status, body = await emu.call("GET", "/task/get")
    assert (status, body["code"]) == (400, "ErrParamInvalid")
    assert "task_id" in body["msg"]


async def test_task_files_paging_and_status_filter(config: MoiEmulatorConfig) -> None:
    """/task/files pages (default size 10, max 1000) and filters by status; bad paging is 400."""
    async with running(replace(config, task_delay_ms=0)) as emu:
        files = [(f"f{i:02}.txt", b"x" * i) for i in range(12)]
        _, body = await emu.upload(files[:6])
        _, more = await emu.upload(files[6:])  # two requests: at most 20 files each, keep it small
        task_id = body["data"]["task_id"]
        page1 = await emu.task_files(task_id, page=1, page_size=4)
        page2 = await emu.task_files(task_id, page=2, page_size=4)
        assert page1["total"] == 6
        assert len(page1["files"]) == 4
        assert len(page2["files"]) == 2
        assert [f["name"] for f in page1["files"] + page2["files"]] == [name for name, _ in files[:6]]
        assert len((await emu.task_files(task_id))["files"]) == 6
        assert (await emu.task_files(task_id, status=5))["total"] == 6
        assert (await emu.task_files(task_id, status=4))["files"] == []
        for params in ({"page": 0}, {"page_size": 1001}, {"page_size": "x"}, {"status": 9}):
            status, reply = await emu.call("GET", "/task/files", params={"task_id": task_id, **params})
            assert (status, reply["code"]) == (400, "ErrParamInvalid"), params
        assert more["data"]["task_id"] != task_id


async def test_task_list_pages_read_only_their_window_yet_agree_with_the_whole_list(config: MoiEmulatorConfig) -> None:
    """Unfiltered, by creation or id, a page is built from the newest tasks only; every page, either way
    round, is the matching slice of the whole list, and ``total`` counts every task."""
    async with running(replace(config, task_delay_ms=0)) as emu:
        ids = [(await emu.upload([(f"{i}.txt", b"x")]))[1]["data"]["task_id"] for i in range(7)]
        for order_by in ("created_at", "id"):
            for desc in ("true", "false"):
                whole = await emu.call("GET", "/task/list", params={"order_by": order_by, "is_desc": desc})
                everything = [t["id"] for t in whole[1]["data"]["tasks"]]
                assert everything == (ids[::-1] if desc == "true" else ids)
                paged: list[str] = []
                for page in (1, 2, 3, 4):
                    params = {"order_by": order_by, "is_desc": desc, "page": page, "page_size": 2}
                    _, body = await emu.call("GET", "/task/list", params=params)
                    assert body["data"]["total"] == 7
                    paged += [t["id"] for t in body["data"]["tasks"]]
                assert paged == everything


async def test_a_task_list_page_reads_its_own_tasks_through_an_index_whatever_the_account_holds(
    config: MoiEmulatorConfig,
) -> None:
    """A poll of the newest tasks (page 2 of 3 here) reads the task rows of that page only, from an index
    (no sort of every task), and their files in one statement, not one per task: its cost does not grow
    with the account (it was 6-8 ms of emulator CPU a page of 100 among 2,000 tasks)."""
    async with running(replace(config, task_delay_ms=0)) as emu:
        ids = [(await emu.upload([(f"{i}.txt", b"x")]))[1]["data"]["task_id"] for i in range(9)]
        db = emu.state.store._db
        statements: list[str] = []
        db.set_trace_callback(statements.append)
        try:
            params = {"order_by": "created_at", "is_desc": "true", "page": 2, "page_size": 3}
            _, body = await emu.call("GET", "/task/list", params=params)
        finally:
            db.set_trace_callback(None)
        assert [t["id"] for t in body["data"]["tasks"]] == ids[::-1][3:6]
        task_reads = [s for s in statements if "FROM tasks t" in s and "task_files" not in s]
        file_reads = [s for s in statements if "FROM task_files" in s]
        assert len(task_reads) == 1
        assert len(file_reads) == 1
        plan = " ".join(str(row[3]) for row in db.execute(f"EXPLAIN QUERY PLAN {task_reads[0]}"))
        assert "USING INDEX tasks_by_second" in plan
        assert "TEMP B-TREE" not in plan


async def test_task_list_filters_and_orders(config: MoiEmulatorConfig) -> None:
    """/task/list returns every task with total, ordered by creation, filterable by status."""
    async with running(replace(config, task_delay_ms=0)) as emu:
        ids = [(await emu.upload([(f"{i}.txt", b"x")]))[1]["data"]["task_id"] for i in range(3)]
        status, body = await emu.call("GET", "/task/list", params={"is_desc": "true", "page_size": 2})
        assert status == 200
        assert body["data"]["total"] == 3
        assert [t["id"] for t in body["data"]["tasks"]] == ids[::-1][:2]
        _, body = await emu.call("GET", "/task/list", params={"status": 1, "load_interval_types": "4"})
        assert body["data"] == {"tasks": [], "total": 0}
        status, body = await emu.call("GET", "/task/list", params={"order_by": "bogus"})
        assert status == 400


async def test_tasks_carry_the_5_0_file_counts_unless_asked_for_the_seed_form(config: MoiEmulatorConfig) -> None:
    """/task/get and /task/list give success_file_count / failed_file_count (API-NOTES: MOI 5.0);
    --no-task-counts answers without them, as the seed document does."""
    async with running(replace(config, task_delay_ms=0, task_fail_rate=1.0)) as emu:
        failed = (await emu.upload([("bad.txt", b"x")]))[1]["data"]["task_id"]
        emu.state.task_fail_rate = 0.0
        good = (await emu.upload([("a.txt", b"a"), ("b.txt", b"b")]))[1]["data"]["task_id"]
        _, listed = await emu.call("GET", "/task/list", params={"is_desc": "true"})
        tasks = listed["data"]["tasks"]
        counts = {t["id"]: (t["status"], t["success_file_count"], t["failed_file_count"]) for t in tasks}
        assert counts == {good: (TaskStatus.FINISHED, 2, 0), failed: (TaskStatus.FINISHED, 0, 1)}
        _, got = await emu.call("GET", "/task/get", params={"task_id": good})
        assert (got["data"]["task"]["success_file_count"], got["data"]["task"]["failed_file_count"]) == (2, 0)
    async with running(replace(config, task_delay_ms=0, task_counts=False)) as emu:
        task_id = (await emu.upload([("a.txt", b"a")]))[1]["data"]["task_id"]
        _, listed = await emu.call("GET", "/task/list")
        _, got = await emu.call("GET", "/task/get", params={"task_id": task_id})
        for task in (listed["data"]["tasks"][0], got["data"]["task"]):
            assert "success_file_count" not in task
            assert "failed_file_count" not in task


async def test_pause_and_resume(config: MoiEmulatorConfig) -> None:
    """Pausing freezes unfinished files (status 3) and resuming lets them finish."""
    async with running(replace(config, task_delay_ms=500)) as emu:
        _, body = await emu.upload([("a.txt", b"a")])
        task_id = body["data"]["task_id"]
        assert (await emu.call("POST", "/task/pause", json={"task_id": task_id}))[0] == 200
        await anyio.sleep(0.55)  # past the delay: only the pause keeps it unfinished
        assert (await emu.task(task_id))["status"] == TaskStatus.PAUSED
        assert (await emu.task_files(task_id))["files"][0]["status"] == FileStatus.PAUSED
        assert (await emu.call("POST", "/task/resume", json={"task_id": task_id}))[0] == 200
        await emu.wait_finished(task_id)
        status, body = await emu.call("POST", "/task/pause", json={"task_id": "5"})
        assert (status, body["code"]) == (404, "ErrNotFound")


async def test_status_waits_for_a_busy_store_without_blocking_the_server(emu: Emulator) -> None:
    """A status request is answered on the event loop when the store is free; while another thread holds
    the store (here: a long transaction) it waits in a worker thread, and other requests go on meanwhile."""
    _, body = await emu.upload([("a.txt", b"a")])
    task_id = body["data"]["task_id"]
    store = emu.state.store
    released = threading.Event()

    def hold() -> None:
        with store.transaction():
            released.wait(5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, hold)
        await anyio.sleep(0.1)  # the transaction has started
        answer: list[dict[str, Any]] = []

        async def ask() -> None:
            answer.append(await emu.task(task_id))

        tg.start_soon(ask)
        await anyio.sleep(0.1)
        assert answer == []  # still waiting for the store...
        assert (await emu.call("GET", "/_emulator/stats"))[0] == 200  # ...while the server answers others
        released.set()
    assert answer[0]["id"] == task_id


# --- volumes ----------------------------------------------------------------------------------------------


async def test_volume_create_and_info(emu: Emulator) -> None:
    """A created volume has a snowflake id, shows in /catalog/volume/info and accepts uploads."""
    status, body = await emu.call(
        "POST", "/catalog/volume/create", json={"database_id": 7, "name": "docs", "description": "d"}
    )
    assert status == 200
    assert body["data"]["id"].isdigit()
    volume_id = body["data"]["id"]
    _, info = await emu.call("POST", "/catalog/volume/info", json={"id": volume_id})
    assert {k: info["data"][k] for k in ("id", "name", "description", "ref")} == {
        "id": volume_id,
        "name": "docs",
        "description": "d",
        "ref": False,
    }
    status, body = await emu.call("POST", "/catalog/volume/create", json={"database_id": 7, "name": "docs"})
    assert (status, body["code"]) == (409, "ErrAlreadyExists")
    status, body = await emu.call("POST", "/catalog/volume/create", json={"database_id": "7", "name": "x"})
    assert status == 400
    assert "database_id" in body["msg"]
    status, body = await emu.call("POST", "/catalog/volume/info", json={"id": "999"})
    assert (status, body["code"]) == (404, "ErrNotFound")
    _, up = await emu.upload([("a.txt", b"a")], volume=volume_id)
    files = await emu.task_files(up["data"]["task_id"])
    assert files["files"][0]["path"] == "/docs/a.txt"


# --- faults -----------------------------------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after(config: MoiEmulatorConfig) -> None:
    """Beyond rate_limit requests per second the emulator answers 429 with an integer Retry-After >= 1, and
    counts each 429 in /_emulator/stats."""
    async with running(replace(config, rate_limit=1.0)) as emu:
        statuses = []
        for _ in range(3):
            async with emu.http.get("/task/list") as response:
                statuses.append(response.status)
                if response.status == 429:
                    body = await response.json()
                    retry_after = response.headers["Retry-After"]
        assert statuses[0] == 200
        assert 429 in statuses
        assert body["code"] == "ErrDynamicServiceRateLimit"
        assert retry_after.isdigit()
        assert int(retry_after) >= 1
        status, stats = await emu.call("GET", "/_emulator/stats")
        assert status == 200  # hooks are never limited
        assert stats["rate_limited"] == statuses.count(429)


async def test_error_rate_one_answers_500(config: MoiEmulatorConfig) -> None:
    """error_rate=1 makes every API request a 500 ErrServer, while the test hooks keep working."""
    async with running(replace(config, error_rate=1.0, seed=7)) as emu:
        status, body = await emu.upload([("a.txt", b"a")])
        assert (status, body["code"]) == (500, "ErrServer")
        assert await emu.files() == []
        emu.state.faults.settings.error_rate = 0.0
        assert (await emu.upload([("a.txt", b"a")]))[0] == 200


async def test_reset_rate_drops_the_connection_and_stores_nothing(config: MoiEmulatorConfig) -> None:
    """reset_rate=1 drops upload connections mid-body: the client sees a connection error, nothing is kept."""
    async with running(replace(config, reset_rate=1.0)) as emu:
        with pytest.raises(aiohttp.ClientError):
            await emu.upload([("big.bin", b"z" * 2_000_000)])
        assert await emu.files() == []
        assert staging_files(config) == []
        assert (await emu.call("GET", "/task/list"))[1]["data"]["total"] == 0  # only uploads are reset
        _, stats = await emu.call("GET", "/_emulator/stats")
        assert stats["requests"]["POST /connectors/upload"] == 1


async def test_client_abort_mid_body_leaves_nothing(emu: Emulator, config: MoiEmulatorConfig) -> None:
    """A client that disconnects halfway through a file part leaves no staged or stored file behind."""

    async def body() -> AsyncIterator[bytes]:
        yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n' + b"y" * 100_000
        await anyio.sleep(0.1)  # let the emulator start staging the part
        raise RuntimeError("client gives up")

    with pytest.raises(aiohttp.ClientError):
        await emu.call(
            "POST", "/connectors/upload", data=body(), headers={"Content-Type": "multipart/form-data; boundary=B"}
        )
    with anyio.fail_after(2):
        while True:  # the emulator notices the abort on its own schedule
            if not staging_files(config):
                break
            await anyio.sleep(0.02)
    assert await emu.files() == []


# --- persistence and hooks --------------------------------------------------------------------------------


async def test_state_persists_across_restarts(config: MoiEmulatorConfig) -> None:
    """A new app on the same data dir still knows volumes, stored files and old task ids."""
    async with running(config) as emu:
        _, created = await emu.call("POST", "/catalog/volume/create", json={"database_id": 1, "name": "v"})
        _, body = await emu.upload([("keep/me.txt", b"persist")])
        task_id = body["data"]["task_id"]
        before = await emu.files()
    await anyio.sleep(DELAY_MS / 1000)
    async with running(config) as emu:
        assert await emu.files() == before
        assert stored_body(emu, "keep/me.txt") == b"persist"
        assert (await emu.task(task_id))["status"] == TaskStatus.FINISHED
        assert (await emu.task_files(task_id))["files"][0]["status"] == FileStatus.SUCCESS
        _, info = await emu.call("POST", "/catalog/volume/info", json={"id": created["data"]["id"]})
        assert info["data"]["name"] == "v"
        _, again = await emu.upload([("other.txt", b"x")])
        assert int(again["data"]["task_id"]) > int(task_id)


async def test_an_answered_upload_survives_a_killed_emulator(tmp_path: Path) -> None:
    """An upload answered 200 is stored for good: with the emulator killed right after the answer (SIGKILL,
    no clean shutdown), its data dir holds every body, the small one (a database row) and the big one."""
    files = [("small.txt", b"s" * 100), ("big.bin", b"b" * (BODY_IN_DB_MAX + 1))]
    server = ServerProcess(MOI.serve_command(tmp_path / "data"))
    try:
        async with aiohttp.ClientSession(headers={"moi-key": MOI.api_key}) as http:
            form = upload_form(files, volume=MOI.volume_id)
            async with http.post(f"{server.url}/connectors/upload", data=form) as response:
                assert response.status == 200, await response.text()
        server.proc.kill()
        server.proc.wait()
    finally:
        server.stop()
    assert MOI.stored_bodies(tmp_path / "data") == dict(files)


async def test_emulator_stats_count_api_requests(emu: Emulator) -> None:
    """/_emulator/stats counts every API request by method and route, rejected ones included."""
    assert (await emu.call("GET", "/_emulator/stats"))[1] == {"requests": {}, "rate_limited": 0, "span_s": 0.0}
    await emu.upload([("a.txt", b"a")])
    await emu.call("GET", "/task/list")
    async with aiohttp.ClientSession(base_url=emu.url) as anonymous, anonymous.get("/task/list") as response:
        assert response.status == 401
    await emu.files()
    _, stats = await emu.call("GET", "/_emulator/stats")
    assert stats["requests"] == {"GET /task/list": 2, "POST /connectors/upload": 1}
    assert stats["rate_limited"] == 0
    assert stats["span_s"] >= 0.0


# --- building blocks --------------------------------------------------------------------------------------


def test_cli_flags_build_an_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's moi spec parses its flags (key from $MOI_KEY) and rejects out-of-range rates."""
    monkeypatch.setenv("MOI_KEY", "from-env")
    spec = emulator_specs()["moi"]
    parser = argparse.ArgumentParser()
    spec.add_arguments(parser)
    args = parser.parse_args(["--data-dir", str(tmp_path), "--volume", "1", "--volume", "2", "--rate-limit", "5"])
    app = spec.build_app(args)
    config = app[MOI_STATE].config
    assert (config.api_key, config.volumes, config.rate_limit) == ("from-env", ("1", "2"), 5.0)
    assert config.task_counts
    seed_form = spec.build_app(parser.parse_args(["--data-dir", str(tmp_path), "--no-task-counts"]))
    assert not seed_form[MOI_STATE].config.task_counts
    for bad in (["--error-rate", "1.5"], ["--task-delay-ms", "-1"], ["--rate-limit", "0"], ["--volume", "../x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--data-dir", str(tmp_path), *bad])
    with pytest.raises(ValueError, match="error_rate"):
        create_moi_app(MoiEmulatorConfig(data_dir=tmp_path, api_key="k", error_rate=2.0))


def test_destination_path_checks(tmp_path: Path) -> None:
    """relative_path_problem accepts plain relative paths; safe_join never leaves its root."""
    assert relative_path_problem("a/b/c.txt") is None
    for bad in ("", "/a", "a/../b", "..", "a\\b", "a//b", "./a", "a/"):
        assert relative_path_problem(bad) is not None, bad
    assert safe_join(tmp_path, "a/b.txt") == tmp_path.resolve() / "a" / "b.txt"
    (tmp_path / "link").symlink_to("/")
    with pytest.raises(ValueError, match="escapes"):
        safe_join(tmp_path, "link/etc")
