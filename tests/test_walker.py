"""The directory source: filters, symlink policy, loop safety, odd names, streaming order."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.models import FileItem
from ingest.sources import listing
from ingest.sources.listing import CHILD_CODE
from ingest.sources.local import (
    CHILD_WALK_MIN,
    LocalSource,
    Rejected,
    WalkOptions,
    WalkStats,
    walk,
    walk_batches,
    walk_rows,
)

pytestmark = pytest.mark.anyio


def make_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_bytes_name(path: bytes) -> None:
    with open(path, "wb") as f:
        f.write(b"x")


async def collect(root: Path, **options: object) -> tuple[list[FileItem | Rejected], WalkStats]:
    stats = WalkStats()
    items = [e async for e in walk(root, WalkOptions(**options), stats)]  # type: ignore[arg-type]
    return items, stats


async def test_yields_relative_posix_paths_with_size_and_mtime(tmp_path: Path) -> None:
    """Every regular file comes out once, relative to the root, in a stable sorted order."""
    make_tree(tmp_path, {"b.pdf": b"12345", "a/x.md": b"", "a/y/z.txt": b"zz"})
    items, stats = await collect(tmp_path)
    assert [i.rel_path for i in items if isinstance(i, FileItem)] == ["b.pdf", "a/x.md", "a/y/z.txt"]
    by_path = {i.rel_path: i for i in items if isinstance(i, FileItem)}
    assert by_path["b.pdf"].size == 5
    assert by_path["a/y/z.txt"].mtime_ns == os.stat(tmp_path / "a/y/z.txt").st_mtime_ns
    assert stats.files_seen == 3


async def test_include_exclude_and_max_size(tmp_path: Path) -> None:
    """Include keeps only matches, exclude removes files and whole folders, max_size drops big files."""
    make_tree(
        tmp_path,
        {"a.pdf": b"x", "b.txt": b"x", "skip/c.pdf": b"x", "d/big.pdf": b"x" * 100, "d/e.pdf": b"x"},
    )
    items, stats = await collect(tmp_path, include=("*.pdf",), exclude=("skip",), max_size=10)
    assert sorted(i.rel_path for i in items) == ["a.pdf", "d/e.pdf"]
    assert stats.too_large == 1
    assert stats.excluded == 2  # b.txt and the skip folder


async def test_hidden_files_skipped_by_default(tmp_path: Path) -> None:
    """Dot-files and dot-folders are left out unless asked for."""
    make_tree(tmp_path, {".env": b"s", ".git/config": b"c", "a.txt": b"a"})
    items, _ = await collect(tmp_path)
    assert [i.rel_path for i in items] == ["a.txt"]
    items, _ = await collect(tmp_path, hidden=True)
    assert sorted(i.rel_path for i in items) == [".env", ".git/config", "a.txt"]


async def test_symlinks_not_followed_by_default(tmp_path: Path) -> None:
    """Links to files and folders are skipped unless --follow-symlinks."""
    make_tree(tmp_path / "src", {"a.txt": b"a"})
    make_tree(tmp_path / "elsewhere", {"b.txt": b"b"})
    (tmp_path / "src" / "link.txt").symlink_to(tmp_path / "src" / "a.txt")
    (tmp_path / "src" / "dir").symlink_to(tmp_path / "elsewhere")
    items, stats = await collect(tmp_path / "src")
    assert [i.rel_path for i in items] == ["a.txt"]
    assert stats.symlinks == 2
    items, _ = await collect(tmp_path / "src", follow_symlinks=True)
    assert sorted(i.rel_path for i in items) == ["a.txt", "dir/b.txt", "link.txt"]


async def test_symlink_loops_end(tmp_path: Path) -> None:
    """A link back up the tree is visited once, never forever."""
    make_tree(tmp_path, {"a/b.txt": b"b"})
    (tmp_path / "a" / "loop").symlink_to(tmp_path)
    (tmp_path / "a" / "self").symlink_to(tmp_path / "a")
    items, stats = await collect(tmp_path, follow_symlinks=True)
    assert [i.rel_path for i in items] == ["a/b.txt"]
    assert stats.loops == 2


async def test_dangling_symlink_is_ignored_when_following(tmp_path: Path) -> None:
    """A link to nothing is not a file to send."""
    make_tree(tmp_path, {"a.txt": b"a"})
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    items, _ = await collect(tmp_path, follow_symlinks=True)
    assert [i.rel_path for i in items] == ["a.txt"]


async def test_non_utf8_name_is_rejected_with_a_clear_reason(tmp_path: Path) -> None:
    """A name that is not UTF-8 cannot travel in JSON or HTTP: it is reported, escaped, not sent."""
    make_tree(tmp_path, {"ok.txt": b"a"})
    write_bytes_name(os.path.join(os.fsencode(tmp_path), b"caf\xe9.txt"))
    items, _ = await collect(tmp_path)
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert [r.rel_path for r in rejected] == ["caf\\xe9.txt"]
    assert "not valid UTF-8" in rejected[0].reason


async def test_special_files_are_skipped(tmp_path: Path) -> None:
    """FIFOs and sockets are not documents."""
    make_tree(tmp_path, {"a.txt": b"a"})
    os.mkfifo(tmp_path / "pipe")
    items, stats = await collect(tmp_path)
    assert [i.rel_path for i in items] == ["a.txt"]
    assert stats.special == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any folder")
async def test_unreadable_folder_is_reported(tmp_path: Path) -> None:
    """A folder that cannot be listed is reported once, and the walk goes on."""
    make_tree(tmp_path, {"locked/a.txt": b"a", "b.txt": b"b"})
    (tmp_path / "locked").chmod(0)
    try:
        items, _ = await collect(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert any(isinstance(i, Rejected) and i.rel_path == "locked/" for i in items)


async def test_walk_is_lazy(tmp_path: Path) -> None:
    """The walker yields before it has seen the whole tree (it never lists it all up front)."""
    make_tree(tmp_path, {f"d{i}/f.txt": b"x" for i in range(50)})
    gen = walk(tmp_path, WalkOptions())
    first = await gen.__anext__()
    # Folders not yet visited can vanish without the walk noticing: nothing was read ahead.
    for i in range(10, 50):
        (tmp_path / f"d{i}" / "f.txt").unlink()
        (tmp_path / f"d{i}").rmdir()
    rest = [e async for e in gen]
    assert isinstance(first, FileItem)
    assert len(rest) == 9


async def test_walk_batches_read_at_most_one_batch_ahead(tmp_path: Path) -> None:
    """The batches the planner decides with one manifest query each hold up to ``size`` entries, across
    folders, and the walk lists no folder beyond the batch it is filling."""
    make_tree(tmp_path, {f"d{i:02d}/f.txt": b"x" for i in range(50)})
    gen = walk_batches(tmp_path, WalkOptions(), size=4)
    first = await gen.__anext__()
    for i in range(10, 50):
        (tmp_path / f"d{i:02d}" / "f.txt").unlink()
        (tmp_path / f"d{i:02d}").rmdir()
    rest = [e async for batch in gen for e in batch]
    assert [e.rel_path for e in first] == [f"d{i:02d}/f.txt" for i in range(4)]
    assert [e.rel_path for e in rest] == [f"d{i:02d}/f.txt" for i in range(4, 10)]


async def test_a_walk_closed_halfway_leaves_no_folder_open(tmp_path: Path) -> None:
    """A walk abandoned between batches (a run stopped) closes every folder it holds open at once, not
    when the garbage collector gets to the generators stacked under the one the consumer closed."""
    make_tree(tmp_path, {f"d{i:02d}/e{j}/f.txt": b"x" for i in range(5) for j in range(3)})
    before = set(os.listdir("/proc/self/fd"))
    gen = walk_batches(tmp_path, WalkOptions(), size=2)
    first = await gen.__anext__()
    await gen.aclose()
    assert [e.rel_path for e in first] == ["d00/e0/f.txt", "d00/e1/f.txt"]
    assert set(os.listdir("/proc/self/fd")) <= before


# ----- the walk in a child process (a rerun of a large tree) ---------------------------------------------


def odd_tree(root: Path) -> None:
    """A tree with something for every rule of the walk: nested folders, hidden files and folders, links
    to files and folders, a loop, a FIFO, a name that is not UTF-8, ingest's own state, files too large."""
    make_tree(
        root,
        {
            "a.txt": b"a",
            "big.bin": b"x" * 100,
            ".hidden": b"h",
            ".git/config": b"c",
            "skip/x.txt": b"x",
            "own/state.db": b"m",
            "d1/b.md": b"bb",
            "d1/d2/c.md": b"ccc",
            "d1/d2/d3/d.pdf": b"dddd",
            "e/f.txt": b"f",
        },
    )
    (root / "d1" / "link.txt").symlink_to(root / "a.txt")
    (root / "d1" / "up").symlink_to(root)
    (root / "e" / "gone").symlink_to(root / "nowhere")
    os.mkfifo(root / "e" / "pipe")
    write_bytes_name(os.path.join(os.fsencode(root / "e"), b"caf\xe9.txt"))


