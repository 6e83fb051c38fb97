"""Streamed file bodies: chunked, hashed on the way, and refusing to send a file that changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ingest.errors import SourceFileError
from ingest.http import FileBody, parse_retry_after
from ingest.models import FileItem

pytestmark = pytest.mark.anyio


def item_for(path: Path, size: int | None = None) -> FileItem:
    st = path.stat()
    return FileItem(path.name, path, st.st_size if size is None else size, st.st_mtime_ns)


async def drain(body: FileBody) -> list[bytes]:
    return [chunk async for chunk in body._chunks()]


async def test_body_streams_in_chunks_and_hashes(tmp_path: Path) -> None:
    """The file comes out in chunk-sized pieces, the declared size is the file size, md5 is computed."""
    data = bytes(range(256)) * 1000
    (tmp_path / "a.bin").write_bytes(data)
    body = FileBody(item_for(tmp_path / "a.bin"), chunk_size=4096)
    chunks = await drain(body)
    assert body.size == len(data)
    assert max(len(c) for c in chunks) <= 4096
    assert b"".join(chunks) == data
    assert body.hexdigest == hashlib.md5(data).hexdigest()


async def test_a_file_that_grew_is_not_sent(tmp_path: Path) -> None:
    """More bytes than the walk saw: the send stops with a SourceFileError naming the file."""
    (tmp_path / "a.txt").write_bytes(b"0123456789")
    body = FileBody(item_for(tmp_path / "a.txt", size=5), chunk_size=4096)
    with pytest.raises(SourceFileError, match=r"a\.txt: file grew while being sent"):
        await drain(body)
    assert body.failure is not None


async def test_a_file_that_shrank_is_not_sent(tmp_path: Path) -> None:
    """Fewer bytes than declared would corrupt the multipart body: refused."""
    (tmp_path / "a.txt").write_bytes(b"0123")
    with pytest.raises(SourceFileError, match="file shrank while being sent"):
        await drain(FileBody(item_for(tmp_path / "a.txt", size=10)))


async def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    """Opening a file that vanished says so in one line."""
    item = FileItem("gone.txt", tmp_path / "gone.txt", 3, 0)
    with pytest.raises(SourceFileError, match="disappeared between the walk and the upload"):
        FileBody(item)


@pytest.mark.parametrize(("header", "expected"), [("3", 3.0), ("0.5", 0.5), (None, None), ("soon", None)])
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    """Retry-After in seconds is read; junk is ignored rather than trusted."""
    assert parse_retry_after(header) == expected


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    """An HTTP-date Retry-After is honoured; a date already past means no wait."""
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
