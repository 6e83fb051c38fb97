"""MOI emulator: ``POST /catalog/volume/create`` and ``POST /catalog/volume/info``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import anyio
from aiohttp import web

from ingest.emulators.kit.common import ApiError, read_json_object
from ingest.emulators.moi.access import check_unrestricted, check_volume
from ingest.emulators.moi.state import state_of
from ingest.emulators.moi.wire import NOT_FOUND, PARAM_INVALID, bad, check_keys, ok, short

__all__ = ["create_volume", "volume_info"]


def _volume_name(body: Mapping[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad("name is required and must be a non-empty string")
    if len(name) > 128 or "/" in name or "\x00" in name:
        raise bad("name must be at most 128 characters, without '/' or NUL")
    return name


async def create_volume(request: web.Request) -> web.Response:
    check_unrestricted(request, "create volumes")
    body = await read_json_object(request, code=PARAM_INVALID)
    check_keys(body, {"database_id", "name", "description"})
    database_id = body.get("database_id")
    if isinstance(database_id, bool) or not isinstance(database_id, int) or database_id < 0:
        raise bad("database_id is required and must be a non-negative integer")
    name = _volume_name(body)
    description = body.get("description", "")
    if not isinstance(description, str):
        raise bad("description must be a string")
    volume_id = await anyio.to_thread.run_sync(state_of(request).store.create_volume, database_id, name, description)
    return ok(request, {"id": volume_id})


def _timestamp(ms: int) -> str:
    # The Go SDK types created_at/updated_at of a volume as strings.
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


async def volume_info(request: web.Request) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    check_keys(body, {"id"})
    if body.get("id") in (None, ""):
        raise bad("id is required")
    if isinstance(body["id"], bool) or not isinstance(body["id"], (str, int)):
        raise bad("id must be a volume id string")
    volume_id = str(body["id"])
    check_volume(request, volume_id)
    volume = await anyio.to_thread.run_sync(state_of(request).store.volume, volume_id)
    if volume is None:
        raise ApiError(404, NOT_FOUND, f"volume {short(volume_id)} not found")
    return ok(
        request,
        {
            "id": volume.id,
            "name": volume.name,
            "description": volume.description,
            "ref": False,
            "created_at": _timestamp(volume.created_ms),
            "updated_at": _timestamp(volume.updated_ms),
        },
    )
