"""A strict local emulator of the Baidu Keyue (客悦) knowledge APIs (API-NOTES section 3, seed 002).

Emulated, under ``/open/v1/api/v2`` and the newer ``/csp-service/open/v1/api/v2`` alike:

- ``POST /task/create/llm_document_import?dirId=…`` (multipart: ``file``, ``taskExtend``, optional
  ``multipleFileKey``; query ``knowledgePublic``, ``i18n``)
- ``GET /llm/document/list`` (``pn``, ``ps``, ``keyword``, ``dirId``, ``origin``, ``knowledgePublic``, ``i18n``)
- ``POST /llm/document/batchRetrain`` (``{"documentIds": […]}``)
- ``POST /llm/document/batchDelete`` (``{"documentIds": […]}``; DocumentDelete, code 4007283 "文档删除失败"
  when an id is unknown, and then nothing is deleted)
- ``GET /directory`` (``keyword``, ``parentId``), ``POST /directory/create``, ``POST /directory/update``
- test hooks without auth or faults: ``GET /_emulator/files[?dirId=]`` (by path), ``GET /_emulator/documents``
  (one entry per document: every import is a document of its own), ``GET /_emulator/stats``

Answers use the documented envelopes: ``{"time","data","code":200,"msg":"OK"}`` on success and
``{"msg","requestId","code","tip"}`` on failure, with the documented codes 4002012 (request rejected;
``tip`` names the field at fault) and 4000526 (directory version conflict). The HTTP status of a
failure is not documented: the emulator answers platform errors with HTTP 200 (the status lives in
``code``, as in the success envelope), a rejected ``token``/``uid``/``username`` with 401, and its
injected faults with 500 and 429 (+ ``Retry-After``), as the gateway in front of the API would.

Documents learn over ``learn_delay_ms`` (``learnStatus`` 0), then either fail (-1, by ``fail_rate``)
or go through knowledge enhancement (2) for ``enhance_delay_ms`` before they are learned (1).
"""

from __future__ import annotations

import argparse
import hmac
import uuid

from aiohttp import web

from ingest.emulators.keyue.config import KeyueEmulatorConfig, add_keyue_arguments, config_from_args
from ingest.emulators.keyue.handlers import (
    batch_delete,
    batch_retrain,
    create_directory,
    emulator_documents,
    emulator_files,
    import_document,
    list_directories,
    list_documents,
    update_directory,
)
from ingest.emulators.keyue.state import KEYUE_STATE, KeyueState, state_of
from ingest.emulators.keyue.store import DELETE_FAILED, INVALID, VERSION_CONFLICT, invalid
from ingest.emulators.kit.app import EmulatorApp, build_app
from ingest.emulators.kit.common import ApiError, json_response
from ingest.emulators.kit.faults import FaultInjector

__all__ = [
    "API_BASE",
    "KEYUE_APP",
    "MESSAGES",
    "PREFIXES",
    "KeyueEmulatorConfig",
    "add_keyue_arguments",
    "build_keyue_app",
    "create_keyue_app",
]

API_BASE = "/open/v1/api/v2"
#: The older doc's paths have no prefix; the 2026 doc puts the same API under ``/csp-service``.
PREFIXES = ("", "/csp-service")

#: Documented messages per code; the injected fault codes mirror their HTTP status.
MESSAGES = {
    INVALID: "服务器处理该请求失败,请检查请求是否合法",
    DELETE_FAILED: "文档删除失败",
    VERSION_CONFLICT: "目录列表数据版本不一致,请刷新重试",
    500: "服务器内部错误,请稍后重试",
    429: "请求过于频繁,请稍后重试",
}


def _render(request: web.Request, exc: ApiError) -> web.Response:
    """The documented failure envelope ``{"msg","requestId","code","tip"}``."""
    code = int(exc.code)
    body = {
        "msg": MESSAGES.get(code, MESSAGES[INVALID]),
        "requestId": uuid.uuid4().hex,
        "code": code,
        "tip": exc.message,
    }
    return json_response(body, status=exc.http_status, headers=exc.headers or None)


async def _authenticate(request: web.Request) -> None:
    """``token`` (the robot's API key), ``uid`` and ``username`` headers; the token is never echoed."""
    config = state_of(request).config
    missing = [name for name in ("token", "uid", "username") if not request.headers.get(name, "").strip()]
    if missing:
        raise invalid(f"missing header {missing[0]}: send token, uid and username headers", http_status=401)
    if not hmac.compare_digest(request.headers["token"].encode(), config.token.encode()):
        raise invalid("token is not a valid API key of this agent", http_status=401)
    for name in ("uid", "username"):
        expected = getattr(config, name)
        if expected is not None and request.headers[name] != expected:
            raise invalid(f"{name} does not belong to this agent's account", http_status=401)


_IMPORT_PATHS = frozenset(f"{prefix}{API_BASE}/task/create/llm_document_import" for prefix in PREFIXES)


def _is_import(request: web.Request) -> bool:
    return request.method == "POST" and request.path in _IMPORT_PATHS


def _new_state(config: KeyueEmulatorConfig, faults: FaultInjector) -> KeyueState:
    return KeyueState(config.learn_delay_ms, config.enhance_delay_ms, config.fail_rate, config=config, faults=faults)


def _add_routes(app: web.Application, state: KeyueState) -> None:
    for prefix in PREFIXES:
        base = prefix + API_BASE
        app.router.add_post(base + "/task/create/llm_document_import", import_document)
        app.router.add_get(base + "/llm/document/list", list_documents, allow_head=False)
        app.router.add_post(base + "/llm/document/batchRetrain", batch_retrain)
        app.router.add_post(base + "/llm/document/batchDelete", batch_delete)
        app.router.add_get(base + "/directory", list_directories, allow_head=False)
        app.router.add_post(base + "/directory/create", create_directory)
        app.router.add_post(base + "/directory/update", update_directory)


KEYUE_APP: EmulatorApp[KeyueEmulatorConfig, KeyueState] = EmulatorApp(
    name="Keyue",
    state_key=KEYUE_STATE,
    new_state=_new_state,
    render_error=_render,
    refused=lambda status, tip: invalid(tip, http_status=status),
    server_error=lambda detail: ApiError(500, "500", f"internal server error ({detail})"),
    rate_limited=lambda: ApiError(429, "429", "rate limit exceeded; retry after the Retry-After delay"),
    authenticate=_authenticate,
    add_routes=_add_routes,
    emulator_files=emulator_files,
    emulator_documents=emulator_documents,
    resettable=_is_import,
)


def create_keyue_app(config: KeyueEmulatorConfig) -> web.Application:
    """The Keyue emulator as an aiohttp application (run it with ``ingest.emulators.kit.server``)."""
    return build_app(KEYUE_APP, config)


def build_keyue_app(args: argparse.Namespace) -> web.Application:
    """The app for parsed ``add_keyue_arguments`` flags."""
    return create_keyue_app(config_from_args(args))
