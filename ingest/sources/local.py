"""The directory source: yields every file to send, lazily, with backpressure from the consumer.

The walk is depth-first over ``os.scandir`` with directories visited in sorted order, so two walks of
an unchanged tree yield the same sequence. Only the stack of directories still to visit is held in
memory, never the tree. Each directory is listed in a worker thread so a slow file system does not
stall the event loop; on a rerun of a large tree the whole walk runs in a child process instead, on
another core (``ingest.sources.listing``).
"""

from __future__ import annotations

import contextlib
import errno
import marshal
import os
import stat
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import anyio

from ingest.models import FileItem, LocalPin
from ingest.sources.base import Rejected, Row, batched
from ingest.sources.listing import (
    CHILD_CODE,
    DIR_FLAGS,
    END,
    ERROR,
    HEADER,
    ROWS,
    STATS_FIELDS,
    Sift,
    display_path,
    folders,
    settings,
)

__all__ = [
    "CHILD_WALK_MIN",
    "Items",
    "LocalSource",
    "Rejected",
    "WalkOptions",
    "WalkStats",
    "display_path",
    "pin_stat",
    "walk",
    "walk_batches",
    "walk_rows",
]

#: Why a file cannot be sent when it is simply not there any more (as opposed to unreadable).
DISAPPEARED = "file disappeared between the walk and the upload"


@dataclass(frozen=True, slots=True)
class WalkOptions:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    hidden: bool = False
    follow_symlinks: bool = False
    max_size: int | None = None


@dataclass(slots=True)
class WalkStats:
    """What the walk passed over on purpose (not failures), for the final summary."""

    files_seen: int = 0
    excluded: int = 0
    hidden: int = 0
    symlinks: int = 0
    too_large: int = 0
    special: int = 0
    loops: int = 0
    dangling: int = 0
    own_state: int = 0

    def update(self, counts: tuple[int, ...]) -> None:
        """Take the counts of the walk in a child (``listing.STATS_FIELDS``' order) as it goes."""
        for field, value in zip(STATS_FIELDS, counts, strict=True):
            setattr(self, field, value)


def pin_stat(root: Path, rel_path: str, follow: bool) -> os.stat_result:
    """The file ``rel_path`` under ``root`` as it is now, reached one component at a time from ``root``
    without following any symbolic link (unless ``follow``): what a refresh or lookup may trust."""
    parts = rel_path.split("/")
    fds: list[int] = []
    try:
        fds.append(os.open(root, DIR_FLAGS))
        for part in parts[:-1]:
            fds.append(os.open(part, DIR_FLAGS | (0 if follow else os.O_NOFOLLOW), dir_fd=fds[-1]))
        return os.stat(parts[-1], dir_fd=fds[-1], follow_symlinks=follow)
    finally:
        for fd in fds:
            os.close(fd)


def _pin(st: os.stat_result, follow: bool) -> LocalPin:
    return LocalPin(st.st_dev, st.st_ino, follow)


async def walk(
    root: Path, options: WalkOptions, stats: WalkStats | None = None, *, own_state: Collection[str] = ()
) -> AsyncIterator[FileItem | Rejected]:
    """Yield a ``FileItem`` per file under ``root`` that passes the filters, or ``Rejected``: the entries of
    ``walk_batches``, one at a time, and nothing read ahead of the one yielded."""
    async with contextlib.aclosing(walk_batches(root, options, stats, own_state=own_state, size=1)) as batches:
        async for batch in batches:
            for entry in batch:
                yield entry


#: Entries per batch of ``walk_batches``: what the planner decides with one manifest query.
BATCH = 256


async def walk_batches(
    root: Path,
    options: WalkOptions,
    stats: WalkStats | None = None,
    *,
    own_state: Collection[str] = (),
    size: int = BATCH,
) -> AsyncGenerator[list[FileItem | Rejected], None]:
    """The walk, in lists of up to ``size`` entries (across folders; a folder's listing is already in
    memory, so a batch holds nothing more). Stepping an async generator once per file was a tenth of a
    no-op rerun's time per file (benchmarks/README.md, Issue 11)."""
    item = Items(root, options.follow_symlinks)
    # Closed with this generator, not whenever the collector gets to it: it holds folders open.
    async with contextlib.aclosing(walk_rows(root, options, stats, own_state=own_state, size=size)) as batches:
        async for rows in batches:
            yield [row if isinstance(row, Rejected) else item(row) for row in rows]