async def rows_of(root: Path, options: WalkOptions, *, in_child: bool, size: int) -> tuple[list[object], WalkStats]:
    stats = WalkStats()
    walked = walk_rows(root, options, stats, own_state=frozenset({"own"}), size=size, in_child=in_child)
    batches = [batch async for batch in walked]
    assert all(0 < len(batch) <= size for batch in batches)
    return [row for batch in batches for row in batch], stats


@pytest.mark.parametrize(
    "options",
    [
        WalkOptions(),
        WalkOptions(hidden=True, follow_symlinks=True),
        WalkOptions(include=("*.md", "*.txt"), exclude=("skip",), max_size=50),
    ],
    ids=["defaults", "hidden-follow", "filters"],
)
@pytest.mark.parametrize("size", [1, 3, 256])
async def test_a_walk_in_a_child_process_yields_what_the_walk_in_threads_yields(
    tmp_path: Path, options: WalkOptions, size: int
) -> None:
    """On a rerun of a large tree the walk runs in a child process (on another core): the same rows
    (path, size, change token, device and inode), rejections and counts, in the same order and batches."""
    odd_tree(tmp_path)
    in_threads = await rows_of(tmp_path, options, in_child=False, size=size)
    in_child = await rows_of(tmp_path, options, in_child=True, size=size)
    assert in_child == in_threads
    rows, stats = in_child
    assert any(isinstance(row, Rejected) and "not valid UTF-8" in row.reason for row in rows)
    assert stats.files_seen > 0
    assert stats.own_state == 1


