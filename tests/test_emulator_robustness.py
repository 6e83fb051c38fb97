"""Issue 13 item 3 (part): hostile bodies get 400 in the platform's envelope, never a 500."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from ingest.emulators.kit.server import serve_in_background
from ingest.emulators.moi import MoiEmulatorConfig, create_moi_app

pytestmark = pytest.mark.anyio

BOUNDARY = "xYzBoundary"
#: curl's: 24 dashes and 22 hex digits.
LONG_BOUNDARY = "------------------------0123456789abcdef012345"


def _form(parts: list[tuple[bytes, bytes]], boundary: str = BOUNDARY) -> bytes:
    out = b""
    for disposition, body in parts:
        out += f"--{boundary}\r\n".encode() + b"Content-Disposition: " + disposition + b"\r\n\r\n" + body + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def _post(url: str, body: bytes, boundary: str = BOUNDARY) -> tuple[int, dict[str, object]]:
    headers = {"moi-key": "k", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with aiohttp.ClientSession() as http, http.post(url + "/connectors/upload", data=body, headers=headers) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("filename", [b"\xff\xfe.txt", b"caf\xe9.txt", b"a\xc3.txt"])
async def test_non_utf8_file_name_is_400(tmp_path: Path, filename: bytes) -> None:
    meta = json.dumps([{"filename": "a.txt", "path": "a.txt"}]).encode()
    body = _form([
        (b'form-data; name="VolumeID"', b"1001"),
        (b'form-data; name="meta"', meta),
        (b'form-data; name="file"; filename="' + filename + b'"', b"data"),
    ])  # fmt: skip
    config = MoiEmulatorConfig(data_dir=tmp_path / "moi", api_key="k", volumes=("1001",))
    async with serve_in_background(create_moi_app(config)) as url:
        status, reply = await _post(url, body)
    assert (status, reply["code"]) == (400, "ErrParamInvalid"), reply
    assert "UTF-8" in str(reply["msg"])


async def test_deeply_nested_meta_is_400(tmp_path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    body = _form([(b'form-data; name="VolumeID"', b"1001"), (b'form-data; name="meta"', deep)])
    config = MoiEmulatorConfig(data_dir=tmp_path / "moi", api_key="k", volumes=("1001",))
    async with serve_in_background(create_moi_app(config)) as url:
        status, reply = await _post(url, body)
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + "/catalog/volume/info", data=b'{"id":' * 100_000, headers={"moi-key": "k"}) as r,
        ):
            json_status, json_reply = r.status, await r.json()
    assert (status, reply["code"]) == (400, "ErrParamInvalid"), reply
    assert "nested too deeply" in str(reply["msg"])
    assert (json_status, json_reply["code"]) == (400, "ErrParamInvalid"), json_reply


async def test_a_first_part_named_charset_with_a_long_boundary_is_400(tmp_path: Path) -> None:
    """aiohttp reads a first ``_charset_`` part as the form's charset, and asserts on it when the boundary
    is longer than 30 bytes, as curl's is: the client gets the platform's 400, not an internal error."""
    body = _form(
        [(b'form-data; name="_charset_"', b"utf-8"), (b'form-data; name="file"; filename="a.txt"', b"data")],
        LONG_BOUNDARY,
    )
    config = MoiEmulatorConfig(data_dir=tmp_path / "moi", api_key="k", volumes=("1001",))
    async with serve_in_background(create_moi_app(config)) as url:
        status, reply = await _post(url, body, LONG_BOUNDARY)
    assert (status, reply["code"]) == (400, "ErrParamInvalid"), reply
    assert "multipart body could not be read" in str(reply["msg"])
