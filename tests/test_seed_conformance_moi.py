"""Issue 13, seed conformance for MOI (items 12, 13, 14, 16), in both directions: the client sends the
documented form (asserted on what the emulator received), and the emulator refuses what is not documented
with the documented error."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from pydantic import SecretStr

import ingest
from ingest.config import EngineConfig, RunConfig, SourceConfig
from ingest.emulators.kit.server import serve_in_background
from ingest.emulators.moi import MoiEmulatorConfig, create_moi_app
from ingest.emulators.moi import uploads as moi_uploads
from ingest.models import Receipt, RemoteState
from ingest.platforms.base import TargetContext
from ingest.platforms.moi.target import MoiTarget, MoiTargetConfig

pytestmark = pytest.mark.anyio

KEY = "conformance-key"
VOLUME = "1001"


@asynccontextmanager
async def moi(tmp_path: Path, **config: Any) -> AsyncIterator[str]:
    settings = MoiEmulatorConfig(**{"data_dir": tmp_path / "moi", "api_key": KEY, "volumes": (VOLUME,), **config})
    async with serve_in_background(create_moi_app(settings)) as url:
        yield url


async def call(url: str, method: str, path: str, key: str = KEY, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(base_url=url, headers={"moi-key": key}) as http,
        http.request(method, path, **kwargs) as response,
    ):
        return response.status, await response.json()


def run_config(url: str, src: Path, manifest: Path, key: str = KEY) -> RunConfig:
    return RunConfig(
        source=SourceConfig(path=src),
        target=MoiTargetConfig(endpoint=url, api_key=SecretStr(key), volume_id=VOLUME),
        engine=EngineConfig(concurrency=2, poll_initial=0.02, poll_max=0.1),
        manifest=manifest,
        quiet=True,
    )


# --- item 12: which field carries the folder ---------------------------------------------------------------


async def test_client_sends_moi_5_meta_filename_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client sends MOI 5.0's meta: ``filename`` the file's own name, ``path`` its path in the tree (the
    request has no destination-folder field); the part's file name is the file's name; the tree is kept."""
    received: list[Any] = []
    original = moi_uploads._parse_meta

    def spy(fields: Any, file_count: int) -> Any:
        received.append(json.loads(fields["meta"]))
        return original(fields, file_count)

    monkeypatch.setattr(moi_uploads, "_parse_meta", spy)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "b.md").write_text("nested")
    (src / "b.md").write_text("top")
    async with moi(tmp_path) as url:
        summary = await ingest.run(run_config(url, src, tmp_path / "m.db"))
        _, stored = await call(url, "GET", "/_emulator/files")
    assert (summary.done, summary.failed) == (2, 0)
    entries = sorted((e for batch in received for e in batch), key=lambda e: e["path"])
    assert entries == [{"filename": "b.md", "path": "b.md"}, {"filename": "b.md", "path": "sub/b.md"}]
    assert sorted(f["path"] for f in stored) == ["b.md", "sub/b.md"]


async def test_emulator_accepts_the_seed_the_sdk_and_the_5_0_forms(tmp_path: Path) -> None:
    """Seed form (``file_name`` + size), SDK auto form (``filename`` = ``path``), 5.0 form with a folder."""
    forms = [
        ("a.txt", [{"file_name": "a.txt", "file_size": 1, "mime_type": "text/plain"}], "a.txt"),
        ("b.txt", [{"filename": "b.txt", "path": "b.txt"}], "b.txt"),
        ("c.txt", [{"filename": "c.txt", "path": "docs/c.txt"}], "docs/c.txt"),
        ("d.txt", [{"filename": "d.txt", "path": "/"}], "d.txt"),  # the SDK's table-import path
    ]
    async with moi(tmp_path) as url:
        for name, meta, _ in forms:
            form = aiohttp.FormData(quote_fields=False)
            form.add_field("VolumeID", VOLUME)
            form.add_field("meta", json.dumps(meta))
            form.add_field("file", io.BytesIO(b"x"), filename=name)
            status, body = await call(url, "POST", "/connectors/upload", data=form)
            assert (status, body["code"]) == (200, "OK"), body
        _, stored = await call(url, "GET", "/_emulator/files")
    assert sorted(f["path"] for f in stored) == sorted(dest for *_, dest in forms)


# --- item 13: an unknown task ------------------------------------------------------------------------------


async def _poll_unknown(url: str) -> list[Any]:
    target = MoiTarget(MoiTargetConfig(endpoint=url, api_key=SecretStr(KEY), volume_id=VOLUME), TargetContext())
    try:
        with anyio.fail_after(10):
            return await target.poll([Receipt("a.txt", remote_id="5", task_id="424242")])
    finally:
        await target.aclose()


