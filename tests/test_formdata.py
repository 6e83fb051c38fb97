"""Upload forms: small local files go out as one in-memory body, byte for byte what aiohttp's ``FormData``
would stream; big files and bucket objects still stream; a file that changed since the walk is refused."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import aiohttp
import anyio
import pytest
from anyio.abc import TaskStatus

from ingest.errors import SourceFileError
from ingest.formdata import READ_ON_LOOP_MAX, Form
from ingest.models import FileItem
from ingest.smallfiles import SMALL_FILE_MAX, read_upto

pytestmark = pytest.mark.anyio


def item_for(path: Path, size: int | None = None) -> FileItem:
    st = path.stat()
    return FileItem(path.name, path, st.st_size if size is None else size, st.st_mtime_ns)


class Collect:
    """An aiohttp payload writer that keeps what it is given."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


async def aiohttp_encoding(fields: list[tuple[str, str]], files: list[tuple[str, bytes, str, str]]) -> bytes:
    form = aiohttp.FormData(quote_fields=False)
    for name, value in fields:
        form.add_field(name, value)
    for name, data, filename, content_type in files:
        form.add_field(name, data, filename=filename, content_type=content_type)
    payload = form()
    out = Collect()
    await payload.write(out)  # type: ignore[arg-type]
    boundary = payload.content_type.split("boundary=", 1)[1]
    return bytes(out.data).replace(boundary.encode(), b"BOUNDARY")


async def test_small_files_are_one_body_encoded_as_aiohttp_does(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello\r\n--not-a-boundary")
    (tmp_path / "b.pdf").write_bytes(bytes(range(256)))
    form = Form()
    form.add_field("VolumeID", "1001")
    form.add_field("meta", '[{"filename": "é"}]')
    form.add_file("file", item_for(tmp_path / "a.txt"), filename='a "b\\c.txt', content_type="text/plain")
    form.add_file("file", item_for(tmp_path / "b.pdf"), filename="b.pdf", content_type="application/pdf")
    seen: list[int] = []
    async with form.body(on_bytes=seen.append) as sent:
        assert isinstance(sent.data, bytes)
        assert sent.file_bodies == []
        boundary = sent.headers["Content-Type"].split("boundary=", 1)[1]
        mine = sent.data.replace(boundary.encode(), b"BOUNDARY")
    expected = await aiohttp_encoding(
        [("VolumeID", "1001"), ("meta", '[{"filename": "é"}]')],
        [
            ("file", b"hello\r\n--not-a-boundary", 'a "b\\c.txt', "text/plain"),
            ("file", bytes(range(256)), "b.pdf", "application/pdf"),
        ],
    )
    assert mine == expected
    assert sent.md5s == [
        hashlib.md5(b"hello\r\n--not-a-boundary").hexdigest(),
        hashlib.md5(bytes(range(256))).hexdigest(),
    ]
    assert seen == [23, 256]


async def test_a_big_file_makes_the_whole_form_stream(tmp_path: Path) -> None:
    (tmp_path / "small.txt").write_bytes(b"x")
    (tmp_path / "big.bin").write_bytes(b"y" * (SMALL_FILE_MAX + 1))
    form = Form()
    form.add_file("file", item_for(tmp_path / "small.txt"), filename="small.txt", content_type="text/plain")
    form.add_file("file", item_for(tmp_path / "big.bin"), filename="big.bin", content_type="application/x")
    async with form.body(chunk_size=4096) as sent:
        assert isinstance(sent.data, aiohttp.FormData)
        assert [b.item.rel_path for b in sent.file_bodies] == ["small.txt", "big.bin"]


@pytest.mark.parametrize(("actual", "declared", "message"), [(10, 5, "file grew"), (4, 10, "file shrank")])
async def test_a_small_file_that_changed_since_the_walk_is_refused(
    tmp_path: Path, actual: int, declared: int, message: str
) -> None:
    (tmp_path / "ok.txt").write_bytes(b"fine")
    (tmp_path / "a.txt").write_bytes(b"0" * actual)
    form = Form()
    form.add_file("file", item_for(tmp_path / "ok.txt"), filename="ok.txt", content_type="text/plain")
    form.add_file("file", item_for(tmp_path / "a.txt", size=declared), filename="a.txt", content_type="text/plain")
    with pytest.raises(SourceFileError, match=rf"a\.txt: {message} while being sent"):
        async with form.body():
            pass


async def test_a_small_file_that_vanished_is_a_source_error(tmp_path: Path) -> None:
    form = Form()
    form.add_file("file", FileItem("gone.txt", tmp_path / "gone.txt", 3, 0), filename="gone.txt", content_type="x/y")
    with pytest.raises(SourceFileError, match="disappeared between the walk and the upload"):
        async with form.body():
            pass


async def test_a_form_of_a_few_kib_is_read_on_the_event_loop(tmp_path: Path) -> None:
    """Small files adding up to ``READ_ON_LOOP_MAX`` are read without a worker thread (the hop cost more
    than the read); more than that still goes to one. Shown by keeping the only worker thread busy."""
    (tmp_path / "a.txt").write_bytes(b"a" * 4096)
    half = READ_ON_LOOP_MAX // 2 + 1
    for name in ("b.bin", "c.bin"):
        (tmp_path / name).write_bytes(b"b" * half)
    few = Form()
    few.add_file("file", item_for(tmp_path / "a.txt"), filename="a.txt", content_type="text/plain")
    more = Form()
    for name in ("b.bin", "c.bin"):
        more.add_file("file", item_for(tmp_path / name), filename=name, content_type="application/x")
    threads = anyio.to_thread.current_default_thread_limiter()
    total = threads.total_tokens
    threads.total_tokens = 1
    release = anyio.Event()

    async def hold_the_thread(*, task_status: TaskStatus[None]) -> None:
        async with threads:
            task_status.started()
            await release.wait()

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(hold_the_thread)
            with anyio.fail_after(10):
                async with few.body() as sent:
                    assert sent.md5s == [hashlib.md5(b"a" * 4096).hexdigest()]
            with anyio.move_on_after(0.3) as waiting:
                async with more.body():
                    pass
            assert waiting.cancelled_caught
            release.set()
    finally:
        threads.total_tokens = total
    async with more.body() as sent:
        assert sent.md5s == [hashlib.md5(b"b" * half).hexdigest()] * 2


def test_a_small_file_is_read_whole_however_short_its_reads_come_back() -> None:
    """``read_upto`` asks again after a short read (a network or FUSE file system may return less before the
    end, as a pipe does here) and stops at ``n`` bytes or at the end, as a buffered ``read(n)`` would."""
    r, w = os.pipe()

    def write_in_pieces() -> None:
        for piece in (b"ab", b"cd", b"ef"):
            os.write(w, piece)
            time.sleep(0.05)
        os.close(w)

    writer = threading.Thread(target=write_in_pieces)
    writer.start()
    try:
        assert read_upto(r, 5) == b"abcde"
        assert read_upto(r, 5) == b"f"
        assert read_upto(r, 5) == b""
    finally:
        writer.join()
        os.close(r)


async def test_a_small_file_that_became_a_folder_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").mkdir()
    form = Form()
    form.add_file("file", FileItem("a.txt", tmp_path / "a.txt", 3, 0), filename="a.txt", content_type="x/y")
    with pytest.raises(SourceFileError, match="became a folder after the walk"):
        async with form.body():
            pass
