"""MOI emulator: API keys limited to some volumes (``--restricted-key KEY:VOLUME[,VOLUME…]``), the
documented way to get MOI's 403 ``ErrForbidden`` (API-NOTES section 4) out of the emulator.

A restricted key authenticates like the main key, but may only upload into, read, and load into the
volumes it names, and may not create volumes; anything else is HTTP 403 ``ErrForbidden`` naming the
volume. MOI 5.0 documents 403 for "the current identity has no permission" (e.g. on file upload).
"""

from __future__ import annotations

from aiohttp import web

from ingest.emulators.kit.common import ApiError, short
from ingest.emulators.moi.wire import FORBIDDEN

__all__ = ["ALLOWED_VOLUMES", "allow", "check_unrestricted", "check_volume"]

#: The volumes a restricted key may use, on the request; absent for the main key (every volume).
ALLOWED_VOLUMES: web.RequestKey[frozenset[str]] = web.RequestKey("moi_allowed_volumes", frozenset)


def allow(request: web.Request, volumes: frozenset[str] | None) -> None:
    """Record what the authenticated key may use (``None``: everything)."""
    if volumes is not None:
        request[ALLOWED_VOLUMES] = volumes


def check_volume(request: web.Request, volume_id: str) -> None:
    """403 ``ErrForbidden`` unless the request's key may use ``volume_id``."""
    allowed = request.get(ALLOWED_VOLUMES)
    if allowed is not None and volume_id not in allowed:
        raise ApiError(403, FORBIDDEN, f"this API key has no permission on volume {short(volume_id)}")


def check_unrestricted(request: web.Request, action: str) -> None:
    """403 ``ErrForbidden`` when the request's key is limited to some volumes."""
    if request.get(ALLOWED_VOLUMES) is not None:
        raise ApiError(403, FORBIDDEN, f"this API key has no permission to {action}")
