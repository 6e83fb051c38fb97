"""The walk of a local folder as plain, synchronous code: open, list and sift one folder at a time, depth
first, in name order. ``ingest.sources.local`` runs it folder by folder in a worker thread, or, on a rerun
of a large tree, all of it in a child process that streams the rows back (``serve``).

Why a process: on a rerun that finds every file unchanged, the ``lstat`` of each file (the kernel's work,
which a rerun cannot skip: a file rewritten in place changes neither its folder's mtime nor its listing)
was about half of the run's time after its start-up, the planner's manifest reads most of the rest. In a
thread the two cannot overlap: every ``lstat`` gives the GIL up and must win it back from the planner. In a
process of its own the walk runs on another core (benchmarks/README.md, Issue 11 item 23).

This module imports only small modules of the standard library (not even ``typing``), so the child
(``python -I -S``) starts in under two hundredths of a second.
"""

from __future__ import annotations

import errno
import gc
import marshal
import operator
import os
import signal
import stat
import struct
import sys

# ``typing`` (and ``dataclasses``) are most of what the child would import (benchmarks/README.md, Issue 11
# item 23): the names below are for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Generator
    from typing import IO, Any, Protocol

    from ingest.sources.base import Rejected, Row
    from ingest.sources.globs import GlobSet

    class Options(Protocol):
        """What the walk reads of ``ingest.sources.local.WalkOptions``."""

        @property
        def include(self) -> tuple[str, ...]: ...
        @property
        def exclude(self) -> tuple[str, ...]: ...
        @property
        def hidden(self) -> bool: ...
        @property
        def follow_symlinks(self) -> bool: ...
        @property
        def max_size(self) -> int | None: ...

    #: A folder still to visit: (parent prefix, name, relative prefix, (dev, ino) as listed).
    _Folder = tuple[str, str, str, tuple[int, int] | None]
    #: A folder's listing: (its open descriptor, its rows and subfolders from ``Sift.folder``, why there
    #: are none), see ``_list``.
    _Listed = tuple[int | None, tuple[list[Row | Rejected], list[_Folder]] | None, str | None]

__all__ = ["CHILD_FRAME_ROWS", "STATS_FIELDS", "Counts", "Sift", "display_path", "folders", "open_dir", "serve"]

#: What the walk counts (``ingest.sources.local.WalkStats``'s fields, in their order).
STATS_FIELDS = (
    "files_seen",
    "excluded",
    "hidden",
    "symlinks",
    "too_large",
    "special",
    "loops",
    "dangling",
    "own_state",
)


class Counts:
    """The walk's counts in the child (``WalkStats`` without ``dataclasses``)."""

    __slots__ = STATS_FIELDS

    def __init__(self) -> None:
        for field in STATS_FIELDS:
            setattr(self, field, 0)

    def values(self) -> tuple[int, ...]:
        return tuple(getattr(self, field) for field in STATS_FIELDS)


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


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _entries(fd: int) -> list[os.DirEntry[str]]:
    """The entries of the open directory ``fd``, sorted by name. Their ``stat()`` reads relative to ``fd``
    (which must stay open): ``_Sift.folder`` asks it only of the entries its filters do not pass over first."""
    with os.scandir(fd) as it:
        return sorted(it, key=_NAME)


_NAME = operator.attrgetter("name")


def open_dir(parent: int | None, name: str, follow: bool, expected: tuple[int, int] | None) -> int:
    """Open folder ``name`` relative to the open folder ``parent`` (``os.fwalk``-style): a folder swapped
    for a symbolic link since it was listed is refused (``O_NOFOLLOW``), and so is any other folder than
    the one listed (device and inode), so a swap can redirect neither the walk nor the files under it."""
    flags = DIR_FLAGS | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(name, flags, dir_fd=parent)
    try:
        st = os.fstat(fd)
        if expected is not None and (st.st_dev, st.st_ino) != expected:
            raise FileNotFoundError(errno.ENOENT, "replaced since it was listed", name)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: ``_list``'s problem for a folder that became a symbolic link (not followed; counted, not failed).
_LINK = "symlink"