async def walk_rows(
    root: Path,
    options: WalkOptions,
    stats: WalkStats | None = None,
    *,
    own_state: Collection[str] = (),
    size: int = BATCH,
    in_child: bool = False,
) -> AsyncGenerator[list[Row | Rejected], None]:
    """``walk_batches`` before any ``FileItem`` is built: a row ``(rel_path, size, mtime_ns, st_dev, st_ino)``
    per file (``Items`` builds its item), so a file the planner skips costs no item, pin or path.

    Each folder is opened, listed and sifted (``scandir``, and an ``lstat`` per entry the filters do not pass
    over first) in one worker thread hop, and no folder is read ahead of the batch being filled; or, with
    ``in_child``, the whole walk runs in a child process (``ingest.sources.listing``) on another core,
    ahead of the batches by what the pipe holds, and its rows are read here as it sends them.
    ``own_state``: relative paths (files or folders) of ingest's own state inside the tree (manifest,
    report, embedded data), never part of the source.
    """
    stats = stats if stats is not None else WalkStats()
    root_fd = await anyio.to_thread.run_sync(os.open, root, DIR_FLAGS)
    if in_child:
        listed = _listed_by_child(root_fd, options, stats, own_state)
    else:
        listed = _listed_in_threads(root_fd, Sift(options, stats, own_state, Rejected))
    batch: list[Row | Rejected] = []
    # Closed with this generator, not whenever the collector gets to it: it holds folders (or a child) open.
    async with contextlib.aclosing(listed) as folders:
        async for rows in folders:
            start = 0
            while len(batch) + len(rows) - start >= size:
                take = size - len(batch)
                batch.extend(rows[start : start + take])
                start += take
                yield batch
                batch = []
            batch.extend(rows[start:])
    if batch:
        yield batch


async def _listed_in_threads(root_fd: int, sift: Sift) -> AsyncGenerator[list[Row | Rejected], None]:
    """``listing.folders``, one worker thread hop per folder (open, list, sift), awaited. Listing the next
    folder in a thread while this one was decided made the no-op rerun slower on 2 cores
    (benchmarks/README.md, Issue 11 item 12: each ``lstat`` hands the GIL back and forth with the planner's
    queries); the hop is awaited, so the sift's counts and visited folders are never touched by two
    threads at once."""
    listed = folders(root_fd, sift)
    try:
        while (rows := await anyio.to_thread.run_sync(next, listed, None)) is not None:
            yield rows
    finally:
        listed.close()  # the folders it holds open (an awaited hop is never cancelled halfway)


#: What the child process is started with (``listing.serve``): no site packages, no environment, no
#: current folder on its path; only ``listing``'s folder and this package, from wherever this process
#: imported them.
_HERE = Path(__file__).resolve()
_CHILD_ARGS = ("-I", "-S", "-c", CHILD_CODE, str(_HERE.parent), str(_HERE.parents[2]))


async def _listed_by_child(
    root_fd: int, options: WalkOptions, stats: WalkStats, own_state: Collection[str]
) -> AsyncGenerator[list[Row | Rejected], None]:
    """``listing.folders`` walked by a child process (``listing.serve``), its rows read as they come.
    Takes ``root_fd`` over. The walk is over only when the child says so: a child that dies or fails is an
    error, never a shorter walk (a walk taken for complete proves which files left the source)."""
    child, pipe = await anyio.to_thread.run_sync(_start_child, root_fd, options, own_state)
    try:
        while True:
            frame = await anyio.to_thread.run_sync(_read_frame, pipe)
            if frame is None:
                code = await anyio.to_thread.run_sync(child.wait)
                raise OSError(f"the walk's listing process ended before the walk did (exit code {code})")
            if frame[0] == ERROR:
                raise RuntimeError(f"the walk's listing process failed:\n{frame[1]}")
            stats.update(frame[-1])
            if frame[0] == END:
                break
            yield frame[1]
        await anyio.to_thread.run_sync(child.wait)
    finally:
        pipe.close()  # a child still writing gets EPIPE
        if child.poll() is None:
            child.kill()  # or still listing a slow folder
            child.wait()


#: A child needs an interpreter to run (not there when Python is embedded; a frozen application's
#: executable is the application) and descriptors to inherit.
_CAN_START_CHILD = bool(sys.executable) and os.name == "posix" and not getattr(sys, "frozen", False)


