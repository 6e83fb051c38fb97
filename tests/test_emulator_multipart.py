"""The emulators' fast reading of a part's Content-Disposition, and of a request's Content-Type, agrees
with aiohttp's full parsers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.multipart import content_disposition_filename, parse_content_disposition
from aiohttp.test_utils import make_mocked_request

from ingest.emulators.kit.multipart import media_type, part_names


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
