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
import collections
import hmac
import importlib.util
import io
import json
import logging
import os
import random
import re
import threading
import uuid
import zipfile
from collections.abc import AsyncIterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from aiohttp import web
from aiohttp.typedefs import Handler

from ingest.emulators.kit import flags as _cli
from ingest.emulators.kit.common import ApiError, json_response, now_ms, read_body
from ingest.emulators.kit.common import short as _short
from ingest.emulators.kit.faults import Fault, FaultInjector, fault_settings, is_test_hook
from ingest.emulators.kit.stats import RequestCounter
from ingest.emulators.viking.fetch import (
    Fetched,
    FetchFailed,
    TosReader,
    fetch_url,
    is_loopback_url,
    source_path,
)
from ingest.emulators.viking.store import (
    INVALID_REQUEST,
    Collection,
    Doc,
    DocFate,
    NewDoc,
    ProcessStatus,
    VikingStore,
)
from ingest.errors import ConfigError
from ingest.platforms.viking.doctypes import DOC_TYPES, SIZE_LIMITS, doc_type_for
from ingest.platforms.viking.signing import SignatureProblem, sha256_hex, verify

__all__ = [
    "FAILED_MESSAGES",
    "VIKING_STATE",
    "VikingEmulatorConfig",
    "VikingState",
    "add_viking_arguments",
    "build_viking_app",
    "create_viking_app",
]

log = logging.getLogger(__name__)

UNAUTHORIZED = 1000001
INTERNAL_ERROR = 1000028
QUOTA_LIMITED = 1000029

#: ``failed_code`` values a document can end with, and their meaning (API-NOTES section 2, doc/info).
FAILED_MESSAGES = {
    10001: "download timeout",
    10002: "download failed",
    10003: "url verification failed",
    10005: "lark document access error",
    30001: "file over size limit",
    40004: "more than 10000 chunks",
    45002: "more than 200 pages",
}

_DOC_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_COLLECTION_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_FIELD_TYPES = {"string", "int64", "float32", "bool", "list<string>", "list<int64>"}
_KB_FIELDS = {"collection_name", "project", "resource_id"}
#: Objects one "directory" ``tos_path`` may add.
MAX_DIRECTORY_OBJECTS = 1000


# --- configuration ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VikingEmulatorConfig:
    """How to run the VikingDB emulator. Fault rates are fractions in [0, 1]."""

    data_dir: Path
    access_key: str
    secret_key: str
    #: The region requests must be signed for; ``None`` accepts any.
    region: str | None = "cn-beijing"
    #: Knowledge bases that exist from the start, in ``project``.
    collections: tuple[str, ...] = ()
    project: str = "default"
    #: The S3-compatible store ``add_type: tos`` reads from; ``None`` refuses tos adds.
    tos_endpoint: str | None = None
    #: Credentials for reading it (default: the access key pair above), and its region.
    tos_access_key: str | None = None
    tos_secret_key: str | None = None
    tos_region: str | None = None
    #: Time a document takes to be processed (and to be deleted).
    process_delay_ms: int = 200
    #: Fraction of documents that end failed, with a ``failed_code`` drawn from ``fail_codes``.
    fail_rate: float = 0.0
    fail_codes: tuple[int, ...] = tuple(FAILED_MESSAGES)
    #: Documents per knowledge base; one more is refused with 1001010 (the seed says 10000).
    max_docs: int = 10000
    latency_ms: int = 0
    error_rate: float = 0.0
    rate_limit: float | None = None
    #: Fraction of ``doc/add`` requests whose connection is dropped mid-body.
    reset_rate: float = 0.0
    seed: int | None = None

    def problems(self) -> list[str]:
        found: list[str] = []
        if not self.access_key or not self.secret_key:
            found.append("access_key and secret_key must not be empty")
        found.extend(
            f"{name} must be between 0 and 1, got {getattr(self, name)}"
            for name in ("fail_rate", "error_rate", "reset_rate")
            if not 0.0 <= getattr(self, name) <= 1.0
        )
        if self.process_delay_ms < 0 or self.latency_ms < 0:
            found.append("process_delay_ms and latency_ms must not be negative")
        if self.rate_limit is not None and not self.rate_limit > 0:
            found.append(f"rate_limit must be positive, got {self.rate_limit}")
        if self.max_docs < 1:
            found.append("max_docs must be at least 1")
        found.extend(
            f"fail code {code} is not a documented failed_code"
            for code in self.fail_codes
            if code not in FAILED_MESSAGES
        )
        found.extend(
            f"collection name {name!r} must start with a letter and hold 1-64 letters, digits or '_'"
            for name in self.collections
            if not _COLLECTION_NAME_RE.fullmatch(name)
        )
        if self.tos_endpoint is not None and not re.match(r"^https?://[^/\s]+", self.tos_endpoint):
            found.append(f"tos_endpoint {self.tos_endpoint!r} is not an http(s) URL")
        return found