def folders(root_fd: int, sift: Sift) -> Generator[list[Row | Rejected], None, None]:
    """The walk under the open folder ``root_fd``, a folder at a time: each folder's rows
    ``(rel_path, size, mtime_ns, st_dev, st_ino)`` and rejections, in name order, files before subfolders.
    Takes ``root_fd`` over (closed with the generator).

    Folders are opened relative to their parent's descriptor; only the chain of folders from the root to
    the one being listed is open at a time. Nothing is listed ahead of the folder yielded."""
    # The open folders from the root to the one listed last: (relative prefix, descriptor).
    chain: list[tuple[str, int]] = [("", root_fd)]
    # Folders still to visit: (parent prefix, name, relative prefix, (dev, ino) as listed).
    stack: list[_Folder] = [("", "", "", None)]
    try:
        root_st = os.fstat(root_fd)
        sift.visited.add((root_st.st_dev, root_st.st_ino))
        while stack:
            parent, name, prefix, expected = stack.pop()
            while chain[-1][0] != parent:  # depth first: the parent is on the chain
                os.close(chain.pop()[1])
            fd, sifted, problem = _list(chain[-1][1], name, expected, sift, prefix)
            if fd is not None:
                chain.append((prefix, fd))
            if sifted is None:
                if problem == _LINK:
                    sift.stats.symlinks += 1  # became a symbolic link after it was listed: not followed
                elif problem is not None:
                    yield [sift.reject(display_path(prefix or "."), problem)]
                continue  # else removed (or replaced) while we walked: nothing left to send from it
            rows, subdirs = sifted
            stack.extend(reversed(subdirs))
            if rows:
                yield rows
    finally:
        for _, fd in chain:
            os.close(fd)


def _list(parent: int, name: str, expected: tuple[int, int] | None, sift: Sift, prefix: str) -> _Listed:
    """Open folder ``name`` of ``parent`` (the root itself when ``name`` is empty), list it and sift it
    (``prefix``: its path relative to the root); never raises an ``OSError``. Nothing sifted and no
    problem: the folder is gone (nothing to send).

    The sift runs with the listing: the ``lstat`` of each entry it keeps is made as it comes to it (none for
    hidden entries and ingest's own files), and the entries go through one loop instead of one to list them
    and another to sift them (benchmarks/README.md, Issue 11 item 18).
    """
    follow = sift.options.follow_symlinks
    fd = None
    if name:
        try:
            fd = open_dir(parent, name, follow, expected)
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


def _globs(patterns: tuple[str, ...]) -> GlobSet | None:
    """The patterns as a ``GlobSet``; ``None`` for none (tested once a folder: ``GlobSet.__bool__`` per file
    was 2 % of a no-op rerun), and then ``ingest.sources.globs`` (``re``) is not even imported."""
    if not patterns:
        return None
    from ingest.sources.globs import GlobSet

    return GlobSet(patterns)


class Sift:
    """The walk's filters, applied to one folder's listing at a time (by whoever lists it, one folder after
    the other: they count into ``stats`` and remember the folders visited)."""

    def __init__(
        self, options: Options, stats: Any, own_state: Collection[str], reject: Callable[[str, str], Any]
    ) -> None:
        """``stats``: a ``WalkStats`` or ``Counts``; ``reject(rel_path, reason)``: what stands for a file or
        folder that cannot be sent (a ``Rejected``; in the child, a pair)."""
        self.options, self.stats, self.own_state, self.reject = options, stats, own_state, reject
        self.include, self.exclude = _globs(options.include), _globs(options.exclude)
        self.visited: set[tuple[int, int]] = set()

    def folder(self, prefix: str, entries: list[os.DirEntry[str]]) -> tuple[list[Row | Rejected], list[_Folder]]:
        """The rows (and rejections) of folder ``prefix``'s files in name order, and its subfolders to visit.
        ``entries``: the folder's, sorted by name; each one's ``lstat`` (``stat`` with ``--follow-symlinks``)
        is read once the entry passed the filters that need none."""
        stats, own_state, visited = self.stats, self.own_state, self.visited
        include, exclude = self.include, self.exclude
        follow, hidden, max_size = self.options.follow_symlinks, self.options.hidden, self.options.max_size
        is_dir, is_reg = stat.S_ISDIR, stat.S_ISREG
        rows: list[Row | Rejected] = []
        subdirs: list[_Folder] = []
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
                rows.append(self.reject(display_path(rel), f"cannot read file information: {error}"))
                continue
            mode = st.st_mode
            if is_dir(mode):
                key = (st.st_dev, st.st_ino)
                if key in visited:
                    stats.loops += 1  # a symlink back into the tree: visiting again would never end
                    continue
                if exclude is not None and exclude.matches(rel):
                    stats.excluded += 1
                    continue
                visited.add(key)
                subdirs.append((prefix, entry_name, rel + "/", key))
                continue
            if not is_reg(mode):
                stats.special += 1  # sockets, FIFOs, devices: not documents
                continue
            if (include is not None and not include.matches(rel)) or (exclude is not None and exclude.matches(rel)):
                stats.excluded += 1
                continue
            if max_size is not None and st.st_size > max_size:
                stats.too_large += 1
                continue
            files_seen += 1
            if not rel.isascii() and not _is_utf8(rel):
                rows.append(
                    self.reject(
                        display_path(rel), "file name is not valid UTF-8; rename it (e.g. with convmv) to send it"
                    )
                )
                continue
            rows.append((rel, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino))
        stats.files_seen += files_seen
        return rows, subdirs


