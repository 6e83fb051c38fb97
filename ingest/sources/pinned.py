"""Opening a local file as the walk saw it: the descriptor is checked, not the path.

Between the walk and the upload a path may come to name something else: a symbolic link to a private
file, a folder swapped for a link to a private folder, a FIFO that would block the read. ``open_pinned``
opens without following a final link (unless the run follows links) and without blocking, then checks
the open descriptor (``fstat``): a regular file with the device and inode the walk recorded.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO

from ingest.models import LocalPin

__all__ = ["PinMismatch", "open_pinned", "open_pinned_fd"]


class PinMismatch(OSError):
    """The path no longer names the file the walk saw; the message says how."""


def open_pinned(path: Path, pin: LocalPin | None) -> IO[bytes]:
    """``path`` opened for reading; with ``pin``, only if it is still that regular file."""
    if pin is None:
        return open(path, "rb")
    return os.fdopen(open_pinned_fd(path, pin), "rb")


def open_pinned_fd(path: Path, pin: LocalPin | None) -> int:
    """``open_pinned``'s checks, giving the bare descriptor (blocking; the caller closes it): for a file read
    whole with ``os.read``, a buffered file object costs three more syscalls (``fstat``, ``ioctl``,
    ``lseek``) and two objects per file (benchmarks/README.md, Issue 11 item 24)."""
    if pin is None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # what ``open(path, "rb")`` does, directory check included
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        except BaseException:
            os.close(fd)
            raise
        return fd
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | (0 if pin.follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PinMismatch(
                "became a symbolic link after the walk; not followed (--follow-symlinks sends link targets)"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PinMismatch("is no longer a regular file")
        if (st.st_dev, st.st_ino) != (pin.dev, pin.ino):
            raise PinMismatch("was replaced by another file after the walk (a moved folder or link?); rerun to send it")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise
