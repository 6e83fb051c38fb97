"""VikingDB emulator: the handlers of the knowledge-base API and the strict parsing of their bodies.

Every handler reads the body the signature check already read (``wire.BODY``): the JSON object must
hold only the documented fields. ``doc/add`` fetches the document while the request is open, from the
S3-compatible store (``tos``) or a loopback URL, as ``fetch`` does it.
"""

from __future__ import annotations

import io
import json
import random
import re
import zipfile
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
from aiohttp import web

from ingest.emulators.kit.common import ApiError, json_response, now_ms
from ingest.emulators.kit.common import short as _short
from ingest.emulators.viking.config import COLLECTION_NAME_RE
from ingest.emulators.viking.doctypes import DOC_TYPES, doc_type_of, size_limit
from ingest.emulators.viking.fetch import Fetched, FetchFailed, fetch_url, is_loopback_url, source_path
from ingest.emulators.viking.state import VikingState, state_of
from ingest.emulators.viking.store import Collection, Doc, DocFate, NewDoc, ProcessStatus, VikingStore
from ingest.emulators.viking.wire import ALLOWED_COLLECTIONS, BODY, NO_PERMISSION, invalid, ok, read_signed_body

__all__ = [
    "add_doc",
    "add_doc_v2",
    "collection_info",
    "create_collection",
    "delete_doc",
    "doc_info",
    "emulator_attachment",
    "emulator_create_task",
    "emulator_documents",
    "emulator_files",
    "list_docs",
    "ping",
    "task_info",
]

_DOC_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_FIELD_TYPES = {"string", "int64", "float32", "bool", "list<string>", "list<int64>"}
_KB_FIELDS = {"collection_name", "project", "resource_id"}
#: Objects one "directory" ``tos_path`` may add.
MAX_DIRECTORY_OBJECTS = 1000


# --- request parsing --------------------------------------------------------------------------------------


