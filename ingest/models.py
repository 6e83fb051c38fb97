"""Value types that flow between the stages of the engine."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["BodyOrigin", "BodyStream", "FileItem", "FileState", "LocalPin", "Receipt", "RemoteState", "RemoteStatus"]


class FileState(enum.StrEnum):
    """Where one file stands, as recorded in the manifest.

    ``pending`` -> ``uploading`` -> ``processing`` -> ``done`` | ``failed``

    - ``pending``: seen by the walker, nothing sent yet.
    - ``uploading``: the intent to send is durably recorded; the body may be on the wire. A crash here
      is resolved on resume by sending again with the platform's dedup option (or checking remotely).
    - ``processing``: the platform accepted the file and returned its ids; only polling remains.
    - ``done``: the platform says it finished.
    - ``failed``: the platform or the local file said no; ``last_error`` says why.
    """

    PENDING = "pending"
    UPLOADING = "uploading"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


class BodyStream(Protocol):
    """An open body, read front to back in chunks (see ``ingest.sources.reader``)."""

    async def read(self, n: int, digests: Sequence[Any] = ()) -> bytes: ...

    async def aclose(self) -> None: ...

    def close_now(self) -> None:
        """``aclose`` for code that cannot await (a send that was abandoned mid-body)."""
        ...


class BodyOrigin(Protocol):
    """Where a ``FileItem``'s body comes from when it is not a local file (a bucket object)."""

    def describe(self) -> str:
        """``s3://bucket/key``, for messages. Never contains secrets."""
        ...

    async def open(self, item: FileItem) -> BodyStream:
        """Open the body of ``item`` as it was listed; ``SourceFileError`` when it is gone or changed."""
        ...

    def reference(self) -> tuple[str | None, str, str] | None:
        """``(endpoint, bucket, key)`` when a platform could read the object itself (by reference)."""
        ...


@dataclass(frozen=True, slots=True)
class LocalPin:
    """The file a local walk saw, by device and inode: the descriptor opened to send it must be that very
    file (a symlink or folder swapped in since cannot redirect the read). ``follow``: the path may pass
    through symbolic links (``--follow-symlinks``); without it, a link at the end is refused too."""

    dev: int
    ino: int
    follow: bool = False


@dataclass(frozen=True, slots=True)
class FileItem:
    """One source file, as the walker found it."""

    #: Path relative to the source root, POSIX separators. The identity of the file everywhere.
    rel_path: str
    #: Where to read it from, for a local file (``origin`` is ``None``).
    abs_path: Path
    size: int
    #: The change token besides ``size``: a local file's mtime; a bucket object's LastModified with a
    #: fingerprint of its ETag (``ingest.sources.bucket``). Any change makes ``decide`` send it again.
    mtime_ns: int
    #: A local file's identity, checked when it is opened; ``None``: no check (not a local walk).
    pin: LocalPin | None = field(default=None, compare=False)
    #: Where the body comes from when it is not the local file ``abs_path`` (a bucket object), see
    #: ``ingest.sources.reader``. Targets never look at it: they read bodies with ``open_body``.
    origin: BodyOrigin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the platform handed back for one submitted file.

    ``error`` set means the platform refused this file permanently while accepting the request.
    """

    rel_path: str
    remote_id: str | None = None
    task_id: str | None = None
    error: str | None = None
    #: Target-specific extras the poller or retry call needs (kept small; stored in the manifest).
    extra: dict[str, str] = field(default_factory=dict)


class RemoteState(enum.StrEnum):
    """The platform's view of one submitted file, reduced to what the engine acts on."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RemoteStatus:
    rel_path: str
    state: RemoteState
    reason: str | None = None
