"""The MOI wire conventions every part of the MOI emulator shares: error codes, status enums, the
``{"code","msg","data","request_id"}`` envelope and strict request-parsing helpers.

Shared by the upload, task, connector and load-task modules, so none of them imports another for them.
Each helper raises ``ApiError`` (400 ``ErrParamInvalid``) with one sentence naming the field at fault.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ingest.emulators.kit import common as _common
from ingest.emulators.kit.common import ApiError, json_response, short

__all__ = [
    "ALREADY_EXISTS",
    "CONFLICT",
    "DUPLICATE_NAME",
    "FORBIDDEN",
    "METHOD_NOT_ALLOWED",
    "MULTIPLE_CREDENTIALS",
    "NOT_FOUND",
    "PARAM_INVALID",
    "RATE_LIMITED",
    "SERVER_ERROR",
    "UNAUTHORIZED",
    "FileStatus",
    "TaskStatus",
    "bad",
    "check_keys",
    "error",
    "id_value",
    "ok",
    "query_bool",
    "query_id",
    "query_int",
    "query_list",
    "query_paging",
    "request_id",
    "required_id",
    "short",
]

# --- error codes (API-NOTES section 4, "Error codes") ----------------------------------------------------

PARAM_INVALID = "ErrParamInvalid"
UNAUTHORIZED = "ErrUnauthorized"
FORBIDDEN = "ErrForbidden"
NOT_FOUND = "ErrNotFound"
ALREADY_EXISTS = "ErrAlreadyExists"
DUPLICATE_NAME = "ErrDuplicateName"
CONFLICT = "ErrConflict"
MULTIPLE_CREDENTIALS = "ErrMultipleAuthCredentials"
RATE_LIMITED = "ErrDynamicServiceRateLimit"
SERVER_ERROR = "ErrServer"
#: Not in the documented table; used only for a wrong HTTP method, which the real gateway answers itself.
METHOD_NOT_ALLOWED = "ErrMethodNotAllowed"

_DECIMAL_ID_RE = re.compile(r"[0-9]{1,20}")


class FileStatus(enum.IntEnum):
    """File load status in ``/task/files`` (MOI document table)."""

    UNKNOWN = 0
    WAITING = 1
    UPLOADING = 2
    PAUSED = 3
    FAILED = 4
    SUCCESS = 5
    RETRYING = 6


class TaskStatus(enum.IntEnum):
    """Task status in ``/task/get`` and ``/task/list`` (MOI document table)."""

    UNKNOWN = 0
    RUNNING = 1
    PAUSING = 2
    PAUSED = 3
    FINISHED = 4


# --- envelope ---------------------------------------------------------------------------------------------


def request_id(request: web.Request) -> str:
    """The caller's ``X-Request-ID`` when it is a sane token, else a fresh uuid."""
    given = request.headers.get("X-Request-ID", "")
    if 0 < len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return str(uuid.uuid4())


def ok(request: web.Request, data: Any) -> web.Response:
    return json_response({"code": "OK", "msg": "OK", "data": data, "request_id": request_id(request)})


def error(
    request: web.Request, status: int, code: str, msg: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = {"code": code, "msg": msg, "data": None, "request_id": request_id(request)}
    return json_response(body, status=status, headers=headers)


# --- request parsing --------------------------------------------------------------------------------------


def bad(msg: str) -> ApiError:
    return ApiError(400, PARAM_INVALID, msg)


def check_keys(body: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str = "request body") -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad(f"{where} has unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def id_value(value: Any, name: str) -> str:
    """An id given as a decimal string or a JSON integer (the Go SDK sends int64)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise bad(f"{name} must be a decimal id string")
    text = str(value).strip()
    if not _DECIMAL_ID_RE.fullmatch(text):
        raise bad(f"{name} must be a decimal id, got {short(text)!r}")
    return text


def required_id(body: Mapping[str, Any], name: str) -> str:
    if name not in body or body[name] in (None, ""):
        raise bad(f"{name} is required")
    return id_value(body[name], name)


def query_id(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if value is None or not value.strip():
        raise bad(f"query parameter {name} is required")
    return id_value(value, name)


def query_int(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    return _common.query_int(request, name, default, low, high, fail=bad)


def query_paging(request: web.Request) -> tuple[int, int]:
    page = query_int(request, "page", 1, 1, 1_000_000)
    page_size = query_int(request, "page_size", 10, 1, 1000)
    assert page is not None
    assert page_size is not None
    return page, page_size


def query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").strip().lower()
    if raw in ("", "false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise bad(f"query parameter {name} must be true or false, got {short(raw)!r}")


def query_list(request: web.Request, name: str) -> list[str]:
    """An array query parameter, given repeated (``a=1&a=2``), as ``a[]=…`` or comma-separated (``a=1,2``)."""
    values = [*request.query.getall(name, []), *request.query.getall(name + "[]", [])]
    return [item.strip() for value in values for item in value.split(",") if item.strip()]
