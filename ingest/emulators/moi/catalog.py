"""MOI emulator: the volume catalog, ``POST /catalog/file/list`` and ``POST /catalog/file/delete``, and the
``GET /_emulator/documents`` test hook.

Request shapes follow MOI 5.0's "Query file list" reference and the official SDKs (moi-go-sdk
``FileListRequest`` = ``CommonCondition`` + ``keyword``; ``FileDeleteRequest`` = ``{"id"}``):

- list: ``{"filters": [{"name", "values", "fuzzy"?}], "page", "page_size", "order"?, "order_by"?,
  "keyword"?}`` with exactly one ``volume_id`` filter; optional ``parent_id``, ``file_name`` (with
  ``fuzzy``) and ``file_ext`` filters. The Python SDK's ``find_files_by_name`` nests the paging and
  filters in ``common_condition``; that form is accepted too, never both at once. The answer is
  ``data: {total, list: [{id, name, file_type, file_ext, size, parent_id, volume_id, volume_name,
  show_path, created_at, updated_at, …}]}``.
- delete: ``{"id": "<file id>"}``, answered ``data: {"id"}``; a file no volume holds is 404
  ``ErrNotFound``.

Uploads create no folder objects, so the list holds files only: without a ``parent_id`` filter every
file of the volume, at any depth; ``show_path`` is its path in the volume, ``parent_id`` a stable id of
its folder ("" at the top).
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Mapping
from typing import Any

import anyio
from aiohttp import web

from ingest.emulators.kit.common import ApiError, json_response, read_json_object
from ingest.emulators.kit.documents import DocState, document_entry
from ingest.emulators.moi.state import state_of
from ingest.emulators.moi.store import CatalogFile, folder_id
from ingest.emulators.moi.wire import NOT_FOUND, PARAM_INVALID, FileStatus, bad, check_keys, ok, required_id, short

__all__ = ["delete_file", "emulator_documents", "list_files"]

#: Largest ``page_size`` (MOI documents none; the example asks for 20).
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 20
_CONDITION_KEYS = frozenset({"page", "page_size", "order", "order_by", "filters"})
_FILTER_NAMES = frozenset({"volume_id", "parent_id", "file_name", "file_ext"})
_ORDER_BY = {"": "created_ms", "created_at": "created_ms", "updated_at": "updated_ms", "name": "path", "size": "size"}


def _timestamp(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def _condition(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The paging and filter object (top level, or the SDK helper's ``common_condition``) and ``keyword``."""
    keyword = body.get("keyword", "")
    if not isinstance(keyword, str):
        raise bad("keyword must be a string")
    if "common_condition" in body:
        check_keys(body, {"common_condition", "keyword"})
        nested = body["common_condition"]
        if not isinstance(nested, dict):
            raise bad("common_condition must be an object with page, page_size and filters")
        check_keys(nested, _CONDITION_KEYS, "common_condition")
        return nested, keyword
    check_keys(body, {*_CONDITION_KEYS, "keyword"})
    return body, keyword


def _int_field(condition: Mapping[str, Any], name: str, default: int, high: int) -> int:
    value = condition.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise bad(f"{name} must be an integer between 1 and {high}")
    return value


def _filters(condition: Mapping[str, Any]) -> dict[str, tuple[list[str], bool]]:
    raw = condition.get("filters")
    if not isinstance(raw, list):
        raise bad('filters is required: an array with one {"name": "volume_id", "values": ["<volume id>"]}')
    found: dict[str, tuple[list[str], bool]] = {}
    for index, entry in enumerate(raw):
        where = f"filters[{index}]"
        if not isinstance(entry, dict):
            raise bad(f"{where} must be an object with name and values")
        check_keys(entry, {"name", "values", "fuzzy"}, where)
        name = entry.get("name")
        if name not in _FILTER_NAMES:
            raise bad(f"{where}.name must be one of {', '.join(sorted(_FILTER_NAMES))}")
        if name in found:
            raise bad(f"{where}: filter {name} is given twice")
        values = entry.get("values")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise bad(f"{where}.values must be an array of strings")
        fuzzy = entry.get("fuzzy", False)
        if not isinstance(fuzzy, bool):
            raise bad(f"{where}.fuzzy must be true or false")
        found[name] = (values, fuzzy)
    if "volume_id" not in found or len(found["volume_id"][0]) != 1 or not found["volume_id"][0][0].strip():
        raise bad('filters must hold one volume_id filter with one value: {"name": "volume_id", "values": [id]}')
    return found


