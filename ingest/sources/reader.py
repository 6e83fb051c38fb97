"""Reading a file's body, wherever it lives: the one way targets get at the bytes they send.

A ``FileItem`` from a local folder is read from ``abs_path``; one from a bucket carries an ``origin``
(``BodyOrigin``) that opens the object. Targets call ``open_body(item)`` (or build an
``ingest.http.FileBody``, which does) and read a ``BodyStream``; they never see where the bytes come
from. The rules every stream follows::

    read(n, digests)  the next ``n`` bytes (fewer only at the end of the body, ``b""`` after it), each
                      byte fed to every digest in ``digests`` as it is read (md5 while streaming)
    aclose()          release the file or the connection; idempotent (``close_now()``: the same, sync)

One stream is good for one send: a retry opens the body again (``open_body``), which for a bucket object
is a new GET conditioned on the ETag the listing saw, so a retry never mixes two versions.

Failures are ``SourceFileError`` (this file cannot be sent: gone, changed, unreadable; the run goes on)
or ``TransientError`` (the store or the network hiccupped: the send is retried).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

import anyio

from ingest.errors import SourceFileError
from ingest.models import BodyOrigin, BodyStream, FileItem
from ingest.sources.pinned import PinMismatch, open_pinned, open_pinned_fd

__all__ = ["BodyOrigin", "BodyStream", "LocalStream", "open_body", "open_local", "open_local_fd"]


def open_local(item: FileItem) -> IO[bytes]:
    """Open a local source file, turning every OS failure into a one-line ``SourceFileError``.

    A local file (``item.pin``) is opened without following a final symbolic link and must be the very
    file the walk saw (``ingest.sources.pinned``): a link or folder swapped in since is refused."""
    try:
        return open_pinned(item.abs_path, item.pin)
    except OSError as exc:
        raise _open_failed(item, exc) from None


def open_local_fd(item: FileItem) -> int:
    """``open_local``, giving the bare descriptor (``open_pinned_fd``: for a small file read whole)."""
    try:
        return open_pinned_fd(item.abs_path, item.pin)
    except OSError as exc:
        raise _open_failed(item, exc) from None


def _open_failed(item: FileItem, exc: OSError) -> SourceFileError:
    if isinstance(exc, PinMismatch):
        return SourceFileError(item.rel_path, str(exc))
    if isinstance(exc, FileNotFoundError):
        return SourceFileError(item.rel_path, "file disappeared between the walk and the upload")
    if isinstance(exc, PermissionError):
        return SourceFileError(item.rel_path, "permission denied; make it readable or leave it out with --exclude")
    if isinstance(exc, IsADirectoryError):
        return SourceFileError(item.rel_path, "became a folder after the walk")
    return SourceFileError(item.rel_path, f"cannot open: {exc.strerror or exc}")


def _read_and_hash(f: IO[bytes], n: int, digests: Sequence[Any]) -> bytes:
    chunk = f.read(n)
    for digest in digests:
        digest.update(chunk)  # hashlib releases the GIL on large buffers: this stays off the loop
    return chunk


class LocalStream:
    """A local file: each chunk is read and hashed in one worker-thread hop (a buffered read of a
    regular file comes back short only at its end, so a small file is one read)."""

    def __init__(self, item: FileItem, f: IO[bytes]) -> None:
        self.item = item
        self._file = f

    async def read(self, n: int, digests: Sequence[Any] = ()) -> bytes:
        try:
            return await anyio.to_thread.run_sync(_read_and_hash, self._file, n, digests)
        except OSError as exc:
            raise SourceFileError(self.item.rel_path, f"read failed: {exc.strerror or exc}") from None

    def close_now(self) -> None:
        self._file.close()

    async def aclose(self) -> None:
        self._file.close()


async def open_body(item: FileItem) -> BodyStream:
    """Open ``item``'s body for one send (see the module docstring)."""
    if item.origin is not None:
        return await item.origin.open(item)
    return LocalStream(item, open_local(item))


#: Remote bodies up to this size are fetched ahead, whole, as soon as their send is prepared: the GETs of
#: one batched request then overlap instead of queueing behind each other, and no connection to the
#: store is held while a body waits for its turn in the request (so batches cannot starve each other).
#: A prefetched body is held whole: up to concurrency x 20 files x this. 64 KiB keeps that inside the
#: flat-memory budget; larger objects gain little (docs/sources.md, "Why 64 KiB"; bench_prefetch.py).
PREFETCH_MAX = 64 * 1024


class BytesStream:
    """A body already in memory (a prefetched small object), read like any other."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    async def read(self, n: int, digests: Sequence[Any] = ()) -> bytes:
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(chunk)
        for digest in digests:
            digest.update(chunk)
        return chunk

    def close_now(self) -> None:
        self._data = memoryview(b"")

    async def aclose(self) -> None:
        self.close_now()


async def fetch_small(item: FileItem) -> BytesStream:
    """Open a small remote body and read it whole (one byte more than listed, to notice growth)."""
    stream = await open_body(item)
    try:
        parts = []
        while chunk := await stream.read(item.size + 1):
            parts.append(chunk)
            if sum(len(p) for p in parts) > item.size:
                break
        return BytesStream(b"".join(parts))
    finally:
        await stream.aclose()
