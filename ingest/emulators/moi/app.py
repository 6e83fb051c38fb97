"""The MOI emulator's app: what the kit's app factory needs to know about MOI, and ``create_moi_app``.

MOI's error envelope (``wire.error``), its API-key check, its routes and its test hook; the kit
(``kit.app.build_app``) adds the shared skeleton: faults, request counting, error rendering, the store.
"""

from __future__ import annotations

import argparse
import hmac

import anyio
from aiohttp import web

from ingest.emulators.kit.app import EmulatorApp, build_app
from ingest.emulators.kit.common import ApiError, json_response
from ingest.emulators.kit.faults import FaultInjector
from ingest.emulators.moi.access import allow
from ingest.emulators.moi.catalog import delete_file, emulator_documents, list_files
from ingest.emulators.moi.config import MoiEmulatorConfig, add_moi_arguments, config_from_args
from ingest.emulators.moi.connectors import ConnectorStore, add_connector_routes
from ingest.emulators.moi.loadtasks import LoadService, add_load_routes
from ingest.emulators.moi.state import MOI_STATE, MoiState, state_of
from ingest.emulators.moi.tasks import get_task, list_tasks, pause_task, resume_task, retry_task, task_files
from ingest.emulators.moi.uploads import upload
from ingest.emulators.moi.volumes import create_volume, volume_info
from ingest.emulators.moi.wire import (
    ALREADY_EXISTS,
    FORBIDDEN,
    METHOD_NOT_ALLOWED,
    MULTIPLE_CREDENTIALS,
    NOT_FOUND,
    PARAM_INVALID,
    RATE_LIMITED,
    SERVER_ERROR,
    UNAUTHORIZED,
    error,
)

__all__ = ["MOI_APP", "MoiEmulatorConfig", "add_moi_arguments", "build_moi_app", "create_moi_app"]

_CODE_FOR_STATUS = {
    400: PARAM_INVALID,
    401: UNAUTHORIZED,
    403: FORBIDDEN,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    409: ALREADY_EXISTS,
    413: PARAM_INVALID,
    429: RATE_LIMITED,
}


def _render(request: web.Request, exc: ApiError) -> web.Response:
    return error(request, exc.http_status, exc.code, exc.message, exc.headers or None)


def _refused(status: int, message: str) -> ApiError:
    return ApiError(status, _CODE_FOR_STATUS.get(status, SERVER_ERROR if status >= 500 else PARAM_INVALID), message)


async def _authenticate(request: web.Request) -> None:
    """``moi-key`` (the SDK) or ``X-API-Key`` (MOI 5.0). The key is never echoed."""
    given = [v for v in (request.headers.get("moi-key"), request.headers.get("X-API-Key")) if v is not None]
    if not given:
        raise ApiError(401, UNAUTHORIZED, "missing API key: send it in the moi-key header")
    if len(given) == 2 and given[0] != given[1]:
        raise ApiError(400, MULTIPLE_CREDENTIALS, "moi-key and X-API-Key carry different keys; send one")
    config = state_of(request).config
    key = given[0].encode()
    if hmac.compare_digest(key, config.api_key.encode()):
        return
    for restricted, volumes in config.restricted_keys:
        if hmac.compare_digest(key, restricted.encode()):
            allow(request, frozenset(volumes))
            return
    raise ApiError(401, UNAUTHORIZED, "invalid API key")


async def emulator_files(request: web.Request) -> web.Response:
    """Every stored file (not enveloped): ``[{volume_id, path, size, md5, uploads}]``."""
    return json_response(await anyio.to_thread.run_sync(state_of(request).store.stored_files))


def _is_upload(request: web.Request) -> bool:
    return request.method == "POST" and request.path == "/connectors/upload"


def _new_state(config: MoiEmulatorConfig, faults: FaultInjector) -> MoiState:
    return MoiState(config.task_delay_ms, config.task_fail_rate, config=config, faults=faults)


def _add_routes(app: web.Application, state: MoiState) -> None:
    connectors = ConnectorStore(state, allow_remote=state.config.allow_remote_sources)
    add_connector_routes(app, connectors)
    config = state.config
    loads = LoadService(
        state, connectors, clock_speed=config.clock_speed, concurrency=config.load_concurrency, seed=config.seed
    )
    add_load_routes(app, loads)
    app.router.add_post("/catalog/volume/create", create_volume)
    app.router.add_post("/catalog/volume/info", volume_info)
    app.router.add_post("/catalog/file/list", list_files)
    app.router.add_post("/catalog/file/delete", delete_file)
    app.router.add_post("/connectors/upload", upload)
    app.router.add_get("/task/get", get_task, allow_head=False)
    app.router.add_get("/task/files", task_files, allow_head=False)
    app.router.add_get("/task/list", list_tasks, allow_head=False)
    app.router.add_post("/task/retry", retry_task)
    app.router.add_post("/task/pause", pause_task)
    app.router.add_post("/task/resume", resume_task)


MOI_APP: EmulatorApp[MoiEmulatorConfig, MoiState] = EmulatorApp(
    name="MOI",
    state_key=MOI_STATE,
    new_state=_new_state,
    render_error=_render,
    refused=_refused,
    server_error=lambda detail: ApiError(500, SERVER_ERROR, f"internal server error ({detail})"),
    rate_limited=lambda: ApiError(429, RATE_LIMITED, "rate limit exceeded; retry after the Retry-After delay"),
    authenticate=_authenticate,
    add_routes=_add_routes,
    emulator_files=emulator_files,
    emulator_documents=emulator_documents,
    resettable=_is_upload,
)


def create_moi_app(config: MoiEmulatorConfig) -> web.Application:
    """The MOI emulator as an aiohttp application (run it with ``ingest.emulators.kit.server``)."""
    return build_app(MOI_APP, config)


def build_moi_app(args: argparse.Namespace) -> web.Application:
    """The app for parsed ``add_moi_arguments`` flags."""
    return create_moi_app(config_from_args(args))