# --- runtime state ----------------------------------------------------------------------------------------


@dataclass
class VikingState:
    """The running emulator's mutable state, at ``app[VIKING_STATE]``.

    Tests may change ``process_delay_ms``, ``fail_rate``, ``max_docs`` and ``faults.settings`` on a
    running app.
    """

    config: VikingEmulatorConfig
    process_delay_ms: int
    fail_rate: float
    max_docs: int
    faults: FaultInjector
    #: Requests received per ``"<METHOD> <route>"`` (test hooks excluded).
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    _store: VikingStore | None = None
    tos: TosReader | None = None
    http: aiohttp.ClientSession | None = None
    _rng: random.Random = field(default_factory=random.Random)
    _rng_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def store(self) -> VikingStore:
        if self._store is None:
            raise RuntimeError("the VikingDB emulator's store is only open while the app runs")
        return self._store

    def fate(self) -> DocFate:
        """How a newly added document's processing ends (seeded, so sequential runs repeat)."""
        with self._rng_lock:
            if self.fail_rate > 0 and self._rng.random() < self.fail_rate:
                code = self._rng.choice(self.config.fail_codes)
                return DocFate(self.process_delay_ms, code, f"{FAILED_MESSAGES[code]} (injected fault)")
        return DocFate(self.process_delay_ms)


VIKING_STATE: web.AppKey[VikingState] = web.AppKey("viking_state", VikingState)


def _state(request: web.Request) -> VikingState:
    return request.app[VIKING_STATE]


# --- envelope ---------------------------------------------------------------------------------------------


#: Per-request storage: the request id (one per request, in the body and X-Tt-Logid) and the raw body.
_REQUEST_ID: web.RequestKey[str] = web.RequestKey("viking_request_id", str)
_BODY: web.RequestKey[bytes] = web.RequestKey("viking_body", bytes)


def _request_id(request: web.Request) -> str:
    if _REQUEST_ID in request:
        return request[_REQUEST_ID]
    # Shaped like the platform's: "02", a millisecond timestamp, then hex.
    value = f"02{now_ms()}{uuid.uuid4().hex}{uuid.uuid4().hex[:6]}"
    request[_REQUEST_ID] = value
    return value


def _envelope(request: web.Request, code: int, message: str, data: Any, status: int = 200) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": _request_id(request)}
    if data is not None:
        body["data"] = data
    # The vikingdb SDK reads the request id from X-Tt-Logid.
    return json_response(body, status=status, headers={"X-Tt-Logid": _request_id(request)})


def _ok(request: web.Request, data: Any = None) -> web.Response:
    return _envelope(request, 0, "success", data)


def _invalid(reason: str) -> ApiError:
    return ApiError(400, str(INVALID_REQUEST), f"invalid request:{reason}")


def _fault_response(request: web.Request, fault: Fault) -> web.StreamResponse:
    if fault is Fault.RATE_LIMITED:
        return _envelope(request, QUOTA_LIMITED, "quota limit exceeded, please retry later", None, 429)
    return _envelope(request, INTERNAL_ERROR, "internal error (injected fault)", None, 500)


# --- middlewares ------------------------------------------------------------------------------------------


@web.middleware
async def _envelope_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error, including aiohttp's own 404/405, in the platform's envelope."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = _envelope(request, int(exc.code), exc.message, None, exc.http_status)
        response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 405:
            reason = f"method {request.method} is not allowed on {request.path}"
        elif exc.status == 404:
            reason = f"no such API: {request.method} {request.path}"
        else:
            reason = exc.reason
        return _envelope(request, INVALID_REQUEST, f"invalid request:{reason}", None, exc.status)
    except ConnectionError:
        log.debug("VikingDB emulator: client disconnected during %s %s", request.method, request.path)
        return _envelope(request, INVALID_REQUEST, "invalid request:connection lost", None, 400)
    except Exception as exc:
        log.exception("VikingDB emulator: unhandled error on %s %s", request.method, request.path)
        return _envelope(request, INTERNAL_ERROR, f"internal error ({type(exc).__name__})", None, 500)


