"""Small local files read whole, each as the walk saw it, in one call made from a worker thread.

Reading a few KiB costs less than the thread hop that reads it: a request that carries small files
(``ingest.formdata``) or stages one (``ingest.platforms.viking.staging``) reads them all in one hop
instead of one hop per chunk and another to see the end. Only files up to ``SMALL_FILE_MAX`` are read
this way, so memory stays bounded by ``--concurrency`` x files per request x ``SMALL_FILE_MAX`` (the
bound of the bucket prefetch, which holds bodies of the same size: docs/sources.md, "Why 64 KiB").
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from ingest.errors import SourceFileError
from ingest.models import FileItem
from ingest.sources.reader import PREFETCH_MAX, open_local_fd

__all__ = ["SMALL_FILE_MAX", "is_small_local", "read_small", "read_upto"]

#: Local files up to this size are read whole.
SMALL_FILE_MAX = PREFETCH_MAX


def is_small_local(item: FileItem) -> bool:
    return item.origin is None and item.size <= SMALL_FILE_MAX


def read_small(items: Sequence[FileItem]) -> list[tuple[bytes, bytes]]:
    """Each file's bytes and md5 digest. Blocking: call it in a worker thread. A file that is not the one
    the walk saw (``open_local``), or that grew or shrank since, is a ``SourceFileError``: never sent
    under its name."""
    out = []
    for item in items:
        fd = open_local_fd(item)
        try:
            data = read_upto(fd, item.size + 1)  # one byte more notices a file that grew
        except OSError as exc:
            raise SourceFileError(item.rel_path, f"read failed: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        if len(data) > item.size:
            raise SourceFileError(item.rel_path, "file grew while being sent; rerun to send it")
        if len(data) < item.size:
            raise SourceFileError(item.rel_path, "file shrank while being sent; rerun to send it")
        out.append((data, hashlib.md5(data, usedforsecurity=False).digest()))
    return out


def read_upto(fd: int, n: int) -> bytes:
    """``n`` bytes from ``fd``, or fewer at its end: as a buffered file's ``read(n)``, by ``os.read``. A read
    that comes back short is asked again until one returns nothing: on a local disk only the end of the
    file does that, but a network or FUSE file system may return less at any point."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)
