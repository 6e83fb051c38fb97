"""The directory source: yields every file to send, lazily, with backpressure from the consumer.

The walk is depth-first over ``os.scandir`` with directories visited in sorted order, so two walks of
an unchanged tree yield the same sequence. Only the stack of directories still to visit is held in
memory, never the tree. Each directory is listed in a worker thread so a slow file system does not
stall the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import stat
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import anyio

from ingest.models import FileItem, LocalPin
from ingest.sources.base import Rejected, Row, batched
from ingest.sources.globs import GlobSet

__all__ = [
    "LocalSource",
    "Rejected",
    "WalkOptions",
    "WalkStats",
    "display_path",
    "pin_stat",
    "row_item",
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


def display_path(name: str) -> str:
    """A printable, storable form of a file system name that may not be valid UTF-8.

    ``os`` hands such names back with lone surrogates (PEP 383); they cannot be encoded for SQLite,
    JSON or HTTP. ``\\xNN`` escapes keep them readable and unique.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _entries(fd: int) -> list[os.DirEntry[str]]:
    """The entries of the open directory ``fd``, sorted by name. Their ``stat()`` reads relative to ``fd``
    (which must stay open): ``_Sift.folder`` asks it only of the entries its filters do not pass over first."""
    with os.scandir(fd) as it:
        return sorted(it, key=_NAME)


_NAME = operator.attrgetter("name")


