"""Pieces every platform emulator shares: ids, safe paths, request parsing and the error they all raise.

Nothing here knows a platform's wire format; each emulator renders ``ApiError`` in its own envelope.
"""

from __future__ import annotations

import json
import posixpath
import random
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

__all__ = [
    "ApiError",
    "Refusal",
    "SnowflakeIds",
    "json_response",
    "now_ms",
    "query_int",
    "read_body",
    "read_json_object",
    "relative_path_problem",
    "safe_join",
    "short",
]

_Default = TypeVar("_Default", int, int | None)

#: Upper bound of a JSON request body. Emulated APIs take small JSON documents; anything bigger is a bug.
MAX_JSON_BODY = 1 << 20


class ApiError(Exception):
    """An error answer: HTTP status, the platform's error code and one sentence naming the field at fault.

    Handlers raise it; the emulator's middleware renders it in the platform's envelope. ``http_status``
    can differ from the status a platform implies by ``code`` (MOI answers some ``ErrServer`` with 200).
    """

    def __init__(
        self,
        http_status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


#: Builds a platform's refusal from one sentence naming the field at fault: the checks shared by every
#: emulator word the sentence, the platform picks the status and code (MOI 400 ``ErrParamInvalid``,
#: Keyue 200 with 4002012, …).
Refusal = Callable[[str], ApiError]


def now_ms() -> int:
    """Wall-clock milliseconds. Wall clock, not monotonic: task timestamps survive emulator restarts."""
    return time.time_ns() // 1_000_000


class SnowflakeIds:
    """Decimal-string ids shaped like the platforms' snowflakes: ``ms since 2020 | worker | sequence``.

    Ids only grow, also across restarts: the generator starts above the largest id already persisted,
    so an old task id is never handed out again even if the clock stepped back. The random worker bits
    keep two emulators sharing a data dir from minting the same id in the same millisecond.
    """

    _EPOCH_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z
    _WORKER_BITS = 10
    _SEQUENCE_BITS = 12

    def __init__(self, floor: int = 0) -> None:
        self._last = floor
        self._worker = random.SystemRandom().getrandbits(self._WORKER_BITS)
        self._lock = threading.Lock()

    def next_id(self) -> str:
        with self._lock:
            millis = now_ms() - self._EPOCH_MS
            candidate = ((millis << self._WORKER_BITS) | self._worker) << self._SEQUENCE_BITS
            self._last = max(candidate, self._last + 1)
            return str(self._last)


def relative_path_problem(path: str) -> str | None:
    """Why ``path`` is not an acceptable destination inside a volume, or ``None`` when it is.

    Accepted: non-empty POSIX relative paths whose segments are neither empty, ``.`` nor ``..``. Rejected
    outright rather than normalised, so a client bug (``a//b``, ``./a``) shows up instead of being hidden.
    """
    if not path:
        return "is empty"
    if "\x00" in path:
        return "contains a NUL character"
    if "\\" in path:
        return "contains a backslash; use '/' to separate folders"
    if path.startswith("/"):
        return "is absolute; give a path relative to the volume"
    if len(path.encode("utf-8", "surrogatepass")) > 4096:
        return "is longer than 4096 bytes"
    for segment in path.split("/"):
        if segment == "..":
            return "contains a '..' segment"
        if segment in ("", "."):
            return "contains an empty or '.' segment"
        if len(segment.encode("utf-8", "surrogatepass")) > 255:
            return "has a path segment longer than 255 bytes"
    return None


def safe_join(root: Path, rel_path: str) -> Path:
    """``root / rel_path``, refusing anything that would land outside ``root``.

    ``relative_path_problem`` already rejects the usual tricks; this is the second, independent check
    (it also catches a symlink planted inside the data dir), so a validation slip cannot write elsewhere.
    """
    problem = relative_path_problem(rel_path)
    if problem is not None:
        raise ValueError(f"path {rel_path!r} {problem}")
    base = root.resolve()
    target = (base / posixpath.normpath(rel_path)).resolve()
    if target == base or not target.is_relative_to(base):
        raise ValueError(f"path {rel_path!r} escapes {base}")
    return target


def short(value: str, limit: int = 64) -> str:
    """A client-supplied value, shortened for an error message."""
    return value if len(value) <= limit else value[:limit] + "…"


def json_response(payload: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response that keeps non-ASCII text readable (the platforms answer in Chinese too)."""
    return web.Response(
        text=json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
        status=status,
        headers=headers,
        content_type="application/json",
    )


async def read_body(request: web.Request, *, code: str) -> bytes:
    """The whole (small) request body; ``ApiError(400, code)`` once it grows past ``MAX_JSON_BODY``.

    Read through the cap so a runaway client cannot make the emulator buffer gigabytes.
    """
    body = bytearray()
    while chunk := await request.content.read(MAX_JSON_BODY + 1 - len(body)):
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise ApiError(400, code, f"request body is larger than {MAX_JSON_BODY} bytes")
    return bytes(body)


async def read_json_object(request: web.Request, *, code: str) -> dict[str, Any]:
    """The request body (see ``read_body``) as a JSON object; ``ApiError(400, code)`` for anything else."""
    body = await read_body(request, code=code)
    if not body.strip():
        raise ApiError(400, code, "request body is empty; send a JSON object")
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, code, f"request body is not valid JSON ({exc})") from exc
    except RecursionError:
        raise ApiError(400, code, "request body is nested too deeply") from None
    if not isinstance(value, dict):
        raise ApiError(400, code, "request body must be a JSON object")
    return value


def query_int(
    request: web.Request, name: str, default: _Default, low: int, high: int, *, fail: Refusal
) -> int | _Default:
    """Query parameter ``name`` as an integer in [low, high]; ``default`` when absent or blank."""
    raw = request.query.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise fail(f"query parameter {name} must be an integer, got {short(raw)!r}") from None
    if not low <= value <= high:
        raise fail(f"query parameter {name} must be between {low} and {high}, got {value}")
    return value