def _where(filters: Mapping[str, tuple[list[str], bool]], keyword: str, volume_id: str) -> tuple[str, list[Any]]:
    """SQL over ``catalog_files`` for the optional filters (names are matched on the path's last segment)."""
    clauses: list[str] = []
    params: list[Any] = []
    name_expr = "replace(path, rtrim(path, replace(path, '/', '')), '')"
    names, fuzzy = filters.get("file_name", ([], False))
    names = [*names, keyword] if keyword else names
    if names:
        if fuzzy or keyword:
            clauses.append("(" + " OR ".join(f"instr(lower({name_expr}), lower(?)) > 0" for _ in names) + ")")
        else:
            clauses.append(f"{name_expr} IN ({', '.join('?' * len(names))})")
        params.extend(names)
    exts = [e.lower().lstrip(".") for e in filters.get("file_ext", ([], False))[0] if e.strip()]
    if exts:
        clauses.append("(" + " OR ".join(f"lower({name_expr}) LIKE ?" for _ in exts) + ")")
        params.extend(f"%.{e}" for e in exts)
    parents = filters.get("parent_id", ([], False))[0]
    if parents:
        # Folder ids are hashes of folder paths: the store's SQL function ``parent_of`` computes them.
        clauses.append("(" + " OR ".join("parent_of(?, path) = ?" for _ in parents) + ")")
        for parent in parents:
            params.extend([volume_id, parent])
    return (" AND ".join(clauses) or "1 = 1"), params


def _file_json(f: CatalogFile, volume_name: str) -> dict[str, Any]:
    folder, name = posixpath.split(f.path)
    ext = posixpath.splitext(name)[1].lstrip(".")
    return {
        "id": f.id,
        "name": name,
        "file_type": "file",
        "show_type": "normal",
        "file_ext": ext,
        "origin_file_ext": ext,
        "ref_file_id": "",
        "size": f.size,
        "volume_id": f.volume_id,
        "volume_name": volume_name,
        "volume_reserved": False,
        "ref_workflow_id": "",
        "parent_id": folder_id(f.volume_id, folder),
        "show_path": f.path,
        "save_path": f.path,
        "created_at": _timestamp(f.created_ms),
        "created_by": "",
        "updated_at": _timestamp(f.updated_ms),
    }


async def list_files(request: web.Request) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    condition, keyword = _condition(body)
    page = _int_field(condition, "page", 1, 1_000_000)
    page_size = _int_field(condition, "page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    order = condition.get("order", "desc")
    if order not in ("asc", "desc", ""):
        raise bad('order must be "asc" or "desc"')
    order_by = condition.get("order_by", "")
    if order_by not in _ORDER_BY:
        raise bad(f"order_by must be one of {', '.join(repr(k) for k in _ORDER_BY)}")
    filters = _filters(condition)
    volume_id = filters["volume_id"][0][0].strip()
    store = state_of(request).store
    volume = await anyio.to_thread.run_sync(store.volume, volume_id)
    if volume is None:
        raise ApiError(404, NOT_FOUND, f"volume {short(volume_id)} not found")
    where, params = _where(filters, keyword, volume_id)
    total, files = await anyio.to_thread.run_sync(
        lambda: store.catalog_page(
            volume_id,
            where=where,
            params=params,
            order_by=_ORDER_BY[order_by],
            descending=order != "asc",
            offset=(page - 1) * page_size,
            limit=page_size,
        )
    )
    return ok(request, {"total": total, "list": [_file_json(f, volume.name) for f in files]})


async def delete_file(request: web.Request) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    check_keys(body, {"id"})
    file_id = required_id(body, "id")
    await anyio.to_thread.run_sync(state_of(request).store.delete_catalog_file, file_id)
    return ok(request, {"id": file_id})


_STATE: dict[FileStatus | None, DocState] = {
    None: "done",
    FileStatus.SUCCESS: "done",
    FileStatus.FAILED: "failed",
}


async def emulator_documents(request: web.Request) -> web.Response:
    """Every catalog file of every volume, one entry per file (``/_emulator/documents``)."""
    files = await anyio.to_thread.run_sync(state_of(request).store.catalog_files)
    return json_response(
        [
            document_entry(
                doc_id=f.id,
                name=posixpath.basename(f.path),
                folder=posixpath.dirname(f.path),
                md5=f.md5,
                size=f.size,
                created_ms=f.created_ms,
                state=_STATE.get(status, "pending"),
                volume_id=f.volume_id,
                path=f.path,
            )
            for f, status in files
        ]
    )