def json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words (never a Python type name)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _json_body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    # Every API in the seed sends "Content-Type: application/json"; anything else is refused as invalid
    # (the test hooks, which are not the platform's, take any).
    if request.path.startswith("/api/") and request.content_type != "application/json":
        raise invalid(f"Content-Type must be application/json, not {_short(request.content_type or 'none')!r}")
    raw = request[BODY] if BODY in request else b""
    if not raw.strip():
        raise invalid("request body is empty; send a JSON object")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise invalid("request body is not valid JSON") from None
    except RecursionError:
        raise invalid("request body is nested too deeply") from None
    if not isinstance(value, dict):
        raise invalid("request body must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise invalid(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    return value


def _string(body: Mapping[str, Any], name: str, *, required: bool = False, max_len: int | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string, not {json_kind(value)}")
    if required and not value:
        raise invalid(f"{name} must not be empty")
    if max_len is not None and len(value) > max_len:
        raise invalid(f"{name} must be at most {max_len} characters")
    return value


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise invalid(f"{name} must be true or false")
    return value


def _int(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer")
    return value


def _project(body: Mapping[str, Any]) -> str:
    # The seed's own example sends "project": "" for the default project.
    return _string(body, "project", max_len=256) or "default"


async def _collection(request: web.Request, body: Mapping[str, Any]) -> Collection:
    """The knowledge base named by ``resource_id``, or ``collection_name`` + ``project``."""
    resource_id = _string(body, "resource_id", max_len=128)
    name = _string(body, "collection_name", max_len=64)
    if not resource_id and not name:
        raise invalid("collection_name or resource_id is required")
    store = state_of(request).store
    project = _project(body)
    found = await anyio.to_thread.run_sync(
        lambda: store.collection(resource_id=resource_id, project=project, name=name)
    )
    check_permission(request, found.name)
    return found


def check_permission(request: web.Request, collection_name: str) -> None:
    """403 1000002 (no permission) when a restricted access key may not use this knowledge base."""
    allowed = request.get(ALLOWED_COLLECTIONS)
    if allowed is not None and collection_name not in allowed:
        raise ApiError(403, str(NO_PERMISSION), "no permission")


def _doc_id(value: Any, name: str = "doc_id") -> str:
    if not isinstance(value, str) or not _DOC_ID_RE.fullmatch(value):
        shown = repr(_short(value)) if isinstance(value, str) else json_kind(value)
        raise invalid(f"{name} must be 1-128 letters, digits or '_' and start with a letter or '_', got {shown}")
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
            raise invalid("meta is a string but not a JSON array") from None
    if not isinstance(value, list):
        raise invalid(f"meta must be an array of {{field_name, field_type, field_value}}, not {json_kind(value)}")
    for index, item in enumerate(value):
        where = f"meta[{index}]"
        if not isinstance(item, dict) or set(item) - {"field_name", "field_type", "field_value"}:
            raise invalid(f"{where} must be an object with field_name, field_type and field_value")
        name, kind, field_value = item.get("field_name"), item.get("field_type"), item.get("field_value")
        # The seed marks all three optional and lists no field types: only what is given is checked, and a
        # value only against a type the emulator knows (an assumption, docs/viking.md).
        if name is not None and not isinstance(name, str):
            raise invalid(f"{where}.field_name must be a string, not {json_kind(name)}")
        if kind is not None and not isinstance(kind, str):
            raise invalid(f"{where}.field_type must be a string, not {json_kind(kind)}")
        if kind in _FIELD_TYPES and "field_value" in item and not _value_matches(str(kind), field_value):
            raise invalid(f"{where}.field_value does not match field_type {kind}")
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
        raise invalid("dedup must be an object with content_dedup, doc_name_dedup and auto_skip")
    return _Dedup(_bool(value, "content_dedup"), _bool(value, "doc_name_dedup"), _bool(value, "auto_skip"))


def _check_optional_add_fields(body: Mapping[str, Any]) -> None:
    _string(body, "description", max_len=4000)
    _string(body, "strategy_resource_id", max_len=256)
    prefix = body.get("path_prefix")
    if prefix is not None and not (
        isinstance(prefix, str) or (isinstance(prefix, list) and all(isinstance(p, str) for p in prefix))
    ):
        raise invalid("path_prefix must be a string or an array of strings")


# --- ping and collections ---------------------------------------------------------------------------------


async def ping(request: web.Request) -> web.Response:
    return ok(request)


async def create_collection(request: web.Request) -> web.Response:
    allowed = {
        "name", "description", "project", "version", "data_type", "index", "preprocessing", "table_config",
        "doc_summary_config",
    }  # fmt: skip
    body = _json_body(request, allowed)
    name = _string(body, "name", required=True)
    assert name is not None
    if not COLLECTION_NAME_RE.fullmatch(name):
        raise invalid("name must start with a letter and hold 1-64 letters, digits or '_'")
    description = _string(body, "description", max_len=65535) or ""
    version = body.get("version", 4)
    if version not in (2, 4):
        raise invalid("version must be 2 (standard) or 4 (ultimate)")
    data_type = _string(body, "data_type") or "unstructured_data"
    if data_type not in ("unstructured_data", "structured_data"):
        raise invalid("data_type must be unstructured_data or structured_data")
    for key in ("index", "preprocessing", "table_config", "doc_summary_config"):
        if key in body and not isinstance(body[key], dict):
            raise invalid(f"{key} must be an object")
    settings: dict[str, Any] = {
        k: body[k] for k in ("index", "preprocessing", "table_config", "doc_summary_config") if k in body
    }
    settings.update(version=version, data_type=data_type)
    project = _project(body)
    store = state_of(request).store
    created = await anyio.to_thread.run_sync(lambda: store.create_collection(project, name, description, settings))
    return ok(
        request, {"collection_name": created.name, "project": created.project, "resource_id": created.resource_id}
    )


async def collection_info(request: web.Request) -> web.Response:
    body = _json_body(request, {"name", "project", "resource_id"})
    resource_id = _string(body, "resource_id", max_len=128)
    name = _string(body, "name", max_len=64)
    if not resource_id and not name:
        raise invalid("name or resource_id is required")
    state = state_of(request)
    project = _project(body)
    found = await anyio.to_thread.run_sync(
        lambda: state.store.collection(resource_id=resource_id, project=project, name=name)
    )
    count = await anyio.to_thread.run_sync(state.store.doc_count, found.resource_id)
    index = found.settings.get("index") or {}
    fields = (index.get("index_config") or {}).get("fields") or []
    return ok(
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


def _url_source(url: str, body: Mapping[str, Any]) -> _Source:
    """A document to download from ``url``. Seed 003 marks ``doc_id``, ``doc_name`` and ``doc_type``
    optional; when absent the emulator generates the id (as for tos), names the document after the URL's
    last path segment and reads the type from that name (assumptions, docs/viking.md)."""
    if not re.match(r"^https?://", url):
        raise invalid("url must be an http(s) URL")
    if not is_loopback_url(url):
        raise invalid("the emulator downloads only from loopback URLs (127.0.0.1, ::1, localhost)")
    given_id = body.get("doc_id")
    doc_id = _doc_id(given_id) if given_id is not None else _auto_doc_id()
    doc_name = _string(body, "doc_name", max_len=256)
    if doc_name == "":
        raise invalid("doc_name must be 1-256 characters")
    doc_name = doc_name or unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not doc_name:
        raise invalid("doc_name is needed: the url ends in no file name")
    doc_type = _string(body, "doc_type")
    if doc_type is None:
        doc_type = doc_type_of(doc_name)
        if doc_type is None:
            raise invalid(f"doc_type is needed: the type of {_short(doc_name)!r} cannot be told from its name")
    if doc_type not in DOC_TYPES:
        raise invalid(f"doc_type must be one of {', '.join(sorted(DOC_TYPES))}")
    return _Source("url", url=url, doc_id=doc_id, doc_name=doc_name, doc_type=doc_type)


def _auto_doc_id() -> str:
    return f"_sys_auto_gen_doc_id-{random.SystemRandom().getrandbits(62)}"


def _parse_add(body: Mapping[str, Any]) -> _Source:
    add_type = _string(body, "add_type", required=True)
    if add_type == "url":
        url = _string(body, "url", required=True, max_len=8192)
        assert url is not None
        return _url_source(url, body)
    if add_type == "tos":
        tos_path = _string(body, "tos_path", required=True, max_len=2048)
        assert tos_path is not None
        bucket, _, key = tos_path.partition("/")
        if not bucket or not key:
            raise invalid("tos_path must be <bucket>/<key> or <bucket>/<directory>/")
        # doc_id, doc_name and doc_type are ignored for tos (they come from the object), but must be sane.
        given_id = body.get("doc_id")
        return _Source(
            "tos", bucket=bucket, key=key, doc_id=_doc_id(given_id) if given_id is not None else None,
            doc_name=_string(body, "doc_name", max_len=256), doc_type=_string(body, "doc_type"),
        )  # fmt: skip
    if add_type == "lark":
        raise invalid("add_type lark (Feishu documents) is not emulated")
    raise invalid("add_type must be one of url, tos, lark")


async def add_doc(request: web.Request) -> web.Response:
    body = _json_body(request, _ADD_FIELDS)
    kb = await _collection(request, body)
    source = _parse_add(body)
    meta = _meta(body)
    dedup = _dedup(body)
    _check_optional_add_fields(body)
    description = _string(body, "description") or ""
    state = state_of(request)
    if source.add_type == "tos":
        if state.tos is None:
            raise invalid("add_type tos needs the emulator started with --tos-endpoint")
        if source.key.endswith("/"):
            keys = await state.tos.list_keys(source.bucket, source.key, limit=MAX_DIRECTORY_OBJECTS)
            added = [
                await _add_one(state, kb, _Source("tos", source.bucket, k), meta, description, dedup) for k in keys
            ]
            return ok(request, _add_reply(kb, "", {"skip": False, "same_doc_ids": []}, len(added)))
    doc_id, dedup_info = await _add_one(state, kb, source, meta, description, dedup)
    return ok(request, _add_reply(kb, doc_id, dedup_info))


_ADD_V2_FIELDS = _KB_FIELDS | {
    "doc_id", "doc_name", "doc_type", "description", "tag_list", "uri", "path_segments", "strategy_resource_id",
}  # fmt: skip


async def add_doc_v2(request: web.Request) -> web.Response:
    """``/api/knowledge/doc/v2/add``, as the official vikingdb SDK's ``add_doc_v2`` sends it: ``uri`` (a URL
    or a TOS ``bucket/key``), optional ``doc_id``/``doc_name``/``doc_type``, ``tag_list`` (meta items),
    ``path_segments``. API-NOTES: v2 dedups content itself and answers duplicates with an error whose code
    is not documented; the emulator answers 1000003 naming the document it duplicates (an assumption)."""
    body = _json_body(request, _ADD_V2_FIELDS)
    kb = await _collection(request, body)
    uri = _string(body, "uri", required=True, max_len=8192)
    assert uri is not None
    if re.match(r"^https?://", uri):
        source = _url_source(uri, body)
    else:
        bucket, _, key = uri.removeprefix("tos://").partition("/")
        if not bucket or not key or key.endswith("/"):
            raise invalid("uri must be an http(s) URL or a TOS path <bucket>/<key>")
        given_id = body.get("doc_id")
        source = _Source("tos", bucket=bucket, key=key, doc_id=_doc_id(given_id) if given_id is not None else None)
    name = _string(body, "doc_name", max_len=255)
    if name is not None and (not name or any(c in name for c in '<>:"/\\')):
        raise invalid('doc_name must be 1-255 characters without < > : " / \\')
    segments = body.get("path_segments")
    if segments is not None and not (isinstance(segments, list) and all(isinstance(x, str) for x in segments)):
        raise invalid(f"path_segments must be an array of strings, not {json_kind(segments)}")
    meta = _meta({"meta": body.get("tag_list")})
    _check_optional_add_fields(body)
    description = _string(body, "description") or ""
    state = state_of(request)
    if source.add_type == "tos" and state.tos is None:
        raise invalid("a TOS uri needs the emulator started with --tos-endpoint")
    doc_id, dedup_info = await _add_one(state, kb, source, meta, description, _Dedup(content=True, auto_skip=True))
    if dedup_info["skip"]:
        raise invalid(f"duplicate document: the same content is already document {dedup_info['same_doc_ids'][0]}")
    return ok(request, {"collection_name": kb.name, "resource_id": kb.resource_id, "project": kb.project,
                        "doc_id": doc_id})  # fmt: skip


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
    doc_type = source.doc_type if source.add_type == "url" else doc_type_of(source.key)
    if not doc_type or not name:
        raise invalid(f"cannot add {_short(source.key)!r}: unsupported file type")
    assert name is not None
    store = state.store
    staged = store.new_staging_path()
    fetched, failure = Fetched(), None
    try:
        fetched = await _fetch(state, source, staged, size_limit(doc_type))
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
    return _auto_doc_id()


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
    doc = await anyio.to_thread.run_sync(state_of(request).store.doc, kb.resource_id, doc_id)
    return ok(request, _doc_json(kb, doc, now_ms(), token_usage=token_usage))


def _list_filter(body: Mapping[str, Any]) -> list[str] | None:
    value = body.get("filter")
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"doc_id_list"}:
        raise invalid("filter must be an object with doc_id_list")
    ids = value.get("doc_id_list")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise invalid("filter.doc_id_list must be an array of strings")
    return ids


def _list_doc_types(body: Mapping[str, Any]) -> set[str] | None:
    value = body.get("doc_type")
    if value is None or value == "":
        return None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v in DOC_TYPES for v in values):
        raise invalid(f"doc_type must be a doc type or an array of them: {', '.join(sorted(DOC_TYPES))}")
    return set(values)


async def list_docs(request: web.Request) -> web.Response:
    allowed = _KB_FIELDS | {"offset", "limit", "doc_type", "filter", "return_token_usage", "pipeline_name", "detailed"}
    body = _json_body(request, allowed)
    kb = await _collection(request, body)
    offset = _int(body, "offset", 0)
    limit = _int(body, "limit", -1)
    if offset < 0:
        raise invalid("offset must not be negative")
    if offset >= 100 and "limit" not in body:
        raise invalid("limit is required when offset is 100 or more")
    if limit != -1 and not 1 <= limit <= 100:
        raise invalid("limit must be -1 (all) or between 1 and 100")
    ids = _list_filter(body)
    types = _list_doc_types(body)
    token_usage = _bool(body, "return_token_usage")
    _bool(body, "detailed")
    _string(body, "pipeline_name")
    docs = await anyio.to_thread.run_sync(state_of(request).store.docs, kb.resource_id, ids)
    docs = [d for d in docs if types is None or d.doc_type in types]
    page = docs[offset:] if limit == -1 else docs[offset : offset + limit]
    now = now_ms()
    return ok(
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
    state = state_of(request)
    await anyio.to_thread.run_sync(state.store.delete_doc, kb.resource_id, doc_id, state.process_delay_ms)
    return ok(request)


# --- download tasks ---------------------------------------------------------------------------------------


async def task_info(request: web.Request) -> web.Response:
    body = _json_body(request, {"task_id", "pipeline_name"})
    task_id = _string(body, "task_id", required=True, max_len=128)
    assert task_id is not None
    _string(body, "pipeline_name")
    task = await anyio.to_thread.run_sync(state_of(request).store.task, task_id)
    if task is None:
        raise invalid("task not exist")
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
    return ok(request, data)


# --- test hooks -------------------------------------------------------------------------------------------


async def emulator_files(request: web.Request) -> web.Response:
    """Every stored document (not enveloped): ``[{path, size, md5, uploads, adds, doc_id, collection, …}]``."""
    store = state_of(request).store
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


async def emulator_documents(request: web.Request) -> web.Response:
    """One entry per document (``/_emulator/documents``). A doc_id is one document: adding it again
    overwrites it, so a path re-sent under the same id stays one entry. ``folder`` comes from the source
    path the client recorded on the staged object."""
    return json_response(await anyio.to_thread.run_sync(state_of(request).store.document_view))


async def emulator_create_task(request: web.Request) -> web.Response:
    """Create a download task over a knowledge base: ``{collection_name|resource_id, project?, fail?}``."""
    request[BODY] = await read_signed_body(request)
    body = _json_body(request, _KB_FIELDS | {"fail"})
    kb = await _collection(request, body)
    state = state_of(request)
    fails = _bool(body, "fail")
    task = await anyio.to_thread.run_sync(
        lambda: state.store.create_task(kb.resource_id, state.process_delay_ms, fails=fails)
    )
    return json_response({"task_id": task.task_id})


async def emulator_attachment(request: web.Request) -> web.Response:
    """The finished task's attachment: a zip holding ``docs.jsonl``, one line per document."""
    store = state_of(request).store
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