def _open_dir(parent: int | None, name: str, follow: bool, expected: tuple[int, int] | None) -> int:
    """Open folder ``name`` relative to the open folder ``parent`` (``os.fwalk``-style): a folder swapped
    for a symbolic link since it was listed is refused (``O_NOFOLLOW``), and so is any other folder than
    the one listed (device and inode), so a swap can redirect neither the walk nor the files under it."""
    flags = _DIR_FLAGS | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(name, flags, dir_fd=parent)
    try:
        st = os.fstat(fd)
        if expected is not None and (st.st_dev, st.st_ino) != expected:
            raise FileNotFoundError(errno.ENOENT, "replaced since it was listed", name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def pin_stat(root: Path, rel_path: str, follow: bool) -> os.stat_result:
    """The file ``rel_path`` under ``root`` as it is now, reached one component at a time from ``root``
    without following any symbolic link (unless ``follow``): what a refresh or lookup may trust."""
    parts = rel_path.split("/")
    fds: list[int] = []
    try:
        fds.append(os.open(root, _DIR_FLAGS))
        for part in parts[:-1]:
            fds.append(os.open(part, _DIR_FLAGS | (0 if follow else os.O_NOFOLLOW), dir_fd=fds[-1]))
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
    follow = options.follow_symlinks
    # Closed with this generator, not whenever the collector gets to it: it holds folders open.
    async with contextlib.aclosing(walk_rows(root, options, stats, own_state=own_state, size=size)) as batches:
        async for rows in batches:
            yield [row if isinstance(row, Rejected) else row_item(row, follow) for row in rows]


def row_item(row: Row, follow: bool) -> FileItem:
    """The ``FileItem`` of a row of ``walk_rows``, pinned to the file the walk's ``lstat`` saw."""
    rel, size, mtime_ns, st, child, name = row
    return FileItem(rel, child(name), size, mtime_ns, LocalPin(st.st_dev, st.st_ino, follow))


async def walk_rows(
    root: Path,
    options: WalkOptions,
    stats: WalkStats | None = None,
    *,
    own_state: Collection[str] = (),
    size: int = BATCH,
) -> AsyncGenerator[list[Row | Rejected], None]:
    """``walk_batches`` before any ``FileItem`` is built: a row ``(rel_path, size, mtime_ns, stat, child,
    name)`` per file (``row_item`` builds its item), so a file the planner skips costs no item, pin or path.

    Folders are opened relative to their parent's descriptor; only the chain of folders from the root to
    the one being listed is open at a time. Each folder is opened, listed and sifted (``scandir``, and an ``lstat``
    per entry the filters do not pass over first) in one worker thread hop; no folder is read ahead of the
    batch being filled.
    ``own_state``: relative paths (files or folders) of ingest's own state inside the tree (manifest,
    report, embedded data), never part of the source.
    """
    sift = _Sift(root, options, stats if stats is not None else WalkStats(), own_state)
    root_fd = await anyio.to_thread.run_sync(os.open, root, _DIR_FLAGS)
    root_st = os.fstat(root_fd)
    sift.visited.add((root_st.st_dev, root_st.st_ino))
    # The open folders from the root to the one listed last: (relative prefix, descriptor).
    chain: list[tuple[str, int]] = [("", root_fd)]
    # Folders still to visit: (parent prefix, name, relative prefix, (dev, ino) as listed).
    stack: list[_Folder] = [("", "", "", None)]
    batch: list[Row | Rejected] = []
    try:
        while stack:
            parent, name, prefix, expected = stack.pop()
            while chain[-1][0] != parent:  # depth first: the parent is on the chain
                os.close(chain.pop()[1])
            # One thread hop per folder (open, list, sift), awaited: listing the next folder in a thread while
            # this one was decided made the no-op rerun slower on 2 cores (benchmarks/README.md, Issue 11
            # item 12: each ``lstat`` hands the GIL back and forth with the planner's queries).
            fd, sifted, problem = await anyio.to_thread.run_sync(_list, chain[-1][1], name, expected, sift, prefix)
            if fd is not None:
                chain.append((prefix, fd))
            if sifted is None:
                if problem == _LINK:
                    sift.stats.symlinks += 1  # became a symbolic link after it was listed: not followed
                elif problem is not None:
                    batch.append(Rejected(display_path(prefix or "."), problem))
                continue  # else removed (or replaced) while we walked: nothing left to send from it
            rows, subdirs = sifted
            stack.extend(reversed(subdirs))
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
    finally:
        for _, fd in chain:
            os.close(fd)


#: A folder still to visit: (parent prefix, name, relative prefix, (dev, ino) as listed).
_Folder = tuple[str, str, str, tuple[int, int] | None]
#: A folder's listing: (its open descriptor, its rows and subfolders from ``_Sift.folder``, why there are
#: none), see ``_list``.
_Listed = tuple[int | None, tuple[list[Row | Rejected], list[_Folder]] | None, str | None]
#: ``_list``'s problem for a folder that became a symbolic link (not followed; counted, not failed).
_LINK = "symlink"


def _list(parent: int, name: str, expected: tuple[int, int] | None, sift: _Sift, prefix: str) -> _Listed:
    """Open folder ``name`` of ``parent`` (the root itself when ``name`` is empty), list it and sift it
    (``prefix``: its path relative to the root); for a worker thread: never raises an ``OSError``. Nothing
    sifted and no problem: the folder is gone (nothing to send).

    The sift runs here, in the thread, with the listing: the ``lstat`` of each entry it keeps is made as it
    comes to it (none for hidden entries and ingest's own files), and the entries go through one loop
    instead of one to list them and another to sift them (benchmarks/README.md, Issue 11 item 18). The
    walk awaits this hop, so the sift's counts and visited folders are never touched by two threads at once.
    """
    follow = sift.options.follow_symlinks
    fd = None
    if name:
        try:
            fd = _open_dir(parent, name, follow, expected)
        except FileNotFoundError:
            return None, None, None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None, None, _LINK
            return None, None, f"cannot list folder: {exc.strerror or exc}"
    try:
        entries = _entries(parent if fd is None else fd)
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        if isinstance(exc, FileNotFoundError):
            return None, None, None
        return None, None, f"cannot list folder: {exc.strerror or exc}"
    try:
        return fd, sift.folder(prefix, entries), None
    except BaseException:
        if fd is not None:
            os.close(fd)  # not on the walk's chain yet: nobody else would close it
        raise


class _Sift:
    """The walk's filters, applied to one folder's listing at a time (in the worker thread that lists it,
    while the walk awaits it: they count into ``stats`` and remember the folders visited)."""

    def __init__(self, root: Path, options: WalkOptions, stats: WalkStats, own_state: Collection[str]) -> None:
        self.root, self.options, self.stats, self.own_state = root, options, stats, own_state
        self.include, self.exclude = GlobSet(options.include), GlobSet(options.exclude)
        self.visited: set[tuple[int, int]] = set()

    def folder(self, prefix: str, entries: list[os.DirEntry[str]]) -> tuple[list[Row | Rejected], list[_Folder]]:
        """The rows (and rejections) of folder ``prefix``'s files in name order, and its subfolders to visit.
        ``entries``: the folder's, sorted by name; each one's ``lstat`` (``stat`` with ``--follow-symlinks``)
        is read once the entry passed the filters that need none."""
        stats, own_state, visited = self.stats, self.own_state, self.visited
        include, exclude = self.include, self.exclude
        # Tested once: ``GlobSet.__bool__`` per file was 2 % of a no-op rerun.
        including, excluding = bool(include), bool(exclude)
        follow, hidden, max_size = self.options.follow_symlinks, self.options.hidden, self.options.max_size
        is_dir, is_reg = stat.S_ISDIR, stat.S_ISREG
        rows: list[Row | Rejected] = []
        subdirs: list[_Folder] = []
        root = self.root
        child = _child_paths(Path(os.path.join(root, prefix)) if prefix else Path(root))
        files_seen = 0
        for entry in entries:
            entry_name = entry.name
            rel = prefix + entry_name
            if own_state and rel in own_state:
                stats.own_state += 1
                continue
            if not hidden and entry_name.startswith("."):
                stats.hidden += 1
                continue
            error: str | None = None
            try:
                is_link = entry.is_symlink()
                st: os.stat_result | None = entry.stat(follow_symlinks=follow)
            except FileNotFoundError:
                # Vanished between listing and stat (or a dangling symlink): nothing to send.
                st, is_link, error = None, True, "dangling symlink or vanished file"
            except OSError as exc:
                st, is_link, error = None, False, exc.strerror or str(exc)
            if is_link and not follow:
                stats.symlinks += 1
                continue
            if error is not None or st is None:
                if is_link:
                    stats.dangling += 1
                    continue
                rows.append(Rejected(display_path(rel), f"cannot read file information: {error}"))
                continue
            mode = st.st_mode
            if is_dir(mode):
                key = (st.st_dev, st.st_ino)
                if key in visited:
                    stats.loops += 1  # a symlink back into the tree: visiting again would never end
                    continue
                if excluding and exclude.matches(rel):
                    stats.excluded += 1
                    continue
                visited.add(key)
                subdirs.append((prefix, entry_name, rel + "/", key))
                continue
            if not is_reg(mode):
                stats.special += 1  # sockets, FIFOs, devices: not documents
                continue
            if (including and not include.matches(rel)) or (excluding and exclude.matches(rel)):
                stats.excluded += 1
                continue
            if max_size is not None and st.st_size > max_size:
                stats.too_large += 1
                continue
            files_seen += 1
            if not rel.isascii() and not _is_utf8(rel):
                rows.append(
                    Rejected(display_path(rel), "file name is not valid UTF-8; rename it (e.g. with convmv) to send it")
                )
                continue
            rows.append((rel, st.st_size, st.st_mtime_ns, st, child, entry_name))
        stats.files_seen += files_seen
        return rows, subdirs


async def _item_rows(
    batches: AsyncIterator[list[FileItem | Rejected]],
) -> AsyncGenerator[list[Row | Rejected], None]:
    """Batches of items already built, as rows that carry their item (``LocalSource.item`` returns it)."""
    async for batch in batches:
        yield [e if isinstance(e, Rejected) else (e.rel_path, e.size, e.mtime_ns, e) for e in batch]


def _child_paths(directory: Path) -> Callable[[str], Path]:
    """``directory / name`` for many names, fast.

    ``Path(folder, name)`` parses the whole path again for every file (2 µs, a tenth of a no-op rerun's
    time per file); CPython's own ``_make_child_relpath`` (what its glob and ``Path.walk`` use) joins an
    already-parsed folder with one name in a tenth of that. It is private, so it is used only where it
    exists and gives the same answer as the public spelling.
    """
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


class LocalSource:
    """A folder on a local (or mounted) file system: the ``Source`` of ``ingest run DIR``."""

    def __init__(self, root: Path, options: WalkOptions, *, own_state: Collection[Path] = ()) -> None:
        self.root = root
        self.options = options
        self.stats = WalkStats()
        #: ingest's own files and folders inside the tree, relative to it (manifest, report, .ingest/).
        self.own_state = frozenset(_inside(root, own_state))

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

    def row_batches(self) -> AsyncGenerator[list[Row | Rejected], None]:
        """``entry_batches`` as rows (``RowSource``): the planner builds the items of the files it sends."""
        if type(self).entries is not LocalSource.entries or type(self).entry_batches is not LocalSource.entry_batches:
            return _item_rows(self.entry_batches())  # a subclass's own entries, as ``entry_batches`` has them
        return walk_rows(self.root, self.options, self.stats, own_state=self.own_state)

    def item(self, row: Row) -> FileItem:
        return row[3] if isinstance(row[3], FileItem) else row_item(row, self.options.follow_symlinks)

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
