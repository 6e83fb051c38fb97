"""The emulators' fast reading of a part's Content-Disposition agrees with aiohttp's full parser."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from ingest.emulators.kit.multipart import part_names


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
