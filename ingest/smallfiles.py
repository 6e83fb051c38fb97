"""Small local files read whole, each as the walk saw it, in one call made from a worker thread.

Reading a few KiB costs less than the thread hop that reads it: a request that carries small files
(``ingest.formdata``) or stages one (``ingest.platforms.viking.staging``) reads them all in one hop
instead of one hop per chunk and another to see the end. Only files up to ``SMALL_FILE_MAX`` are read
this way, so memory stays bounded by ``--concurrency`` x files per request x ``SMALL_FILE_MAX`` (the
bound of the bucket prefetch, which holds bodies of the same size: docs/sources.md, "Why 64 KiB").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ingest.errors import SourceFileError
from ingest.models import FileItem
from ingest.sources.reader import PREFETCH_MAX, open_local

__all__ = ["SMALL_FILE_MAX", "is_small_local", "read_small"]

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
        with open_local(item) as f:
            try:
                data = f.read(item.size + 1)  # one byte more notices a file that grew
            except OSError as exc:
                raise SourceFileError(item.rel_path, f"read failed: {exc.strerror or exc}") from None
        if len(data) > item.size:
            raise SourceFileError(item.rel_path, "file grew while being sent; rerun to send it")
        if len(data) < item.size:
            raise SourceFileError(item.rel_path, "file shrank while being sent; rerun to send it")
        out.append((data, hashlib.md5(data, usedforsecurity=False).digest()))
    return out