async def _read_body(request: web.Request) -> bytes:
    """The raw body, which the signature covers, read through the cap; refused in VikingDB's words."""
    try:
        return await read_body(request, code=str(INVALID_REQUEST))
    except ApiError as exc:
        raise _invalid(exc.message) from None


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Verify the V4 signature of every API request against the body as received."""
    if is_test_hook(request) or request.path == "/ping":
        return await handler(request)
    body = await _read_body(request)
    request[_BODY] = body
    config = _state(request).config

    def secret_for(access_key: str) -> str | None:
        return config.secret_key if hmac.compare_digest(access_key.encode(), config.access_key.encode()) else None

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
    return await handler(request)


# --- request parsing --------------------------------------------------------------------------------------


def _json_body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    raw = request[_BODY] if _BODY in request else b""
    if not raw.strip():
        raise _invalid("request body is empty; send a JSON object")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid(f"request body is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(value, dict):
        raise _invalid("request body must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _invalid(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    return value


def _string(body: Mapping[str, Any], name: str, *, required: bool = False, max_len: int | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _invalid(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    if required and not value:
        raise _invalid(f"{name} must not be empty")
    if max_len is not None and len(value) > max_len:
        raise _invalid(f"{name} must be at most {max_len} characters")
    return value


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise _invalid(f"{name} must be true or false")
    return value


def _int(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{name} must be an integer")
    return value


def _project(body: Mapping[str, Any]) -> str:
    # The seed's own example sends "project": "" for the default project.
    return _string(body, "project", max_len=256) or "default"


async def _collection(request: web.Request, body: Mapping[str, Any]) -> Collection:
    """The knowledge base named by ``resource_id``, or ``collection_name`` + ``project``."""
    resource_id = _string(body, "resource_id", max_len=128)
    name = _string(body, "collection_name", max_len=64)
    if not resource_id and not name:
        raise _invalid("collection_name or resource_id is required")
    store = _state(request).store
    project = _project(body)
    return await anyio.to_thread.run_sync(lambda: store.collection(resource_id=resource_id, project=project, name=name))


def _doc_id(value: Any, name: str = "doc_id") -> str:
    if not isinstance(value, str) or not _DOC_ID_RE.fullmatch(value):
        shown = _short(value) if isinstance(value, str) else type(value).__name__
        raise _invalid(f"{name} must be 1-128 letters, digits or '_' and start with a letter or '_', got {shown!r}")
    return value


def _meta(body: Mapping[str, Any]) -> str:
    """``meta``: an array (or its JSON string) of ``{field_name, field_type, field_value}``; as a JSON string."""
    value = body.get("meta")
    if value is None:
        return "[]"  # never "": the volcengine SDK json-decodes any meta it gets
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _invalid("meta is a string but not a JSON array") from None
    if not isinstance(value, list):
        raise _invalid("meta must be an array of {field_name, field_type, field_value}")
    for index, item in enumerate(value):
        where = f"meta[{index}]"
        if not isinstance(item, dict) or set(item) - {"field_name", "field_type", "field_value"}:
            raise _invalid(f"{where} must be an object with field_name, field_type and field_value")
        name, kind, field_value = item.get("field_name"), item.get("field_type"), item.get("field_value")
        if not isinstance(name, str) or not name.strip():
            raise _invalid(f"{where}.field_name must be a non-empty string")
        if kind not in _FIELD_TYPES:
            raise _invalid(f"{where}.field_type must be one of {', '.join(sorted(_FIELD_TYPES))}")
        if not _value_matches(str(kind), field_value):
            raise _invalid(f"{where}.field_value does not match field_type {kind}")
    return json.dumps(value, ensure_ascii=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _value_matches(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "int64":
        return _is_int(value)
    if kind == "float32":
        return _is_int(value) or isinstance(value, float)
    if kind == "bool":
        return isinstance(value, bool)
    element = _is_int if kind == "list<int64>" else (lambda v: isinstance(v, str))
    return isinstance(value, list) and all(element(v) for v in value)


@dataclass(frozen=True)
class _Dedup:
    content: bool = False
    name: bool = False
    auto_skip: bool = False


def _dedup(body: Mapping[str, Any]) -> _Dedup | None:
    value = body.get("dedup")
    if value is None:
        return None
    allowed = {"content_dedup", "doc_name_dedup", "auto_skip"}
    if not isinstance(value, dict) or set(value) - allowed:
        raise _invalid("dedup must be an object with content_dedup, doc_name_dedup and auto_skip")
    return _Dedup(_bool(value, "content_dedup"), _bool(value, "doc_name_dedup"), _bool(value, "auto_skip"))


def _check_optional_add_fields(body: Mapping[str, Any]) -> None:
    _string(body, "description", max_len=4000)
    _string(body, "strategy_resource_id", max_len=256)
    prefix = body.get("path_prefix")
    if prefix is not None and not (
        isinstance(prefix, str) or (isinstance(prefix, list) and all(isinstance(p, str) for p in prefix))
    ):
        raise _invalid("path_prefix must be a string or an array of strings")


# --- ping and collections ---------------------------------------------------------------------------------


async def ping(request: web.Request) -> web.Response:
    return _ok(request)


async def create_collection(request: web.Request) -> web.Response:
    allowed = {
        "name", "description", "project", "version", "data_type", "index", "preprocessing", "table_config",
        "doc_summary_config",
    }  # fmt: skip
    body = _json_body(request, allowed)
    name = _string(body, "name", required=True)
    assert name is not None
    if not _COLLECTION_NAME_RE.fullmatch(name):
        raise _invalid("name must start with a letter and hold 1-64 letters, digits or '_'")
    description = _string(body, "description", max_len=65535) or ""
    version = body.get("version", 4)
    if version not in (2, 4):
        raise _invalid("version must be 2 (standard) or 4 (ultimate)")
    data_type = _string(body, "data_type") or "unstructured_data"
    if data_type not in ("unstructured_data", "structured_data"):
        raise _invalid("data_type must be unstructured_data or structured_data")
    for key in ("index", "preprocessing", "table_config", "doc_summary_config"):
        if key in body and not isinstance(body[key], dict):
            raise _invalid(f"{key} must be an object")
    settings: dict[str, Any] = {
        k: body[k] for k in ("index", "preprocessing", "table_config", "doc_summary_config") if k in body
    }
    settings.update(version=version, data_type=data_type)
    project = _project(body)
    store = _state(request).store
    created = await anyio.to_thread.run_sync(lambda: store.create_collection(project, name, description, settings))
    return _ok(
        request, {"collection_name": created.name, "project": created.project, "resource_id": created.resource_id}
    )


async def collection_info(request: web.Request) -> web.Response:
    body = _json_body(request, {"name", "project", "resource_id"})
    resource_id = _string(body, "resource_id", max_len=128)
    name = _string(body, "name", max_len=64)
    if not resource_id and not name:
        raise _invalid("name or resource_id is required")
    state = _state(request)
    project = _project(body)
    found = await anyio.to_thread.run_sync(
        lambda: state.store.collection(resource_id=resource_id, project=project, name=name)
    )
    count = await anyio.to_thread.run_sync(state.store.doc_count, found.resource_id)
    index = found.settings.get("index") or {}
    fields = (index.get("index_config") or {}).get("fields") or []
    return _ok(
        request,
        {
            "collection_name": found.name,
            "description": found.description,
            "project": found.project,
            "resource_id": found.resource_id,
            "doc_num": count,
            "create_time": found.created_ms // 1000,
            "update_time": found.updated_ms // 1000,
            "creator": "emulator",
            "data_type": found.settings.get("data_type", "unstructured_data"),
            "preprocessing": found.settings.get("preprocessing") or {},
            # The volcengine SDK reads fields from pipeline_list[0].index_list[0].index_config.
            "pipeline_list": [{"index_list": [{"index_config": {"fields": fields}}]}],
        },
    )


# --- documents --------------------------------------------------------------------------------------------


_ADD_FIELDS = _KB_FIELDS | {
    "add_type", "doc_id", "doc_name", "doc_type", "description", "tos_path", "url", "lark_file", "meta", "dedup",
    "path_prefix", "strategy_resource_id",
}  # fmt: skip


@dataclass(frozen=True)
class _Source:
    """One document to fetch: where from, and the names the request or the object gives it."""

    add_type: str
    bucket: str = ""
    key: str = ""
    url: str = ""
    doc_id: str | None = None
    doc_name: str | None = None
    doc_type: str | None = None


def _parse_add(body: Mapping[str, Any]) -> _Source:
    add_type = _string(body, "add_type", required=True)
    if add_type == "url":
        doc_id = _doc_id(body.get("doc_id"))
        doc_name = _string(body, "doc_name", required=True, max_len=256)
        doc_type = _string(body, "doc_type", required=True)
        if doc_type not in DOC_TYPES:
            raise _invalid(f"doc_type must be one of {', '.join(sorted(DOC_TYPES))}")
        url = _string(body, "url", required=True, max_len=8192)
        assert url is not None
        if not re.match(r"^https?://", url):
            raise _invalid("url must be an http(s) URL")
        if not is_loopback_url(url):
            raise _invalid("the emulator downloads only from loopback URLs (127.0.0.1, ::1, localhost)")
        return _Source("url", url=url, doc_id=doc_id, doc_name=doc_name, doc_type=doc_type)
    if add_type == "tos":
        tos_path = _string(body, "tos_path", required=True, max_len=2048)
        assert tos_path is not None
        bucket, _, key = tos_path.partition("/")
        if not bucket or not key:
            raise _invalid("tos_path must be <bucket>/<key> or <bucket>/<directory>/")
        # doc_id, doc_name and doc_type are ignored for tos (they come from the object), but must be sane.
        given_id = body.get("doc_id")
        return _Source(
            "tos", bucket=bucket, key=key, doc_id=_doc_id(given_id) if given_id is not None else None,
            doc_name=_string(body, "doc_name", max_len=256), doc_type=_string(body, "doc_type"),
        )  # fmt: skip
    if add_type == "lark":
        raise _invalid("add_type lark (Feishu documents) is not emulated")
    raise _invalid("add_type must be one of url, tos, lark")


async def add_doc(request: web.Request) -> web.Response:
    body = _json_body(request, _ADD_FIELDS)
    kb = await _collection(request, body)
    source = _parse_add(body)
    meta = _meta(body)
    dedup = _dedup(body)
    _check_optional_add_fields(body)
    description = _string(body, "description") or ""
    state = _state(request)
    if source.add_type == "tos":
        if state.tos is None:
            raise _invalid("add_type tos needs the emulator started with --tos-endpoint")
        if source.key.endswith("/"):
            keys = await state.tos.list_keys(source.bucket, source.key, limit=MAX_DIRECTORY_OBJECTS)
            added = [
                await _add_one(state, kb, _Source("tos", source.bucket, k), meta, description, dedup) for k in keys
            ]
            return _ok(request, _add_reply(kb, "", {"skip": False, "same_doc_ids": []}, len(added)))
    doc_id, dedup_info = await _add_one(state, kb, source, meta, description, dedup)
    return _ok(request, _add_reply(kb, doc_id, dedup_info))


def _add_reply(kb: Collection, doc_id: str, dedup_info: dict[str, Any], count: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "collection_name": kb.name,
        "resource_id": kb.resource_id,
        "project": kb.project,
        "doc_id": doc_id,
        "dedup_info": dedup_info,
    }
    if count is not None:
        data["more_info"] = f"{count} documents added from the directory"
    return data


async def _fetch(state: VikingState, source: _Source, dest: Path, limit: int | None) -> Fetched:
    if source.add_type == "url":
        assert state.http is not None
        return await fetch_url(state.http, source.url, dest, limit=limit)
    assert state.tos is not None
    return await state.tos.fetch(source.bucket, source.key, dest, limit=limit)


async def _add_one(
    state: VikingState, kb: Collection, source: _Source, meta: str, description: str, dedup: _Dedup | None
) -> tuple[str, dict[str, Any]]:
    """Fetch one document and record it; returns its doc_id and the dedup verdict."""
    name = source.doc_name if source.add_type == "url" else source.key.rsplit("/", 1)[-1]
    doc_type = source.doc_type if source.add_type == "url" else doc_type_for(source.key)
    if not doc_type or not name:
        raise _invalid(f"cannot add {_short(source.key)!r}: unsupported file type")
    assert name is not None
    store = state.store
    staged = store.new_staging_path()
    fetched, failure = Fetched(), None
    try:
        fetched = await _fetch(state, source, staged, SIZE_LIMITS.get(doc_type))
    except FetchFailed as exc:
        failure = exc
    doc_id = source.doc_id if source.add_type == "url" else _tos_doc_id(fetched, source)
    assert doc_id is not None
    same = await anyio.to_thread.run_sync(lambda: _duplicates(store, kb, doc_id, name, fetched, dedup))
    dedup_info = {"skip": bool(same and dedup and dedup.auto_skip), "same_doc_ids": same}
    if dedup_info["skip"]:
        with suppress(FileNotFoundError):
            staged.unlink()
        return doc_id, dedup_info
    fate = state.fate()
    if failure is not None:
        fate = DocFate(state.process_delay_ms, failure.code, failure.message)
    new = NewDoc(
        doc_id=doc_id,
        doc_name=name,
        doc_type=doc_type,
        add_type=source.add_type,
        tos_path=f"{source.bucket}/{source.key}" if source.add_type == "tos" else "",
        url=source.url,
        meta=meta,
        description=description,
        path=source_path(fetched.metadata) or name,
        size=fetched.size,
        md5=fetched.md5,
        staged=None if failure is not None else staged,
    )
    if failure is not None:
        with suppress(FileNotFoundError):
            staged.unlink()
    max_docs = state.max_docs
    await anyio.to_thread.run_sync(lambda: store.add_doc(kb.resource_id, new, fate, max_docs=max_docs))
    return doc_id, dedup_info


def _tos_doc_id(fetched: Fetched, source: _Source) -> str:
    for key in ("doc_id", "doc-id"):
        value = fetched.metadata.get(key)
        if value and _DOC_ID_RE.fullmatch(value):
            return value
    if source.doc_id:
        return source.doc_id
    return f"_sys_auto_gen_doc_id-{random.SystemRandom().getrandbits(62)}"


def _duplicates(
    store: VikingStore, kb: Collection, doc_id: str, name: str, fetched: Fetched, dedup: _Dedup | None
) -> list[str]:
    if dedup is None or not (dedup.content or dedup.name):
        return []
    return [
        d.doc_id
        for d in store.docs(kb.resource_id, None)
        if d.doc_id != doc_id
        and ((dedup.content and d.stored and d.md5 == fetched.md5) or (dedup.name and d.doc_name == name))
    ]


def _doc_json(kb: Collection, doc: Doc, now: int, *, token_usage: bool) -> dict[str, Any]:
    status = doc.status(now)
    done = status is ProcessStatus.DONE
    failed = status is ProcessStatus.FAILED
    data: dict[str, Any] = {
        "collection_name": kb.name,
        "doc_name": doc.doc_name,
        "doc_id": doc.doc_id,
        "doc_hash": doc.md5,
        "add_type": doc.add_type,
        "doc_type": doc.doc_type,
        "description": doc.description,
        "create_time": doc.created_ms,
        "added_by": "emulator",
        "update_time": doc.updated_ms,
        "url": doc.url,
        "tos_path": doc.tos_path,
        "point_num": (doc.size // 500 + (1 if doc.size else 0)) if done else 0,
        "status": {
            "process_status": int(status),
            "failed_code": doc.failed_code if failed else 0,
            "failed_msg": doc.failed_msg if failed else "",
        },
        "title": doc.doc_name.rsplit(".", 1)[0],
        "source": doc.add_type,
        "doc_premium_status": {"doc_summary_status_code": 0},
        "meta": doc.meta,
        "labels": {},
        "doc_size": doc.size,
        "doc_summary": "",
        "brief_summary": "",
    }
    if token_usage:
        data["total_tokens"] = doc.size // 4 if done else 0
        data["doc_summary_tokens"] = 0
    return data


async def doc_info(request: web.Request) -> web.Response:
    body = _json_body(request, _KB_FIELDS | {"doc_id", "return_token_usage", "pipeline_name"})
    kb = await _collection(request, body)
    doc_id = _string(body, "doc_id", required=True, max_len=256)
    assert doc_id is not None
    token_usage = _bool(body, "return_token_usage")
    _string(body, "pipeline_name")
    doc = await anyio.to_thread.run_sync(_state(request).store.doc, kb.resource_id, doc_id)
    return _ok(request, _doc_json(kb, doc, now_ms(), token_usage=token_usage))


def _list_filter(body: Mapping[str, Any]) -> list[str] | None:
    value = body.get("filter")
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"doc_id_list"}:
        raise _invalid("filter must be an object with doc_id_list")
    ids = value.get("doc_id_list")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise _invalid("filter.doc_id_list must be an array of strings")
    return ids


def _list_doc_types(body: Mapping[str, Any]) -> set[str] | None:
    value = body.get("doc_type")
    if value is None or value == "":
        return None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v in DOC_TYPES for v in values):
        raise _invalid(f"doc_type must be a doc type or an array of them: {', '.join(sorted(DOC_TYPES))}")
    return set(values)


async def list_docs(request: web.Request) -> web.Response:
    allowed = _KB_FIELDS | {"offset", "limit", "doc_type", "filter", "return_token_usage", "pipeline_name", "detailed"}
    body = _json_body(request, allowed)
    kb = await _collection(request, body)
    offset = _int(body, "offset", 0)
    limit = _int(body, "limit", -1)
    if offset < 0:
        raise _invalid("offset must not be negative")
    if offset >= 100 and "limit" not in body:
        raise _invalid("limit is required when offset is 100 or more")
    if limit != -1 and not 1 <= limit <= 100:
        raise _invalid("limit must be -1 (all) or between 1 and 100")
    ids = _list_filter(body)
    types = _list_doc_types(body)
    token_usage = _bool(body, "return_token_usage")
    _bool(body, "detailed")
    _string(body, "pipeline_name")
    docs = await anyio.to_thread.run_sync(_state(request).store.docs, kb.resource_id, ids)
    docs = [d for d in docs if types is None or d.doc_type in types]
    page = docs[offset:] if limit == -1 else docs[offset : offset + limit]
    now = now_ms()
    return _ok(
        request,
        {
            "collection_name": kb.name,
            "total_num": len(docs),
            "count": len(page),
            "doc_list": [_doc_json(kb, d, now, token_usage=token_usage) for d in page],
        },
    )


async def delete_doc(request: web.Request) -> web.Response:
    body = _json_body(request, _KB_FIELDS | {"doc_id"})
    kb = await _collection(request, body)
    doc_id = _string(body, "doc_id", required=True, max_len=256)
    assert doc_id is not None
    state = _state(request)
    await anyio.to_thread.run_sync(state.store.delete_doc, kb.resource_id, doc_id, state.process_delay_ms)
    return _ok(request)


# --- download tasks ---------------------------------------------------------------------------------------


async def task_info(request: web.Request) -> web.Response:
    body = _json_body(request, {"task_id", "pipeline_name"})
    task_id = _string(body, "task_id", required=True, max_len=128)
    assert task_id is not None
    _string(body, "pipeline_name")
    task = await anyio.to_thread.run_sync(_state(request).store.task, task_id)
    if task is None:
        raise _invalid("task not exist")
    now = now_ms()
    span = max(1, task.done_ms - task.created_ms)
    if now < task.done_ms:
        data = {
            "status": "running",
            "percentage": min(99, (now - task.created_ms) * 100 // span),
            "attachment_link": "",
        }
    elif task.fails:
        data = {"status": "fail", "percentage": 100, "attachment_link": ""}
    else:
        link = f"{request.url.origin()}/_emulator/attachments/{task.task_id}.zip"
        data = {"status": "success", "percentage": 100, "attachment_link": link}
    return _ok(request, data)


# --- test hooks -------------------------------------------------------------------------------------------


async def emulator_files(request: web.Request) -> web.Response:
    """Every stored document (not enveloped): ``[{path, size, md5, uploads, adds, doc_id, collection, …}]``."""
    store = _state(request).store
    docs = await anyio.to_thread.run_sync(store.stored_docs)
    kbs = await anyio.to_thread.run_sync(store.collections)
    return json_response(
        [
            {
                "path": d.path,
                "size": d.size,
                "md5": d.md5,
                "uploads": d.uploads,
                "adds": d.adds,
                "doc_id": d.doc_id,
                "collection": kbs[d.resource_id].name if d.resource_id in kbs else "",
                "project": kbs[d.resource_id].project if d.resource_id in kbs else "",
                "resource_id": d.resource_id,
            }
            for d in docs
        ]
    )


async def emulator_create_task(request: web.Request) -> web.Response:
    """Create a download task over a knowledge base: ``{collection_name|resource_id, project?, fail?}``."""
    request[_BODY] = await _read_body(request)
    body = _json_body(request, _KB_FIELDS | {"fail"})
    kb = await _collection(request, body)
    state = _state(request)
    fails = _bool(body, "fail")
    task = await anyio.to_thread.run_sync(
        lambda: state.store.create_task(kb.resource_id, state.process_delay_ms, fails=fails)
    )
    return json_response({"task_id": task.task_id})


async def emulator_attachment(request: web.Request) -> web.Response:
    """The finished task's attachment: a zip holding ``docs.jsonl``, one line per document."""
    store = _state(request).store
    task = await anyio.to_thread.run_sync(store.task, request.match_info["task_id"])
    if task is None or task.fails or now_ms() < task.done_ms:
        raise web.HTTPNotFound()
    docs = await anyio.to_thread.run_sync(store.docs, task.resource_id, None)
    lines = "".join(
        json.dumps({"doc_id": d.doc_id, "doc_name": d.doc_name, "size": d.size, "md5": d.md5}, ensure_ascii=False)
        + "\n"
        for d in docs
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("docs.jsonl", lines)
    return web.Response(body=buffer.getvalue(), content_type="application/zip")


# --- the app ----------------------------------------------------------------------------------------------


def _is_doc_add(request: web.Request) -> bool:
    return request.method == "POST" and request.path == "/api/knowledge/doc/add"


async def _open_resources(app: web.Application) -> AsyncIterator[None]:
    state = app[VIKING_STATE]
    config = state.config
    store = await anyio.to_thread.run_sync(VikingStore, config.data_dir)
    try:
        await anyio.to_thread.run_sync(store.purge)
        for name in config.collections:
            await anyio.to_thread.run_sync(store.ensure_collection, config.project, name)
        timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_read=120)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            state.http = http
            state._store = store
            if config.tos_endpoint is None:
                yield
            else:
                reader = TosReader(
                    config.tos_endpoint,
                    access_key=config.tos_access_key or config.access_key,
                    secret_key=config.tos_secret_key or config.secret_key,
                    region=config.tos_region or config.region or "cn-beijing",
                )
                async with reader:
                    state.tos = reader
                    yield
    finally:
        state._store = state.tos = state.http = None
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(store.close)


