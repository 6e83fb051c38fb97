"""The one error tree of ``ingest``.

Every failure a user can see is an ``IngestError`` whose ``str()`` is a single line naming the file or
setting at fault and what to do about it. Foreign exceptions (aiohttp, OSError, sqlite3) are translated
once, at the boundary where they occur, with ``raise ... from exc``.

::

    IngestError
    ├── ConfigError              bad flag, config file, manifest or target setting   (exit 2)
    │   └── AuthError            the platform rejected the credentials               (exit 2)
    ├── SourceFileError          one local file cannot be sent (vanished, unreadable,
    │                            changed while sending, name not UTF-8): that file fails
    ├── RemoteError              the platform answered with an error
    │   ├── TransientError       worth retrying: connection errors, 5xx, timeouts
    │   │   └── RateLimitedError 429 / the platform's rate-limit codes; has retry_after
    │   └── PermanentError       4xx other than 429: recorded with the platform's message
    │       └── CapacityError    the destination is full: stop sending, say so    (exit 1)
    └── InterruptedRun           SIGINT / SIGTERM; the manifest is consistent        (exit 130)

Secrets never appear in any message: targets build messages from field names and platform replies only.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CapacityError",
    "ConfigError",
    "IngestError",
    "InterruptedRun",
    "PermanentError",
    "RateLimitedError",
    "RemoteError",
    "SourceFileError",
    "TransientError",
]


class IngestError(Exception):
    """Base of every error ``ingest`` raises on purpose."""

    #: Whether repeating the same operation later may succeed.
    retryable: bool = False


class ConfigError(IngestError):
    """A setting, flag, config file or manifest is wrong; nothing can proceed until the user fixes it."""


class AuthError(ConfigError):
    """The platform rejected the credentials."""


class SourceFileError(IngestError):
    """One local file cannot be sent. The run goes on; that file is recorded as failed."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class RemoteError(IngestError):
    """The platform (or the network in front of it) answered with an error."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        #: The message without the operation it interrupted, for per-file records (the file is the row).
        self.detail = detail or message


class TransientError(RemoteError):
    """A failure that may go away: connection reset, timeout, 5xx."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, detail=detail)
        #: Seconds the platform asked us to wait (``Retry-After``), if it said.
        self.retry_after = retry_after


class RateLimitedError(TransientError):
    """The platform is throttling us (HTTP 429 or a rate-limit code). Back off and send less at once."""


class PermanentError(RemoteError):
    """The platform refused the request for a reason retrying will not fix (4xx other than 429)."""


class CapacityError(PermanentError):
    """The destination cannot take more documents: stop sending new files."""


class InterruptedRun(IngestError):
    """The run was interrupted by a signal; every file's state in the manifest is consistent."""
