"""The directory source: yields every file to send, lazily, with backpressure from the consumer.

The walk is depth-first over ``os.scandir`` with directories visited in sorted order, so two walks of
an unchanged tree yield the same sequence. Only the stack of directories still to visit is held in
memory, never the tree. Each directory is listed in a worker thread so a slow file system does not
stall the event loop.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio

from ingest.models import FileItem
from ingest.sources.base import Rejected
from ingest.sources.globs import GlobSet

__all__ = ["LocalSource", "Rejected", "WalkOptions", "WalkStats", "display_path", "walk"]


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


def _scan(directory: str, follow: bool) -> list[tuple[str, os.stat_result | None, bool, str | None]]:
    """List one directory: (name, stat, is_symlink, error) per entry, sorted by name."""
    entries: list[tuple[str, os.stat_result | None, bool, str | None]] = []
    with os.scandir(directory) as it:
        for entry in it:
            try:
                is_link = entry.is_symlink()
                st = entry.stat(follow_symlinks=follow)
                entries.append((entry.name, st, is_link, None))
            except FileNotFoundError:
                # Vanished between listing and stat (or a dangling symlink): nothing to send.
                entries.append((entry.name, None, True, "dangling symlink or vanished file"))
            except OSError as exc:
                entries.append((entry.name, None, False, exc.strerror or str(exc)))
    entries.sort(key=lambda e: e[0])
    return entries


async def walk(root: Path, options: WalkOptions, stats: WalkStats | None = None) -> AsyncIterator[FileItem | Rejected]:
    """Yield a ``FileItem`` per file under ``root`` that passes the filters, or ``Rejected``."""
    stats = stats if stats is not None else WalkStats()
    include, exclude = GlobSet(options.include), GlobSet(options.exclude)
    root_st = await anyio.to_thread.run_sync(os.stat, root)
    visited: set[tuple[int, int]] = {(root_st.st_dev, root_st.st_ino)}
    # Stack of (absolute dir, relative prefix); popped from the end, pushed in reverse to keep order.
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = await anyio.to_thread.run_sync(_scan, directory, options.follow_symlinks)
        except FileNotFoundError:
            continue  # removed while we walked: nothing left to send from it
        except OSError as exc:
            yield Rejected(display_path(prefix or "."), f"cannot list folder: {exc.strerror or exc}")
            continue
        subdirs: list[tuple[str, str]] = []
        for name, st, is_link, error in entries:
            rel = prefix + name
            if not options.hidden and name.startswith("."):
                stats.hidden += 1
                continue
            if is_link and not options.follow_symlinks:
                stats.symlinks += 1
                continue
            if error is not None or st is None:
                if is_link:
                    stats.symlinks += 1
                    continue
                yield Rejected(display_path(rel), f"cannot read file information: {error}")
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in visited:
                    stats.loops += 1  # a symlink back into the tree: visiting again would never end
                    continue
                if exclude and exclude.matches(rel):
                    stats.excluded += 1
                    continue
                visited.add(key)
                subdirs.append((os.path.join(directory, name), rel + "/"))
                continue
            if not stat.S_ISREG(st.st_mode):
                stats.special += 1  # sockets, FIFOs, devices: not documents
                continue
            if (include and not include.matches(rel)) or (exclude and exclude.matches(rel)):
                stats.excluded += 1
                continue
            if options.max_size is not None and st.st_size > options.max_size:
                stats.too_large += 1
                continue
            stats.files_seen += 1
            if not _is_utf8(rel):
                yield Rejected(
                    display_path(rel), "file name is not valid UTF-8; rename it (e.g. with convmv) to send it"
                )
                continue
            yield FileItem(
                rel_path=rel,
                abs_path=Path(directory, name),
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
            )
        stack.extend(reversed(subdirs))


class LocalSource:
    """A folder on a local (or mounted) file system: the ``Source`` of ``ingest run DIR``."""

    def __init__(self, root: Path, options: WalkOptions) -> None:
        self.root = root
        self.options = options
        self.stats = WalkStats()

    def identity(self) -> str:
        return str(self.root)

    def describe(self) -> str:
        return f"folder {self.root}"

    def entries(self) -> AsyncIterator[FileItem | Rejected]:
        return walk(self.root, self.options, self.stats)

    async def refresh(self, item: FileItem) -> FileItem | str:
        # A stat in the event loop: microseconds on a local disk, cheaper than a thread hop per file.
        try:
            st = os.stat(item.abs_path)
        except FileNotFoundError:
            return "file disappeared between the walk and the upload"
        except OSError as exc:
            return f"cannot read file information: {exc.strerror or exc}"
        if st.st_size != item.size or st.st_mtime_ns != item.mtime_ns:
            return FileItem(item.rel_path, item.abs_path, st.st_size, st.st_mtime_ns)
        return item

    async def lookup(self, rel_path: str) -> FileItem | Rejected:
        path = self.root / rel_path
        try:
            st = await anyio.to_thread.run_sync(os.stat, path)
        except OSError:
            return Rejected(rel_path, f"not found under {self.root} any more")
        return FileItem(rel_path, path, st.st_size, st.st_mtime_ns)

    def passed_over(self) -> Mapping[str, int]:
        s = self.stats
        return {
            "hidden (use --hidden)": s.hidden,
            "symlinks (use --follow-symlinks)": s.symlinks,
            "excluded by --include/--exclude": s.excluded,
            "larger than --max-size": s.too_large,
            "not regular files": s.special,
            "symlink loops": s.loops,
        }
