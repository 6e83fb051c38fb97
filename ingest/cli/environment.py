"""The machine's own failures, as the user should see them: a full disk, a read-only file, a closed pipe.

``ingest.cli.main`` asks ``environment_message`` about an exception nothing else translated; a message
means one line and exit code 2 (the user fixes the machine, not ingest), ``None`` means a bug.
"""

from __future__ import annotations

import errno
import sqlite3

__all__ = ["environment_message"]

#: ``errno`` values that describe the machine, not ingest.
_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system or the process's limit",
    errno.EIO: "input/output error (a failing disk?)",
    errno.EMFILE: "too many open files (raise `ulimit -n`, or lower --concurrency)",
    errno.ENFILE: "too many open files on the system",
    errno.ENOMEM: "out of memory",
}

#: SQLite's words for the same conditions (``sqlite3.OperationalError`` carries no errno).
_SQLITE_ERRORS = {
    "database or disk is full": "no space left on the device",
    "attempt to write a readonly database": "the manifest is read-only",
    "disk i/o error": "input/output error (a full or failing disk?)",
    "unable to open database file": "cannot open the manifest file",
}


def environment_message(exc: BaseException) -> str | None:
    """One line for an error of the environment (disk, permissions, limits), or ``None``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # the cause may be deeper (raise … from)
        seen.add(id(current))
        if isinstance(current, sqlite3.OperationalError):
            text = str(current).lower()
            for words, meaning in _SQLITE_ERRORS.items():
                if words in text:
                    return f"manifest: {meaning} ({current}); free space or fix the file, then rerun to resume"
        if isinstance(current, OSError) and current.errno in _OS_ERRORS:
            where = f" ({current.filename})" if current.filename else ""
            return f"{_OS_ERRORS[current.errno]}{where}; fix it, then rerun to resume"
        current = current.__cause__ or current.__context__
    return None