def _read_frame(pipe: IO[bytes]) -> tuple[Any, ...] | None:
    """The child's next frame (``listing.serve``), or ``None`` when the pipe ends (the child is gone).
    Blocking: for a worker thread. A ``ROWS`` frame comes back as ``(ROWS, rows, counts)`` with its
    rejections in place, as ``Rejected``."""
    header = pipe.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (length,) = HEADER.unpack(header)
    payload = pipe.read(length)
    if len(payload) < length:
        return None
    frame = marshal.loads(payload)
    if frame[0] != ROWS:
        return tuple(frame)
    _, rows, rejected, counts = frame
    for index, rel_path, reason in rejected:
        rows[index] = Rejected(rel_path, reason)
    return ROWS, rows, counts


def _start_child(
    root_fd: int, options: WalkOptions, own_state: Collection[str]
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """The child walking under ``root_fd`` (taken over: closed here once the child holds it), and the pipe
    it writes its frames to."""
    read_fd, write_fd = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, *_CHILD_ARGS],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            # Its own session: a Ctrl-C reaches the run, which stops the child itself.
            start_new_session=True,
            pass_fds=(root_fd, write_fd),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the child's copy is the only one: the pipe ends when the child does
        os.close(root_fd)
    assert child.stdin is not None
    try:
        child.stdin.write(settings(options, own_state, root_fd, write_fd))
        child.stdin.close()
    except OSError:
        pass  # the child died at once: the pipe ends, and the walk says so
    return child, open(read_fd, "rb", buffering=1 << 16)


async def _item_rows(
    batches: AsyncIterator[list[FileItem | Rejected]],
) -> AsyncGenerator[list[Row | Rejected], None]:
    """Batches of items already built, as rows that carry their item (``LocalSource.item`` returns it)."""
    async for batch in batches:
        yield [e if isinstance(e, Rejected) else (e.rel_path, e.size, e.mtime_ns, e) for e in batch]


class Items:
    """The ``FileItem`` of a row of ``walk_rows``, pinned to the file the walk's ``lstat`` saw, for one root.

    Its path is joined to the last folder's, kept from the row before: ``Path(root, rel_path)`` parses the
    whole path again for every file (2 µs), CPython's own ``_make_child_relpath`` (what its glob and
    ``Path.walk`` use) joins an already-parsed folder with one name in a tenth of that. It is private, so it
    is used only where it exists and gives the same answer as the public spelling."""

    def __init__(self, root: Path, follow: bool) -> None:
        self.root, self.follow = root, follow
        self._folder: str | None = None
        self._child: Callable[[str], Path] = root.joinpath

    def __call__(self, row: Row) -> FileItem:
        rel, size, mtime_ns, dev, ino = row
        cut = rel.rfind("/") + 1
        if rel[:cut] != self._folder:
            self._folder = rel[:cut]
            self._child = _child_paths(self.root.joinpath(rel[:cut]) if cut else self.root)
        return FileItem(rel, self._child(rel[cut:]), size, mtime_ns, LocalPin(dev, ino, self.follow))


def _child_paths(directory: Path) -> Callable[[str], Path]:
    """``directory / name`` for many names, fast (``Items``)."""
    make = getattr(directory, "_make_child_relpath", None)
    if callable(make) and _CHILD_PATHS_OK:
        return cast("Callable[[str], Path]", make)
    return directory.joinpath


def _child_paths_agree() -> bool:
    try:
        return bool(Path("/a/b")._make_child_relpath("c.txt") == Path("/a/b/c.txt"))  # type: ignore[attr-defined]
    except Exception:  # any failure means: use the public spelling
        return False


_CHILD_PATHS_OK = _child_paths_agree()


def _inside(root: Path, paths: Collection[Path]) -> Iterator[str]:
    """The relative paths under ``root`` of those ``paths`` that lie inside it (with a manifest's -wal,
    -shm and -journal beside it)."""
    for path in paths:
        resolved = path.expanduser().absolute()
        try:
            resolved = resolved.parent.resolve() / resolved.name
        except OSError:
            continue
        try:
            rel = resolved.relative_to(root).as_posix()
        except ValueError:
            continue
        if rel and rel != ".":
            yield rel
            for suffix in ("-wal", "-shm", "-journal"):
                yield rel + suffix


#: Files a walk is expected to meet (``LocalSource.row_batches``) from which it runs in a child process: its
#: start (an interpreter, ~0.05 s of the other core's time) is worth it against ~5 µs a file of listing.
CHILD_WALK_MIN = 20_000