async def test_unknown_task_fails_its_files_promptly(tmp_path: Path) -> None:
    """The emulator answers /task/files for an unknown task as MOI does (HTTP 200 ErrServer); the target fails
    the task's files at once with the platform's words instead of polling until --task-timeout."""
    async with moi(tmp_path) as url:
        status, body = await call(url, "GET", "/task/files", params={"task_id": "424242"})
        assert (status, body["code"]) == (200, "ErrServer")
        [found] = await _poll_unknown(url)
    assert found.state is RemoteState.FAILED
    assert "424242" in (found.reason or "")
    assert "not found" in (found.reason or "")


async def test_unknown_task_as_404_fails_its_files_too(tmp_path: Path) -> None:
    """A platform that answers 404 ErrNotFound instead gets the same prompt failure."""

    async def files(request: web.Request) -> web.Response:
        body = {"code": "ErrNotFound", "msg": "task 424242 not found", "data": None}
        return web.json_response(body, status=404)

    app = web.Application()
    app.router.add_get("/task/files", files)
    async with serve_in_background(app) as url:
        [found] = await _poll_unknown(url)
    assert found.state is RemoteState.FAILED
    assert "task 424242 not found" in (found.reason or "")


# --- item 14: the seed's "upload files to a connector" ------------------------------------------------------


async def test_seed_upload_to_connector_form_is_accepted(tmp_path: Path) -> None:
    """``files={'data': open('example.txt', 'rb')}`` and nothing else, as the seed's example sends it."""
    async with moi(tmp_path) as url:
        form = aiohttp.FormData()
        form.add_field("data", io.BytesIO(b"hello"), filename="example.txt")
        status, body = await call(url, "POST", "/connectors/upload", data=form)
    assert (status, body["code"]) == (200, "OK"), body
    [conn_file_id] = body["data"]["conn_file_ids"]
    assert body["data"]["file_ids"] == [conn_file_id]
    kept = tmp_path / "moi" / ".connector-files" / conn_file_id / "example.txt"
    assert kept.read_bytes() == b"hello"


async def test_undocumented_upload_forms_are_refused(tmp_path: Path) -> None:
    """``file`` parts without VolumeID stay a 400 naming VolumeID; a data part with a folder name is refused."""
    async with moi(tmp_path) as url:
        form = aiohttp.FormData()
        form.add_field("file", io.BytesIO(b"hello"), filename="example.txt")
        status, body = await call(url, "POST", "/connectors/upload", data=form)
        assert (status, body["code"], body["msg"]) == (400, "ErrParamInvalid", "form field VolumeID is required")
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("data", io.BytesIO(b"hello"), filename="../x.txt")
        status, body = await call(url, "POST", "/connectors/upload", data=form)
        assert (status, body["code"]) == (400, "ErrParamInvalid")


# --- item 16: ErrForbidden ---------------------------------------------------------------------------------


async def test_restricted_key_gets_err_forbidden(tmp_path: Path) -> None:
    """A key limited to some volumes gets 403 ErrForbidden elsewhere; its own volume works."""
    async with moi(tmp_path, volumes=(VOLUME, "2002"), restricted_keys=(("reader", ("2002",)),)) as url:
        status, body = await call(url, "POST", "/catalog/volume/info", key="reader", json={"id": VOLUME})
        assert (status, body["code"]) == (403, "ErrForbidden")
        assert VOLUME in body["msg"]
        status, body = await call(url, "POST", "/catalog/volume/info", key="reader", json={"id": "2002"})
        assert (status, body["code"]) == (200, "OK")
        form = aiohttp.FormData()
        form.add_field("VolumeID", VOLUME)
        form.add_field("meta", json.dumps([{"filename": "a.txt", "path": "a.txt"}]))
        form.add_field("file", io.BytesIO(b"x"), filename="a.txt")
        status, body = await call(url, "POST", "/connectors/upload", key="reader", data=form)
        assert (status, body["code"]) == (403, "ErrForbidden")
        status, body = await call(
            url, "POST", "/catalog/volume/create", key="reader", json={"database_id": 1, "name": "v"}
        )
        assert (status, body["code"]) == (403, "ErrForbidden")
        status, body = await call(url, "POST", "/catalog/volume/info", key="nobody", json={"id": VOLUME})
        assert (status, body["code"]) == (401, "ErrUnauthorized")


async def test_err_forbidden_is_a_one_line_permission_error(tmp_path: Path) -> None:
    """A run with a key that may not use the volume stops with PermissionDenied, one line, key not echoed."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    async with moi(tmp_path, restricted_keys=(("reader-secret-9", ("2002",)),)) as url:
        with pytest.raises(ingest.PermissionDenied) as err:
            await ingest.run(run_config(url, src, tmp_path / "m.db", key="reader-secret-9"))
    message = str(err.value)
    assert "\n" not in message
    assert "permission" in message
    assert "reader-secret-9" not in message
