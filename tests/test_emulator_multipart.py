"""The emulators' fast reading of a part's Content-Disposition, of a request's Content-Type, and of a
whole form, agrees with aiohttp's full parsers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp
import aiohttp.multipart
import pytest
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import content_disposition_filename, parse_content_disposition
from aiohttp.test_utils import TestServer, make_mocked_request

from ingest.emulators.kit.common import ApiError
from ingest.emulators.kit.multipart import media_type, part_names, receive_parts


def part(header: str) -> Any:
    return SimpleNamespace(headers={"Content-Disposition": header})


@pytest.mark.parametrize(
    "header",
    [
        'form-data; name="file"; filename="a.txt"',
        'form-data; name="meta"',
        'form-data; name="file"; filename="文档/红楼梦 第1回.md"',
        'form-data; name="file"; filename="a\\"b.txt"',
        "form-data; name=file; filename*=utf-8''%E7%BA%A2.pdf",
        'form-data;name="file";filename="spaced.txt"',
        'form-data; name="file"; filename=""',
    ],
)
def test_part_names_match_aiohttp(header: str) -> None:
    """Simple headers take the fast path, others the full parser: the answer is the same."""
    _, params = parse_content_disposition(header)
    assert part_names(part(header)) == (params.get("name"), content_disposition_filename(params, "filename"))


@pytest.mark.parametrize(
    "header",
    [
        "multipart/form-data; boundary=B",
        "Multipart/Form-Data; boundary=B",
        "multipart/form-data ; boundary=B",
        "multipart/form-data",
        "text/plain; boundary=B",
        "multipart/mixed; boundary=B",
        "multipart/form-data (a comment); boundary=B",
        '"multipart/form-data"; boundary=B',
        "multipart / form-data; boundary=B",
        "multipart/form-data/x; boundary=B",
        "multipart",
        "",
        ";boundary=B",
        "multipart/form-data\t; boundary=B",
    ],
)
def test_media_type_matches_aiohttp(header: str) -> None:
    """A request's media type, read directly when it is plain tokens: the answer is aiohttp's."""
    request = make_mocked_request("POST", "/", headers={"Content-Type": header})
    assert media_type(request) == request.content_type


def test_media_type_without_a_header_is_aiohttps_default() -> None:
    request = make_mocked_request("POST", "/")
    assert media_type(request) == request.content_type == "application/octet-stream"


# --- walking a whole form: the emulators' reader against aiohttp's ----------------------------------------


def _form(*parts: tuple[str, bytes]) -> bytes:
    """A multipart/form-data body (boundary ``B``) from (Content-Disposition, body) pairs."""
    out = b"".join(b"--B\r\nContent-Disposition: " + h.encode() + b"\r\n\r\n" + body + b"\r\n" for h, body in parts)
    return out + b"--B--\r\n"


FORMS = {
    "one file, as clients send it": _form(
        ('form-data; name="VolumeID"', b"1001"),
        ('form-data; name="meta"', b'[{"filename": "a.txt"}]'),
        ('form-data; name="file"; filename="a.txt"', b"x" * 5000),
    ),
    "a _charset_ part first": _form(('form-data; name="_charset_"', b"utf-8"), ('form-data; name="meta"', b"[]")),
    "a _charset_ part later": _form(('form-data; name="meta"', b"[]"), ('form-data; name="_charset_"', b"gbk")),
    "headers only the full parser reads": _form(
        ("form-data; name=file; filename*=utf-8''%E7%BA%A2.pdf", b"pdf"),
        ('form-data;name="meta"', b"[]"),
        ('form-data; name="file"; filename="a\\"b.txt"', b"q"),
    ),
}


async def _parts_seen(body: bytes, *, ours: bool) -> list[tuple[str | None, str | None, bytes]]:
    """What a real aiohttp server on 127.0.0.1 reads from ``body``: through ``receive_parts`` (``ours``) or
    through aiohttp's own ``request.multipart()`` loop; a last entry ``("refused", …)`` if reading failed."""
    seen: list[tuple[str | None, str | None, bytes]] = []

    async def on_part(part: BodyPartReader) -> None:
        seen.append((*part_names(part), bytes(await part.read())))

    async def handler(request: web.Request) -> web.Response:
        try:
            if ours:
                await receive_parts(request, on_part, lambda msg: ApiError(400, "bad", msg))
            else:
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    assert isinstance(part, BodyPartReader)
                    await on_part(part)
        except (ApiError, ValueError, HttpProcessingError):
            seen.append(("refused", None, b""))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handler)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        headers = {"Content-Type": "multipart/form-data; boundary=B"}
        async with session.post(server.make_url("/"), data=body, headers=headers) as response:
            assert response.status == 200, await response.text()
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("form", FORMS, ids=list(FORMS))
async def test_the_emulators_read_every_form_as_aiohttp_does(form: str) -> None:
    """The same parts, names and bodies; a ``_charset_`` part handled wherever aiohttp handles it (this
    aiohttp then reads the next part's headers from the boundary line: the form is refused either way)."""
    assert await _parts_seen(FORMS[form], ours=True) == await _parts_seen(FORMS[form], ours=False)


@pytest.mark.anyio
async def test_usual_headers_never_reach_aiohttps_full_disposition_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's reader parsed every part's Content-Disposition in full to look for ``_charset_`` (its check
    meant for the first part runs for each): ~a third of the emulator's CPU per one-file upload."""
    calls: list[str | None] = []

    def counting(header: str | None) -> tuple[str | None, dict[str, str]]:
        calls.append(header)
        return parse_content_disposition(header)

    monkeypatch.setattr(aiohttp.multipart, "parse_content_disposition", counting)
    seen = await _parts_seen(FORMS["one file, as clients send it"], ours=True)
    assert [name for name, _, _ in seen] == ["VolumeID", "meta", "file"]
    assert calls == []