class LocalSource:
    """A folder on a local (or mounted) file system: the ``Source`` of ``ingest run DIR``."""

    def __init__(self, root: Path, options: WalkOptions, *, own_state: Collection[Path] = ()) -> None:
        self.root = root
        self.options = options
        self.stats = WalkStats()
        #: ingest's own files and folders inside the tree, relative to it (manifest, report, .ingest/).
        self.own_state = frozenset(_inside(root, own_state))
        self._items = Items(root, options.follow_symlinks)

    def identity(self) -> str:
        return str(self.root)

    def describe(self) -> str:
        return f"folder {self.root}"

    def entries(self) -> AsyncIterator[FileItem | Rejected]:
        return walk(self.root, self.options, self.stats, own_state=self.own_state)

    def entry_batches(self) -> AsyncIterator[list[FileItem | Rejected]]:
        """``entries`` in lists: the planner decides each with one manifest query."""
        if type(self).entries is not LocalSource.entries:
            # A subclass that changes ``entries`` (the tests meddle with files as they are walked) is
            # batched from its own entries, so what it does still happens as the walk goes.
            return batched(self.entries(), BATCH)
        return walk_batches(self.root, self.options, self.stats, own_state=self.own_state)

    def row_batches(self, *, expected: int = 0) -> AsyncGenerator[list[Row | Rejected], None]:
        """``entry_batches`` as rows (``RowSource``): the planner builds the items of the files it sends.
        ``expected`` files or more (``CHILD_WALK_MIN``): listed by a child process, where the platform has one."""
        if type(self).entries is not LocalSource.entries or type(self).entry_batches is not LocalSource.entry_batches:
            return _item_rows(self.entry_batches())  # a subclass's own entries, as ``entry_batches`` has them
        in_child = expected >= CHILD_WALK_MIN and _CAN_START_CHILD
        return walk_rows(self.root, self.options, self.stats, own_state=self.own_state, in_child=in_child)

    def item(self, row: Row) -> FileItem:
        return row[3] if len(row) == 4 else self._items(row)

    def _stat(self, rel_path: str) -> os.stat_result | str:
        """The file as it is now, reached from the root without following links (unless asked), or why not."""
        try:
            st = pin_stat(self.root, rel_path, self.options.follow_symlinks)
        except FileNotFoundError:
            return DISAPPEARED
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                return "a folder on its path became a symbolic link or a file after the walk; not followed"
            return f"cannot read file information: {exc.strerror or exc}"
        if stat.S_ISLNK(st.st_mode):
            return "became a symbolic link after the walk; not followed (--follow-symlinks sends link targets)"
        if not stat.S_ISREG(st.st_mode):
            return "is no longer a regular file"
        return st

    async def refresh(self, item: FileItem) -> FileItem | str:
        # A few syscalls in the event loop: microseconds on a local disk, cheaper than a thread hop per file.
        st = self._stat(item.rel_path)
        if isinstance(st, str):
            return st
        pin = _pin(st, self.options.follow_symlinks)
        if pin.follow and item.pin is not None and pin != item.pin:
            # Through links, a different file is no proof of anything (a link retargeted at a private
            # file): only the file the walk saw is sent.
            return "the symbolic link now leads to another file than the walk saw; rerun to send it"
        if st.st_size != item.size or st.st_mtime_ns != item.mtime_ns or pin != item.pin:
            return FileItem(item.rel_path, item.abs_path, st.st_size, st.st_mtime_ns, pin)
        return item

    async def lookup(self, rel_path: str) -> FileItem | Rejected:
        st = await anyio.to_thread.run_sync(self._stat, rel_path)
        if isinstance(st, str):
            return Rejected(rel_path, f"not found under {self.root} any more ({st})", gone=st == DISAPPEARED)
        return FileItem(
            rel_path, self.root / rel_path, st.st_size, st.st_mtime_ns, _pin(st, self.options.follow_symlinks)
        )

    def passed_over(self) -> Mapping[str, int]:
        s = self.stats
        return {
            "hidden (use --hidden)": s.hidden,
            "symlinks (use --follow-symlinks)": s.symlinks,
            "dangling symlinks": s.dangling,
            "ingest's own state (manifest, report, .ingest/)": s.own_state,
            "excluded by --include/--exclude": s.excluded,
            "larger than --max-size": s.too_large,
            "not regular files": s.special,
            "symlink loops": s.loops,
        }
