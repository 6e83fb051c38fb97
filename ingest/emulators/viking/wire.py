"""The VikingDB wire conventions the emulator's parts share: codes, the envelope, the signed body.

Answers use ``{"code","message","request_id","data"}``; the request id is also sent in ``X-Tt-Logid``,
where the vikingdb SDK reads it. The authenticator reads the whole body (the signature covers it) and
keeps it at ``request[BODY]`` for the handler.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from ingest.emulators.kit.common import ApiError, json_response, now_ms, read_body
from ingest.emulators.viking.store import INVALID_REQUEST

__all__ = [
    "ALLOWED_COLLECTIONS",
    "BODY",
    "INTERNAL_ERROR",
    "NO_PERMISSION",
    "QUOTA_LIMITED",
    "UNAUTHORIZED",
    "envelope",
    "invalid",
    "ok",
    "read_signed_body",
]

UNAUTHORIZED = 1000001
#: Seed 003 / 001: "1000002 | 403 | no permission".
NO_PERMISSION = 1000002
INTERNAL_ERROR = 1000028
QUOTA_LIMITED = 1000029

#: Per-request storage: the request id (one per request, in the body and X-Tt-Logid) and the raw body.
_REQUEST_ID: web.RequestKey[str] = web.RequestKey("viking_request_id", str)
BODY: web.RequestKey[bytes] = web.RequestKey("viking_body", bytes)
#: The knowledge bases a restricted access key may use (``--restricted-key``); absent for the main key.
ALLOWED_COLLECTIONS: web.RequestKey[frozenset[str]] = web.RequestKey("viking_allowed_collections", frozenset)


def _request_id(request: web.Request) -> str:
    if _REQUEST_ID in request:
        return request[_REQUEST_ID]
    # Shaped like the platform's: "02", a millisecond timestamp, then hex.
    value = f"02{now_ms()}{uuid.uuid4().hex}{uuid.uuid4().hex[:6]}"
    request[_REQUEST_ID] = value
    return value


def envelope(request: web.Request, code: int, message: str, data: Any, status: int = 200) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": _request_id(request)}
    if data is not None:
        body["data"] = data
    # The vikingdb SDK reads the request id from X-Tt-Logid.
    return json_response(body, status=status, headers={"X-Tt-Logid": _request_id(request)})


def ok(request: web.Request, data: Any = None) -> web.Response:
    return envelope(request, 0, "success", data)


def invalid(reason: str, status: int = 400) -> ApiError:
    """VikingDB's "invalid request" (1000003), with the reason after the documented message."""
    return ApiError(status, str(INVALID_REQUEST), f"invalid request:{reason}")


async def read_signed_body(request: web.Request) -> bytes:
    """The raw body, which the signature covers, read through the cap; refused in VikingDB's words."""
    try:
        return await read_body(request, code=str(INVALID_REQUEST))
    except ApiError as exc:
        raise invalid(exc.message) from None
