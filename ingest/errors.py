"""The one error tree of ``ingest``.

Every failure a user can see is an ``IngestError`` whose ``str()`` is a single line naming the file or
setting at fault and what to do about it. Foreign exceptions (aiohttp, OSError, sqlite3) are translated
once, at the boundary where they occur, with ``raise ... from exc``.

::

    IngestError
    ├── ConfigError              bad flag, config file, manifest or target setting   (exit 2)
    │   └── AuthError            the platform rejected the credentials               (exit 2)
    │       └── PermissionDenied the credentials are good but lack a right they need (exit 2)
    ├── SourceFileError          one local file cannot be sent (vanished, unreadable,
    │                            changed while sending, name not UTF-8): that file fails
    ├── RemoteError              the platform answered with an error
    │   ├── TransientError       worth retrying: connection errors, 5xx, timeouts
    │   │   └── RateLimitedError 429 / the platform's rate-limit codes; has retry_after
    │   └── PermanentError       4xx other than 429: recorded with the platform's message
    │       ├── CapacityError    the destination is full: stop sending, say so    (exit 1)
    │       └── VersionConflict  Keyue's directory list changed since it was read: re-read it
    └── InterruptedRun           SIGINT / SIGTERM; the manifest is consistent        (exit 130)

Secrets never appear in any message: targets build messages from field names and platform replies only.

A platform's error reply is mapped into the tree by one function, ``classify``, through that platform's
``ErrorRules``: a table declared next to its client, whose rows say which HTTP statuses and platform
codes become which error, with which message. Connection failures become ``connection_failed``.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Self

__all__ = [
    "SERVER_STATUSES",
    "SUCCESS_STATUSES",
    "AnyCase",
    "AuthError",
    "CapacityError",
    "ConfigError",
    "ErrorRules",
    "IngestError",
    "InterruptedRun",
    "PermanentError",
    "PermissionDenied",
    "RateLimitedError",
    "RemoteError",
    "Rule",
    "SourceFileError",
    "TransientError",
    "VersionConflict",
    "classify",
    "connection_failed",
]


class IngestError(Exception):
    """Base of every error ``ingest`` raises on purpose."""


class ConfigError(IngestError):
    """A setting, flag, config file or manifest is wrong; nothing can proceed until the user fixes it."""


class AuthError(ConfigError):
    """The platform rejected the credentials."""


class PermissionDenied(AuthError):
    """The platform accepted the credentials but they lack a right the run needs (e.g. VikingDB 1000002)."""


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


class VersionConflict(PermanentError):
    """Keyue code 4000526: the directory tree changed since its version was read; re-read and try again."""


class InterruptedRun(IngestError):
    """The run was interrupted by a signal; every file's state in the manifest is consistent."""


# ----- the one classifier ------------------------------------------------------------------------------------

#: HTTP statuses of a successful reply, and of a failure on the server's side (``>= 500``).
SUCCESS_STATUSES = range(200, 300)
SERVER_STATUSES = range(500, 1000)

#: A message naming the operation starts with this; the part after it is the ``detail`` of a ``PermanentError``.
_OPERATION = "{what}: "


class AnyCase(frozenset[str]):
    """Platform codes compared without regard to case (MOI says ``ErrServer`` and ``errserver`` alike)."""

    def __new__(cls, *codes: str) -> Self:
        return super().__new__(cls, (code.casefold() for code in codes))

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and super().__contains__(code.casefold())


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of a platform's error table: a reply whose HTTP status is in ``status`` *or* whose platform
    code is in ``code`` becomes ``raise_as`` with ``message``.

    ``message`` is a ``str.format`` template of the whole one-line message, over ``{what}`` (the
    operation), ``{detail}`` (what the platform said, already on one line and free of secrets),
    ``{platform}``, ``{status}``, ``{code}``, ``{code_or_status}`` and the context the caller passes
    (``{kb}``, ``{endpoint}``, …). A message that names a setting rather than an operation leaves out
    ``{what}``.
    """

    raise_as: type[ConfigError] | type[RemoteError]
    message: str
    status: Container[int] = ()
    code: Container[object] = ()

    def applies(self, status: int, code: str | int | None) -> bool:
        return status in self.status or code in self.code


@dataclass(frozen=True, slots=True)
class ErrorRules:
    """A platform's error table. The first row that applies wins; ``otherwise`` applies when none does.

    A reply with a status in ``needs_code`` but no platform code was not written by the platform (a
    proxy's page, a half-deployed gateway): it is a ``TransientError``, whatever the rows say.
    """

    platform: str
    rows: tuple[Rule, ...]
    otherwise: Rule
    needs_code: Container[int] = SUCCESS_STATUSES

    def rule_for(self, status: int, code: str | int | None) -> Rule:
        if code is None and status in self.needs_code:
            return _NO_ENVELOPE
        return next((rule for rule in self.rows if rule.applies(status, code)), self.otherwise)


_NO_ENVELOPE = Rule(TransientError, "{what}: {platform} answered without an envelope ({detail})")


def classify(
    rules: ErrorRules,
    *,
    what: str,
    status: int,
    code: str | int | None,
    detail: str,
    retry_after: float | None = None,
    **context: str,
) -> ConfigError | RemoteError:
    """The error a platform's failed reply stands for, to ``raise``.

    ``status`` is the HTTP status, ``code`` the platform's error code (``None`` when the reply carried
    none), ``detail`` what the platform said (one line, no secrets), ``retry_after`` its ``Retry-After``.
    A ``RemoteError`` carries ``status`` and ``code`` (as text); a ``PermanentError``'s ``detail`` is its
    message without the operation, for the failed file's record, while a ``TransientError`` keeps the
    whole message there (it is recorded only when the retries ran out).
    """
    rule = rules.rule_for(status, code)
    code_text = None if code is None else str(code)
    fields = {
        **context,
        "what": what,
        "detail": detail,
        "platform": rules.platform,
        "status": str(status),
        "code": code_text or "",
        "code_or_status": code_text or str(status),
    }
    message = rule.message.format_map(fields)
    kind = rule.raise_as
    if issubclass(kind, TransientError):
        return kind(message, status=status, code=code_text, retry_after=retry_after)
    if issubclass(kind, RemoteError):
        text = rule.message.removeprefix(_OPERATION).format_map(fields)
        return kind(message, status=status, code=code_text, detail=text)
    return kind(message)


def connection_failed(what: str, where: str, why: str) -> TransientError:
    """``where`` could not be reached or stopped answering during ``what``; ``why`` is short and secret-free."""
    text = f"connection to {where} failed ({why})"
    return TransientError(f"{what}: {text}", detail=text)