def listing_children() -> list[int]:
    """This process's children running the walk's listing (``ingest.sources.listing.serve``)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, IndexError):
            continue
        if ppid == os.getpid() and CHILD_CODE.encode() in cmdline:
            found.append(int(pid))
    return found


def wide_tree(root: Path) -> None:
    """More rows than the pipe between the child and the walk holds (a few hundred KiB, a frame per
    folder): the child is still listing when the first batch arrives."""
    for i in range(100):
        folder = root / f"d{i:03d}"
        folder.mkdir()
        for j in range(30):
            (folder / f"{j:03d}-{'n' * 150}.txt").touch()


async def test_a_child_walk_closed_halfway_leaves_no_process_and_no_folder_open(tmp_path: Path) -> None:
    """A run stopped mid-walk stops the child at once: no process left behind, nothing held open."""
    wide_tree(tmp_path)
    before = set(os.listdir("/proc/self/fd"))
    gen = walk_rows(tmp_path, WalkOptions(), size=10, in_child=True)
    first = await gen.__anext__()
    assert len(first) == 10
    assert len(listing_children()) == 1
    await gen.aclose()
    assert listing_children() == []
    assert set(os.listdir("/proc/self/fd")) <= before


async def test_a_child_that_dies_mid_walk_fails_the_walk_instead_of_ending_it(tmp_path: Path) -> None:
    """A walk taken for complete proves which files left the source (``--delete`` acts on that): a child
    killed halfway is an error, never a shorter walk."""
    wide_tree(tmp_path)
    gen = walk_rows(tmp_path, WalkOptions(), size=10, in_child=True)
    await gen.__anext__()
    (child,) = listing_children()
    os.kill(child, signal.SIGKILL)
    with pytest.raises(OSError, match="ended before the walk did"):
        async for _ in gen:
            pass
    assert listing_children() == []


async def test_a_source_walks_in_a_child_only_when_the_manifest_expects_many_files(tmp_path: Path) -> None:
    """``LocalSource.row_batches(expected=…)``: a child for a rerun of ``CHILD_WALK_MIN`` files or more,
    the threads otherwise; the planner gets the same rows and items either way."""
    wide_tree(tmp_path)
    odd_tree(tmp_path)
    source = LocalSource(tmp_path, WalkOptions())
    small = source.row_batches(expected=CHILD_WALK_MIN - 1)
    first_small = await small.__anext__()
    assert listing_children() == []
    rows_small = first_small + [row async for batch in small for row in batch]
    large = source.row_batches(expected=CHILD_WALK_MIN)
    first_large = await large.__anext__()
    assert len(listing_children()) == 1
    rows_large = first_large + [row async for batch in large for row in batch]
    assert rows_large == rows_small
    items = [source.item(row) for row in rows_large if not isinstance(row, Rejected)]
    expected = [e async for e in walk(tmp_path, WalkOptions()) if isinstance(e, FileItem)]
    assert items == expected


def test_the_walks_child_process_imports_only_small_standard_modules() -> None:
    """The child's start is on the critical path of a no-op rerun: it imports neither ``typing`` nor
    ``dataclasses`` (with ``re``, three quarters of its start-up), nor the package, unless the globs of
    ``--include``/``--exclude`` need it."""
    folder = Path(listing.__file__).parent
    code = CHILD_CODE.replace("listing.serve()", "print(*sys.modules)")
    found = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(folder), str(folder.parents[1])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "listing" in found
    assert not {"typing", "dataclasses", "re", "ingest"} & set(found)
