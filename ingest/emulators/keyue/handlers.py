"""Keyue emulator: the handlers of the knowledge API and the strict parsing of their requests.

``POST …/task/create/llm_document_import`` streams the one ``file`` part to staging while hashing it,
validates ``taskExtend``/``multipleFileKey`` (seed 002), and stores the document; the document list,
batch retrain and the directory calls read and write ``KeyueStore``.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from aiohttp import BodyPartReader, web

from ingest.emulators.keyue.state import KeyueState, state_of
from ingest.emulators.keyue.store import (
    INVALID,
    ROOT_DIR,
    Incoming,
    LearnStatus,
    document_json,
    format_time,
    invalid,
)
from ingest.emulators.kit.common import ApiError, json_response, now_ms, query_int, read_json_object
from ingest.emulators.kit.common import short as _short
from ingest.emulators.kit.multipart import receive_form, stage_part
from ingest.emulators.kit.store import discard_staged

__all__ = [
    "batch_delete",
    "batch_retrain",
    "create_directory",
    "emulator_documents",
    "emulator_files",
    "import_document",
    "list_directories",
    "list_documents",
    "parse_task_extend",
    "update_directory",
]

#: Largest text form field (``taskExtend`` and ``multipleFileKey`` are a few hundred bytes).
TEXT_FIELD_LIMIT = 64 * 1024
#: Page size limit of ``/llm/document/list`` (undocumented; large enough for efficient polling).
MAX_PAGE_SIZE = 100
#: Documents per ``batchRetrain`` / ``batchDelete`` call (undocumented).
MAX_RETRAIN_IDS = 100
MAX_DELETE_IDS = 100
MAX_NAME = 255

_FILE_FIELD = "file"
_TEXT_FIELDS = frozenset({"taskExtend", "multipleFileKey"})

# taskExtend (seed 002; ``imageOcr``/``multiQuery`` from the 2026 doc). Kept apart from the client's
# own validation on purpose: an emulator sharing the client's checks would hide the client's mistakes.
_SPLIT_BY = ("punc", "wrap")
_CHUNK_SIZE = (200, 800)
_OVERLAP = (0, 20)
_BOOL_KEYS = ("pre_handle_text", "pre_handle_directory", "imageOcr", "multiQuery")
_EXTEND_KEYS = ("split_by", "chunk_size", "overlap_proportion", *_BOOL_KEYS)


def ok(data: Any) -> web.Response:
    """The documented success envelope."""
    return json_response({"time": now_ms(), "data": data, "code": 200, "msg": "OK"})


# --- request parsing helpers ------------------------------------------------------------------------------


def _check_query(request: web.Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise invalid(f"unknown query parameter {_short(unknown[0])!r}; allowed: {', '.join(sorted(allowed))}")


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    return query_int(request, name, default, low, high, fail=invalid)


def _query_flag(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name, "").strip()
    if not raw:
        return None
    if raw not in ("0", "1"):
        raise invalid(f"query parameter {name} must be 0 or 1, got {_short(raw)!r}")
    return int(raw)


async def _dir_param(request: web.Request, value: str | None, name: str) -> str | None:
    if value is None or not value.strip():
        return None
    dir_id = value.strip()
    if not await anyio.to_thread.run_sync(state_of(request).store.directory_exists, dir_id):
        raise invalid(f"{name} {_short(dir_id)!r} is not an existing directory")
    return dir_id


def _check_keys(body: Mapping[str, Any], allowed: set[str], where: str = "request body") -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(f"{where} has unknown field {_short(unknown[0])!r}; allowed: {', '.join(sorted(allowed))}")


async def _json_body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    try:
        body = await read_json_object(request, code=str(INVALID))
    except ApiError as exc:
        raise invalid(exc.message) from None
    _check_keys(body, allowed)
    return body


def _name_problem(name: str, *, directory: bool = True) -> str | None:
    if not name.strip():
        return "is empty"
    if directory and name != name.strip():
        return "starts or ends with white space"
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if "/" in name or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "contains '/' or a control character"
    return None


def _dir_name(body: Mapping[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str):
        raise invalid("name is required and must be a string")
    problem = _name_problem(name)
    if problem is not None:
        raise invalid(f"name {_short(name)!r} {problem}")
    return name


def _version(body: Mapping[str, Any]) -> int:
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise invalid("version is required: the version of the directory list, from GET /directory")
    return version


def _id_field(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise invalid(f"{name} is required and must be a directory id")
    return str(value).strip()


def parse_task_extend(raw: str | None) -> str:
    """Validate the ``taskExtend`` form field; returns its normalised text (``"{}"`` when empty)."""
    if raw is None:
        raise invalid('form field taskExtend is required: send "{}" for automatic chunking and cleaning')
    if not raw.strip():
        return "{}"  # documented: empty means "{}"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise invalid(f"taskExtend is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise invalid("taskExtend must be a JSON object (as a string)")
    _check_keys(value, set(_EXTEND_KEYS), "taskExtend")
    if "split_by" in value and value["split_by"] not in _SPLIT_BY:
        raise invalid(f"taskExtend.split_by must be one of {', '.join(_SPLIT_BY)}, got {value['split_by']!r}")
    for key, (low, high) in (("chunk_size", _CHUNK_SIZE), ("overlap_proportion", _OVERLAP)):
        if key in value:
            number = value[key]
            if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
                raise invalid(f"taskExtend.{key} must be an integer from {low} to {high}, got {number!r}")
    for key in _BOOL_KEYS:
        if key in value and not isinstance(value[key], bool):
            raise invalid(f"taskExtend.{key} must be true or false, got {value[key]!r}")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _check_multiple_file_key(raw: str) -> None:
    """``multipleFileKey``: ``{"metadata": {"label": [...], "effectStartTime", "effectEndTime"}}``."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise invalid(f"multipleFileKey is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise invalid("multipleFileKey must be a JSON object")
    _check_keys(value, {"metadata"}, "multipleFileKey")
    metadata = value.get("metadata", {})
    if not isinstance(metadata, dict):
        raise invalid("multipleFileKey.metadata must be a JSON object")
    _check_keys(metadata, {"label", "effectStartTime", "effectEndTime"}, "multipleFileKey.metadata")
    labels = metadata.get("label", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise invalid("multipleFileKey.metadata.label must be an array of strings")
    for key in ("effectStartTime", "effectEndTime"):
        if not isinstance(metadata.get(key, ""), str):
            raise invalid(f"multipleFileKey.metadata.{key} must be a string")


# --- import: receiving the multipart body -----------------------------------------------------------------


@dataclass
class _StagedFile:
    name: str
    path: Path
    size: int
    md5: str
    characters: int


@dataclass
class _Form:
    fields: dict[str, str] = field(default_factory=dict)
    file: _StagedFile | None = None


async def _receive_form(request: web.Request, state: KeyueState, staged: list[Path]) -> _Form:
    """Parse the multipart body, streaming the ``file`` part to staging (its path goes to ``staged``)."""
    form = _Form()

    async def on_other(part: BodyPartReader, name: str | None, filename: str | None) -> None:
        if name != _FILE_FIELD:
            raise invalid(f"unknown form field {_short(name or '')!r}; expected file, taskExtend or multipleFileKey")
        if form.file is not None:
            raise invalid("one document per request: form field file is given twice")
        form.file = await _stage_file(part, filename, state, staged)

    await receive_form(
        request, form.fields, on_other, text_fields=_TEXT_FIELDS, text_limit=TEXT_FIELD_LIMIT, fail=invalid
    )
    return form


async def _stage_file(part: BodyPartReader, filename: str | None, state: KeyueState, staged: list[Path]) -> _StagedFile:
    """Stream the document to staging, hashing (and counting characters) as it goes."""
    if not filename:
        raise invalid("form field file must be a file part with a filename")
    problem = _name_problem(filename, directory=False)
    if problem is not None:
        raise invalid(f"file name {_short(filename)!r} {problem}; send the document's own name, not a path")
    text = codecs.getincrementaldecoder("utf-8")()
    characters: int | None = 0

    def count(chunk: bytes) -> None:
        nonlocal characters
        if characters is not None:
            try:
                characters += len(text.decode(chunk))
            except UnicodeDecodeError:
                characters = None  # not text: Keyue would count words after parsing; we report 0

    limit = state.config.max_file_size
    path, size, md5 = await stage_part(
        part,
        state.store.staging_dir,
        staged,
        limit=limit,
        too_large=lambda: invalid(f"document {_short(filename)!r} is larger than the {limit}-byte limit"),
        observe=count,
    )
    return _StagedFile(filename, path, size, md5, characters or 0)


# --- handlers ---------------------------------------------------------------------------------------------


async def import_document(request: web.Request) -> web.Response:
    """``POST …/task/create/llm_document_import?dirId=``: one document into one directory."""
    state = state_of(request)
    staged: list[Path] = []
    try:
        # The body is read before the query is judged: refusing mid-body would reset a big upload.
        form = await _receive_form(request, state, staged)
        _check_query(request, {"dirId", "knowledgePublic", "i18n"})
        dir_id = request.query.get("dirId", "").strip()
        if not dir_id:
            raise invalid("query parameter dirId is required (0 is the default directory)")
        knowledge_public = _query_flag(request, "knowledgePublic") or 0
        _query_flag(request, "i18n")
        task_extend = parse_task_extend(form.fields.get("taskExtend"))
        if "multipleFileKey" in form.fields:
            _check_multiple_file_key(form.fields["multipleFileKey"])
        if form.file is None:
            raise invalid("form field file is required")
        staged_file = form.file
        incoming = Incoming(
            dir_id=dir_id,
            name=staged_file.name,
            staged=staged_file.path,
            size=staged_file.size,
            md5=staged_file.md5,
            word_number=staged_file.characters,
            task_extend=task_extend,
            knowledge_public=knowledge_public,
            user_id=request.headers["uid"],
            user_name=request.headers["username"],
        )
        document = await anyio.to_thread.run_sync(state.store.commit_import, incoming, state.timing())
    finally:
        # Whatever happened (invalid request, dropped connection, cancellation), no staged body survives.
        discard_staged(staged)
    created = format_time(document.created_ms)
    return ok(
        {
            "id": document.id,
            "agentId": state.store.agent_id,
            "agentName": state.config.agent_name,
            "agentType": 1,
            "userId": document.user_id,
            "userName": document.user_name,
            "created": created,
            "updated": created,
            "module": "llm",
            "taskType": "import",
            "taskStatus": 0,
            "taskResult": None,
            "errorMsg": None,
            "filePath": document.file_key,
            "fileUrl": None,
            "taskUrl": "/api/v2/llm/document/import",
            "deleted": 0,
            "reportFilePath": None,
            "reportFileUrl": None,
            "taskExtend": document.task_extend,
            "commonExtend": None,
            "tenantId": state.store.tenant_id,
            "appName": None,
            "platform": "NGD",
            "requestSource": "UNIT",
        }
    )


async def list_documents(request: web.Request) -> web.Response:
    """``GET …/llm/document/list``: documents newest first, paged, by directory and name keyword."""
    _check_query(request, {"pn", "ps", "keyword", "dirId", "origin", "knowledgePublic", "i18n"})
    pn = _query_int(request, "pn", 1, 1, 1_000_000)
    ps = _query_int(request, "ps", 10, 1, MAX_PAGE_SIZE)
    dir_id = await _dir_param(request, request.query.get("dirId"), "dirId")
    keyword = request.query.get("keyword", "").strip() or None
    if keyword is not None and len(keyword) > MAX_NAME:
        raise invalid(f"query parameter keyword is longer than {MAX_NAME} characters")
    knowledge_public = _query_flag(request, "knowledgePublic")
    _query_flag(request, "i18n")
    state = state_of(request)
    total, documents = await anyio.to_thread.run_sync(
        lambda: state.store.list_documents(
            dir_id=dir_id, keyword=keyword, knowledge_public=knowledge_public, offset=(pn - 1) * ps, limit=ps
        )
    )
    now = now_ms()
    items = [document_json(d, state.store.agent_id, now) for d in documents]
    busy = (LearnStatus.LEARNING, LearnStatus.ENHANCING)
    return ok(
        {"total": total, "pn": pn, "ps": ps, "refresh": any(i["learnStatus"] in busy for i in items), "list": items}
    )


async def _document_ids(request: web.Request, limit: int) -> list[str]:
    """``{"documentIds": [...]}``: a non-empty array of at most ``limit`` document id strings."""
    body = await _json_body(request, {"documentIds"})
    ids = body.get("documentIds")
    if not isinstance(ids, list) or not ids:
        raise invalid("documentIds is required: a non-empty array of document ids")
    if len(ids) > limit:
        raise invalid(f"documentIds has {len(ids)} ids; at most {limit} per request")
    if not all(isinstance(i, str) and i.strip() for i in ids):
        raise invalid("documentIds must contain document id strings")
    return list(dict.fromkeys(i.strip() for i in ids))


async def batch_retrain(request: web.Request) -> web.Response:
    """``POST …/llm/document/batchRetrain``: learn failed documents again."""
    ids = await _document_ids(request, MAX_RETRAIN_IDS)
    state = state_of(request)
    await anyio.to_thread.run_sync(state.store.retrain, ids, state.timing())
    return ok(None)


async def batch_delete(request: web.Request) -> web.Response:
    """``POST …/llm/document/batchDelete`` (DocumentDelete): ``data`` null; 4007283 "文档删除失败" when an id
    is unknown, and then nothing is deleted."""
    ids = await _document_ids(request, MAX_DELETE_IDS)
    await anyio.to_thread.run_sync(state_of(request).store.delete_documents, ids)
    return ok(None)


async def list_directories(request: web.Request) -> web.Response:
    """``GET …/directory``: every directory (or one parent's children), each with the list version."""
    _check_query(request, {"keyword", "parentId"})
    parent_id = await _dir_param(request, request.query.get("parentId"), "parentId")
    keyword = request.query.get("keyword", "").strip().lower()
    directories, version = await anyio.to_thread.run_sync(state_of(request).store.directories)
    return ok(
        [
            {"hasPerm": True, "id": d.id, "name": d.name, "parentId": d.parent_id, "sort": d.sort, "version": version}
            for d in directories
            if (parent_id is None or d.parent_id == parent_id) and keyword in d.name.lower()
        ]
    )


async def create_directory(request: web.Request) -> web.Response:
    """``POST …/directory/create`` with ``{name, parentId, version}``."""
    body = await _json_body(request, {"name", "parentId", "version"})
    name = _dir_name(body)
    parent_id = _id_field(body, "parentId")
    version = _version(body)
    store = state_of(request).store
    directory, new_version = await anyio.to_thread.run_sync(store.create_directory, name, parent_id, version)
    return ok(
        {
            "id": directory.id,
            "name": directory.name,
            "parentId": directory.parent_id,
            "sort": directory.sort,
            "version": new_version,
        }
    )


async def update_directory(request: web.Request) -> web.Response:
    """``POST …/directory/update`` with ``{name, id, version}``: rename; returns the new version."""
    body = await _json_body(request, {"name", "id", "version"})
    name = _dir_name(body)
    dir_id = _id_field(body, "id")
    version = _version(body)
    new_version = await anyio.to_thread.run_sync(state_of(request).store.update_directory, dir_id, name, version)
    return ok({"version": new_version})


async def emulator_files(request: web.Request) -> web.Response:
    """Stored documents by path (not enveloped): ``[{path, size, md5, uploads, id, dirId, learnStatus}]``.

    ``path`` is the directory path below ``dirId`` (default: the default directory 0) plus the name.
    """
    under = request.query.get("dirId", ROOT_DIR).strip() or ROOT_DIR
    return json_response(await anyio.to_thread.run_sync(state_of(request).store.stored_files, under))


async def emulator_documents(request: web.Request) -> web.Response:
    """One entry per document (``/_emulator/documents``); ``folder`` is its directory's path from the
    default directory, ``dirId`` the directory."""
    return json_response(await anyio.to_thread.run_sync(state_of(request).store.document_view))