# ----- the walk in a child process ---------------------------------------------------------------------
#
# The parent (``ingest.sources.local``) starts ``python -I -S -c CHILD_CODE FOLDER PACKAGE_ROOT`` (FOLDER:
# this module's) with the root folder's descriptor and the write end of a pipe passed to it, and the
# settings on its stdin (``settings``). This module is imported there as ``listing``, not as part of the
# package, so that the child imports nothing else unless ``--include``/``--exclude`` need the globs. The
# child walks and writes frames to the pipe: a little-endian length, then a marshal payload, one of
#   (ROWS, rows, rejected, counts)  rows as ``folders`` yields them, except that a file or folder that
#                                   cannot be sent is None in ``rows`` and ``(index, rel_path, reason)`` in
#                                   ``rejected``; ``counts``: the walk's counts so far (``STATS_FIELDS``)
#   (END, counts)                   the walk is over
#   (ERROR, text)                   the walk failed (a traceback)
# A full pipe blocks the child: the parent's reading is the walk's backpressure. When the parent stops
# reading (a run stopped) it closes its end and kills the child.

ROWS, END, ERROR = 0, 1, 2
#: Rows per frame at most: a flat folder of a million files is sent a piece at a time.
CHILD_FRAME_ROWS = 4096
HEADER = struct.Struct("<I")

CHILD_CODE = "import sys; sys.path += sys.argv[1:3]; import listing; listing.serve()"


def settings(options: Options, own_state: Collection[str], root_fd: int, out_fd: int) -> bytes:
    """What the child reads from its stdin: the options, ingest's own files, and its two descriptors."""
    return marshal.dumps(
        (
            tuple(options.include),
            tuple(options.exclude),
            options.hidden,
            options.follow_symlinks,
            options.max_size,
            tuple(own_state),
            root_fd,
            out_fd,
        )
    )


class _ChildOptions:
    """``WalkOptions`` in the child (``Options``)."""

    __slots__ = ("exclude", "follow_symlinks", "hidden", "include", "max_size")

    def __init__(
        self, include: tuple[str, ...], exclude: tuple[str, ...], hidden: bool, follow: bool, max_size: int | None
    ) -> None:
        self.include, self.exclude, self.hidden, self.follow_symlinks, self.max_size = (
            include,
            exclude,
            hidden,
            follow,
            max_size,
        )


def _pair(rel_path: str, reason: str) -> tuple[str, str]:
    """A file or folder that cannot be sent, in the child: ``(rel_path, reason)`` (rows have five fields)."""
    return rel_path, reason


def serve() -> None:
    """The child's whole life: read the settings, walk, write the frames, exit."""
    # The parent stops the child (closing the pipe, then a kill); a Ctrl-C meant for the run is not for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # What the walk makes (entries, stat results, rows) holds no reference cycle: reference counting frees
    # all of it, and the collector would only traverse it, again and again, as the rows pile up.
    gc.disable()
    include, exclude, hidden, follow, max_size, own_state, root_fd, out_fd = marshal.load(sys.stdin.buffer)
    out = os.fdopen(out_fd, "wb", buffering=0)
    counts = Counts()
    try:
        options = _ChildOptions(include, exclude, hidden, follow, max_size)
        sift = Sift(options, counts, frozenset(own_state), _pair)
        for rows in folders(root_fd, sift):
            for start in range(0, len(rows), CHILD_FRAME_ROWS):
                _write(out, _rows_frame(rows[start : start + CHILD_FRAME_ROWS], counts))
        _write(out, (END, counts.values()))
    except BrokenPipeError:
        os._exit(0)  # the parent stopped reading: nothing more is wanted
    except BaseException:
        import traceback

        try:
            _write(out, (ERROR, traceback.format_exc()))
        except OSError:
            pass
        os._exit(1)
    # No interpreter teardown (a few milliseconds the parent would wait for): everything is written.
    os._exit(0)


def _rows_frame(rows: list[Any], counts: Counts) -> tuple[Any, ...]:
    rejected = [(i, *row) for i, row in enumerate(rows) if len(row) == 2]
    if rejected:
        rows = [None if len(row) == 2 else row for row in rows]
    return (ROWS, rows, rejected, counts.values())


def _write(out: IO[bytes], frame: tuple[Any, ...]) -> None:
    payload = marshal.dumps(frame)
    data = memoryview(HEADER.pack(len(payload)) + payload)
    while data:
        data = data[out.write(data) or 0 :]