def create_viking_app(config: VikingEmulatorConfig) -> web.Application:
    """The VikingDB emulator as an aiohttp application (run it with ``ingest.emulators.kit.server``)."""
    problems = config.problems()
    if problems:
        raise ValueError("invalid VikingDB emulator config: " + "; ".join(problems))
    config.data_dir.mkdir(parents=True, exist_ok=True)
    faults = FaultInjector(fault_settings(config), _fault_response, seed=config.seed, resettable=_is_doc_add)
    state = VikingState(config, config.process_delay_ms, config.fail_rate, config.max_docs, faults)
    state._rng.seed(None if config.seed is None else f"viking-docs-{config.seed}")
    requests = RequestCounter(state.requests)
    app = web.Application(middlewares=[requests.middleware, _envelope_errors, faults.middleware, _authenticate])
    app[VIKING_STATE] = state
    app.cleanup_ctx.append(_open_resources)
    app.router.add_get("/ping", ping, allow_head=False)
    app.router.add_post("/ping", ping)  # the vikingdb SDK sends every call as a POST
    app.router.add_post("/api/knowledge/collection/create", create_collection)
    app.router.add_post("/api/knowledge/collection/info", collection_info)
    app.router.add_post("/api/knowledge/doc/add", add_doc)
    app.router.add_post("/api/knowledge/doc/info", doc_info)
    app.router.add_post("/api/knowledge/doc/list", list_docs)
    app.router.add_post("/api/knowledge/doc/delete", delete_doc)
    app.router.add_post("/api/knowledge/task/info", task_info)
    app.router.add_get("/_emulator/files", emulator_files, allow_head=False)
    app.router.add_get("/_emulator/stats", requests.stats, allow_head=False)
    app.router.add_post("/_emulator/tasks", emulator_create_task)
    app.router.add_get("/_emulator/attachments/{task_id}.zip", emulator_attachment, allow_head=False)
    return app


