"""A strict local emulator of the VikingDB knowledge-base document API (Volcengine), which the official
SDKs (``vikingdb-python-sdk``, ``volcengine``) accept.

Emulated (wire names as in the seed documents and ``API-NOTES.md`` sections 1-2):

- ``GET /ping`` (a health check: answered without a signature, as the volcengine SDK's constructor needs)
- ``POST /api/knowledge/collection/create``, ``/collection/info`` (minimal)
- ``POST /api/knowledge/doc/add`` (``add_type`` ``tos`` or ``url``), ``/doc/info``, ``/doc/list``, ``/doc/delete``
- ``POST /api/knowledge/task/info`` (download tasks; test hooks create them)
- test hooks without auth or faults: ``GET /_emulator/files``, ``GET /_emulator/stats``,
  ``POST /_emulator/tasks``, ``GET /_emulator/attachments/{task_id}.zip``

Every ``/api/`` request must carry a valid Volcengine V4 signature (service ``air``, the emulator's
region), whichever header set the client signed; anything else is HTTP 401 ``{"code":1000001,
"message":"unauthorized"}`` (the reason is in the ``X-Emulator-Detail`` header, never a secret). Answers
use the envelope ``{"code","message","request_id","data"}`` with the documented codes and statuses.

``doc/add`` fetches the body while the request is open, streaming it to disk with its md5: from the
S3-compatible store given by ``--tos-endpoint`` (``tos_path`` = ``<bucket>/<key>``) or from a loopback
URL. As on the platform, a download problem does not fail the call: the document ends failed with the
documented ``failed_code``. Documents then progress to ``process_status`` 0 over ``--process-delay-ms``,
or end failed (``--fail-rate``). Re-adding a ``doc_id`` overwrites the document.

For ``add_type: tos`` the ``doc_id`` comes from the object's ``doc_id`` metadata, as documented; the
emulator falls back to the request's ``doc_id`` (S3 test stores such as moto drop metadata names with
an underscore) and only then generates one. ``GET /_emulator/files`` lists each stored document under
the path the client recorded in the object's ``source-path`` metadata (percent-encoded), else under its
``doc_name``; ``uploads`` counts the ``doc/add`` calls that stored it, except re-adds of a document whose
processing had failed (the platform's way to retry it), and ``adds`` counts them all.
"""

from __future__ import annotations

import argparse
import hmac

from aiohttp import web

from ingest.emulators.kit.app import EmulatorApp, build_app
from ingest.emulators.kit.common import ApiError
from ingest.emulators.kit.faults import FaultInjector
from ingest.emulators.viking.config import (
    FAILED_MESSAGES,
    VikingEmulatorConfig,
    add_viking_arguments,
    config_from_args,
)
from ingest.emulators.viking.handlers import (
    add_doc,
    add_doc_v2,
    collection_info,
    create_collection,
    delete_doc,
    doc_info,
    emulator_attachment,
    emulator_create_task,
    emulator_documents,
    emulator_files,
    list_docs,
    ping,
    task_info,
)
from ingest.emulators.viking.state import VIKING_STATE, VikingState, state_of
from ingest.emulators.viking.wire import (
    ALLOWED_COLLECTIONS,
    BODY,
    INTERNAL_ERROR,
    QUOTA_LIMITED,
    UNAUTHORIZED,
    envelope,
    invalid,
    read_signed_body,
)

# The one piece of client-side code an emulator uses: the Volcengine V4 signing *algorithm*, to check
# signatures. tests/test_viking_sdks.py verifies the official SDKs' signatures against this same code, so
# it is proven against the platform's own signers, not just against our client. Nothing else is shared.
from ingest.platforms.viking.signing import SignatureProblem, sha256_hex, verify

__all__ = [
    "FAILED_MESSAGES",
    "VIKING_APP",
    "VikingEmulatorConfig",
    "add_viking_arguments",
    "build_viking_app",
    "create_viking_app",
]


def _render(request: web.Request, exc: ApiError) -> web.Response:
    response = envelope(request, int(exc.code), exc.message, None, exc.http_status)
    response.headers.update(exc.headers)
    return response


async def _authenticate(request: web.Request) -> None:
    """Verify the V4 signature of every API request against the body as received."""
    body = await read_signed_body(request)
    request[BODY] = body
    config = state_of(request).config

    def secret_for(access_key: str) -> str | None:
        if hmac.compare_digest(access_key.encode(), config.access_key.encode()):
            return config.secret_key
        for ak, sk, collections in config.restricted_keys:
            if hmac.compare_digest(access_key.encode(), ak.encode()):
                request[ALLOWED_COLLECTIONS] = frozenset(collections)
                return sk
        return None

    try:
        verify(
            request.method,
            request.path,
            list(request.query.items()),
            request.headers.get,
            sha256_hex(body),
            secret_for=secret_for,
            region=config.region,
        )
    except SignatureProblem as exc:
        raise ApiError(401, str(UNAUTHORIZED), "unauthorized", headers={"X-Emulator-Detail": str(exc)}) from None


def _is_doc_add(request: web.Request) -> bool:
    return request.method == "POST" and request.path in ("/api/knowledge/doc/add", "/api/knowledge/doc/v2/add")


def _new_state(config: VikingEmulatorConfig, faults: FaultInjector) -> VikingState:
    state = VikingState(config.process_delay_ms, config.fail_rate, config.max_docs, config=config, faults=faults)
    state._rng.seed(None if config.seed is None else f"viking-docs-{config.seed}")
    return state


def _add_routes(app: web.Application, state: VikingState) -> None:
    app.router.add_get("/ping", ping, allow_head=False)
    app.router.add_post("/ping", ping)  # the vikingdb SDK sends every call as a POST
    app.router.add_post("/api/knowledge/collection/create", create_collection)
    app.router.add_post("/api/knowledge/collection/info", collection_info)
    app.router.add_post("/api/knowledge/doc/add", add_doc)
    app.router.add_post("/api/knowledge/doc/v2/add", add_doc_v2)
    app.router.add_post("/api/knowledge/doc/info", doc_info)
    app.router.add_post("/api/knowledge/doc/list", list_docs)
    app.router.add_post("/api/knowledge/doc/delete", delete_doc)
    app.router.add_post("/api/knowledge/task/info", task_info)
    app.router.add_post("/_emulator/tasks", emulator_create_task)
    app.router.add_get("/_emulator/attachments/{task_id}.zip", emulator_attachment, allow_head=False)


VIKING_APP: EmulatorApp[VikingEmulatorConfig, VikingState] = EmulatorApp(
    name="VikingDB",
    state_key=VIKING_STATE,
    new_state=_new_state,
    render_error=_render,
    refused=lambda status, reason: invalid(reason, status),
    server_error=lambda detail: ApiError(500, str(INTERNAL_ERROR), f"internal error ({detail})"),
    rate_limited=lambda: ApiError(429, str(QUOTA_LIMITED), "quota limit exceeded, please retry later"),
    authenticate=_authenticate,
    add_routes=_add_routes,
    emulator_files=emulator_files,
    emulator_documents=emulator_documents,
    resettable=_is_doc_add,
    # A health check: answered without a signature, as the volcengine SDK's constructor needs.
    public_paths=frozenset({"/ping"}),
)


def create_viking_app(config: VikingEmulatorConfig) -> web.Application:
    """The VikingDB emulator as an aiohttp application (run it with ``ingest.emulators.kit.server``)."""
    return build_app(VIKING_APP, config)


def build_viking_app(args: argparse.Namespace) -> web.Application:
    """The app for parsed ``add_viking_arguments`` flags."""
    return create_viking_app(config_from_args(args))