# --- command line (``ingest serve viking``) ---------------------------------------------------------------


def _collection_name(text: str) -> str:
    if not _COLLECTION_NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"collection name must start with a letter and hold 1-64 letters, digits or '_', got {text!r}"
        )
    return text


def _fail_codes(text: str) -> tuple[int, ...]:
    try:
        codes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated failed_code numbers, got {text!r}") from None
    unknown = [code for code in codes if code not in FAILED_MESSAGES]
    if unknown or not codes:
        known = ", ".join(str(c) for c in FAILED_MESSAGES)
        raise argparse.ArgumentTypeError(f"failed codes must be among {known}")
    return codes


def _url(text: str) -> str:
    if not re.match(r"^https?://[^/\s]+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL; write e.g. http://127.0.0.1:9000")
    return text.rstrip("/")


def add_viking_arguments(parser: argparse.ArgumentParser) -> None:
    """The VikingDB emulator's flags (``--host``/``--port`` are the CLI's)."""
    env_ak, env_sk = os.environ.get("VOLC_ACCESSKEY"), os.environ.get("VOLC_SECRETKEY")
    parser.add_argument(
        "--data-dir", type=Path, required=True, metavar="PATH",
        help="directory for documents and the emulator's state; reuse it to keep state across restarts",
    )  # fmt: skip
    parser.add_argument(
        "--access-key", default=env_ak, required=env_ak is None, metavar="AK",
        help="the access key clients sign with (default: $VOLC_ACCESSKEY)",
    )  # fmt: skip
    parser.add_argument(
        "--secret-key", default=env_sk, required=env_sk is None, metavar="SK",
        help="its secret key (default: $VOLC_SECRETKEY)",
    )  # fmt: skip
    parser.add_argument(
        "--region", default="cn-beijing", metavar="REGION",
        help="the region requests must be signed for (default: cn-beijing); 'any' accepts every region",
    )  # fmt: skip
    parser.add_argument(
        "--collection", dest="collections", action="append", type=_collection_name, default=[], metavar="NAME",
        help="create this knowledge base at start-up (repeatable), e.g. --collection kb1",
    )  # fmt: skip
    parser.add_argument(
        "--project", default="default", metavar="NAME", help="project of the --collection knowledge bases"
    )
    parser.add_argument(
        "--tos-endpoint", type=_url, default=None, metavar="URL",
        help="S3-compatible store that add_type tos reads <bucket>/<key> from, e.g. http://127.0.0.1:9000",
    )  # fmt: skip
    parser.add_argument("--tos-access-key", default=None, metavar="AK", help="its access key (default: --access-key)")
    parser.add_argument("--tos-secret-key", default=None, metavar="SK", help="its secret key (default: --secret-key)")
    parser.add_argument("--tos-region", default=None, metavar="REGION", help="its region (default: --region)")
    parser.add_argument(
        "--process-delay-ms", type=_cli.non_negative_int, default=200, metavar="N",
        help="milliseconds a document takes to be processed or deleted (default: 200)",
    )  # fmt: skip
    parser.add_argument(
        "--fail-rate", type=_cli.fraction, default=0.0, metavar="F",
        help="fraction of documents that end failed (process_status 1), 0-1 (default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--fail-codes", type=_fail_codes, default=tuple(FAILED_MESSAGES), metavar="LIST",
        help="failed_code values injected failures draw from, e.g. 10002,30001 (default: all documented)",
    )  # fmt: skip
    parser.add_argument(
        "--max-docs", type=_cli.positive_int, default=10000, metavar="N",
        help="documents per knowledge base before doc/add answers 1001010 (default: 10000)",
    )  # fmt: skip
    _cli.add_fault_arguments(
        parser,
        server_error="500 with code 1000028",
        rate_limited="429 with code 1000029",
        resettable="doc/add requests",
    )


def build_viking_app(args: argparse.Namespace) -> web.Application:
    """The app for parsed ``add_viking_arguments`` flags."""
    if args.tos_endpoint is not None and importlib.util.find_spec("aiobotocore") is None:
        raise ConfigError("--tos-endpoint needs the S3 client aiobotocore: pip install 'ingest[viking]'")
    config = VikingEmulatorConfig(
        data_dir=args.data_dir,
        access_key=args.access_key,
        secret_key=args.secret_key,
        region=None if args.region == "any" else args.region,
        collections=tuple(args.collections),
        project=args.project,
        tos_endpoint=args.tos_endpoint,
        tos_access_key=args.tos_access_key,
        tos_secret_key=args.tos_secret_key,
        tos_region=args.tos_region,
        process_delay_ms=args.process_delay_ms,
        fail_rate=args.fail_rate,
        fail_codes=args.fail_codes,
        max_docs=args.max_docs,
        **_cli.fault_options(args),
    )
    return create_viking_app(config)
