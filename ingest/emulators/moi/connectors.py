"""MOI emulator: data connectors (``/connectors``, ``/connectors/validate``, ``/connectors/list``,
``PUT|DELETE /connectors/{id}``, ``/connectors/files/list``, ``/connectors/summary``).

Connectors live in the emulator's SQLite database, so they survive restarts. Each source type has the
config block the seed documents, validated strictly (every field of the documented example is required
except S3's ``path_style``; unknown fields are refused). S3 and OSS connectors are real: validate
connects to the bucket and files/list lists it (``sources``). DIFY, HDFS and MO connectors are
checked against their schema and by a TCP connection to the host they name.

Where the seed leaves a detail open, the emulator decides and says so here:

- create answers ``{"code": "OK", "msg": "OK"}`` without data, as the seed shows; names are unique
  (409 ``ErrDuplicateName``) so a client can find the new connector's id by listing with the name.
- validate answers ``{"valid": true}`` or ``{"valid": false, "reason": "…"}``; validating a stored
  connector sets its ``status`` to ``active`` or ``inactive``.
- delete refuses (409 ``ErrConflict``) while one of the connector's load tasks is running or pausing.
- summary (its response is not documented) is ``{total, source_types: [{source_type, name, count}],
  statuses: [{status, count}], related_task_total}``.
- files/list of a DIFY, HDFS or MO connector is a 400: the emulator cannot read those sources.
"""

from __future__ import annotations

import json
import posixpath
import re
import sqlite3
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
from aiohttp import web

from ingest.emulators.kit.common import ApiError, SnowflakeIds, now_ms, read_json_object
from ingest.emulators.moi.filetypes import DIR, TYPE_NUMBERS, file_type
from ingest.emulators.moi.sources import BucketConfig, SourceUnavailable, list_objects, probe_bucket, probe_tcp
from ingest.emulators.moi.wire import (
    CONFLICT,
    DUPLICATE_NAME,
    NOT_FOUND,
    PARAM_INVALID,
    bad,
    check_keys,
    ok,
    query_bool,
    query_id,
    query_int,
    query_list,
    query_paging,
    short,
)

__all__ = [
    "CONNECTORS_SCHEMA",
    "SOURCE_BLOCKS",
    "Connector",
    "ConnectorStore",
    "HasStore",
    "StoreLike",
    "add_connector_routes",
    "bucket_config",
]

CONNECTORS_SCHEMA = """
CREATE TABLE IF NOT EXISTS connectors (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    source_type INTEGER NOT NULL,
    config TEXT NOT NULL,
    usage_type TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
"""

#: source_type -> the name of its config block (seed: 1 DIFY, 2 HDFS, 3 MO, 4 OSS, 5 S3).
SOURCE_BLOCKS: dict[int, str] = {1: "dify", 2: "hdfs", 3: "mo", 4: "oss", 5: "s3"}
BUCKET_TYPES = frozenset({4, 5})
#: Ids as in the seed's examples (100004, 100005): small integers, not snowflakes.
FIRST_CONNECTOR_ID = 100001
EMULATOR_USER = "admin"
ACTIVE, INACTIVE = "active", "inactive"
_ORDER_FIELDS = ("id", "name", "created_at", "updated_at", "source_type", "status")


class StoreLike(Protocol):
    """What the connector and load-task parts need from the emulator's store (``moi._Store``)."""

    ids: SnowflakeIds

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...
    def reading(self) -> AbstractContextManager[sqlite3.Connection]: ...


class HasStore(Protocol):
    @property
    def store(self) -> StoreLike: ...


# --- config blocks ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    kind: str  # "text", "url", "address", "port", "int", "bool"
    required: bool = True


_SCHEMAS: dict[str, dict[str, _Field]] = {
    "oss": {
        "endpoint": _Field("text"),
        "access_key_id": _Field("text"),
        "access_key_secret": _Field("text"),
        "bucket_name": _Field("text"),
    },
    "s3": {
        "endpoint": _Field("text"),
        "access_key_id": _Field("text"),
        "access_key_secret": _Field("text"),
        "bucket_name": _Field("text"),
        "region": _Field("text"),
        "path_style": _Field("bool", required=False),
    },
    "dify": {"api_key": _Field("text"), "api_url": _Field("url")},
    "hdfs": {
        "address": _Field("address"),
        "auth_type": _Field("int"),
        "username": _Field("text"),
        "file_path": _Field("text"),
    },
    "mo": {"host": _Field("text"), "port": _Field("port"), "username": _Field("text"), "password": _Field("text")},
}
_ADDRESS_RE = re.compile(r"^\[?[A-Za-z0-9.:_-]+\]?:([0-9]{1,5})$")


def _check_field(block: str, name: str, spec: _Field, value: Any) -> Any:
    where = f"{block}.{name}"
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"{where} must be true or false")
        return value
    if spec.kind in ("int", "port"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(f"{where} must be a non-negative integer")
        if spec.kind == "port" and not 1 <= value <= 65535:
            raise bad(f"{where} must be a port number 1-65535, got {value}")
        return value
    if not isinstance(value, str) or not value.strip():
        raise bad(f"{where} is required and must be a non-empty string")
    if len(value) > 1024:
        raise bad(f"{where} is longer than 1024 characters")
    if spec.kind == "url" and not re.match(r"^https?://[^/\s]+", value):
        raise bad(f"{where} must be an http(s) URL, got {short(value)!r}")
    if spec.kind == "address":
        match = _ADDRESS_RE.match(value)
        if not match or not 1 <= int(match.group(1)) <= 65535:
            raise bad(f"{where} must be host:port, e.g. 172.21.107.12:8020, got {short(value)!r}")
    return value


def validate_block(block: str, value: Any) -> dict[str, Any]:
    """The ``block`` config, checked field by field; a normalised copy (defaults filled in)."""
    if not isinstance(value, dict):
        raise bad(f"{block} must be a JSON object with the {block.upper()} connection settings")
    schema = _SCHEMAS[block]
    check_keys(value, set(schema), block)
    config: dict[str, Any] = {}
    for name, spec in schema.items():
        if name not in value or value[name] is None:
            if spec.required:
                raise bad(f"{block}.{name} is required for a {block.upper()} connector")
            if spec.kind == "bool":
                config[name] = False
            continue
        config[name] = _check_field(block, name, spec, value[name])
    return config


def _source_type(value: Any, name: str = "source_type") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in SOURCE_BLOCKS:
        raise bad(f"{name} must be 1 (DIFY), 2 (HDFS), 3 (MO), 4 (OSS) or 5 (S3)")
    return value


def _config_for(source_type: int, body: Mapping[str, Any], *, required: bool) -> dict[str, Any] | None:
    """The config block matching ``source_type``; any other block present is an error."""
    wanted = SOURCE_BLOCKS[source_type]
    for other in SOURCE_BLOCKS.values():
        if other != wanted and body.get(other) is not None:
            raise bad(f"{other} was given but the connector is {wanted.upper()} (source_type {source_type})")
    if body.get(wanted) is None:
        if required:
            raise bad(f"{wanted} is required when source_type is {source_type} ({wanted.upper()})")
        return None
    return validate_block(wanted, body[wanted])


def _usage_type(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
        raise bad("usage_type must be an array of usage type values (integers or strings)")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad("name is required and must be a non-empty string")
    if len(value) > 128:
        raise bad("name must be at most 128 characters")
    return value


def bucket_config(source_type: int, config: Mapping[str, Any], *, allow_remote: bool = False) -> BucketConfig:
    """How to reach an OSS/S3 connector's bucket.

    OSS has no ``path_style`` setting: it is addressed virtual-hosted, as Alibaba Cloud requires,
    except on an IP or ``localhost`` endpoint, where no bucket sub-domain can exist.
    """
    from ingest.emulators.moi.sources import host_is_literal

    path_style = bool(config.get("path_style")) if source_type == 5 else host_is_literal(str(config["endpoint"]))
    return BucketConfig(
        endpoint=str(config["endpoint"]),
        access_key_id=str(config["access_key_id"]),
        access_key_secret=str(config["access_key_secret"]),
        bucket_name=str(config["bucket_name"]),
        region=str(config.get("region") or ""),
        path_style=path_style,
        allow_remote=allow_remote,
    )


def probe(source_type: int, config: Mapping[str, Any], *, allow_remote: bool = False) -> None:
    """Connect to the source; ``SourceUnavailable`` with the reason when it cannot. Blocking.

    Only to this machine unless ``allow_remote`` (``--allow-remote-sources``): see ``kit.netguard``.
    """
    if source_type in BUCKET_TYPES:
        probe_bucket(bucket_config(source_type, config, allow_remote=allow_remote))
    elif source_type == 1:
        url = urlsplit(str(config["api_url"]))
        probe_tcp(url.hostname or "", url.port or (443 if url.scheme == "https" else 80), allow_remote=allow_remote)
    elif source_type == 2:
        host, _, port = str(config["address"]).rpartition(":")
        probe_tcp(host.strip("[]"), int(port), allow_remote=allow_remote)
    else:
        probe_tcp(str(config["host"]), int(config["port"]), allow_remote=allow_remote)


# --- the store --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connector:
    id: int
    name: str
    source_type: int
    config: dict[str, Any]
    usage_type: list[Any]
    status: str
    created_ms: int
    updated_ms: int

    @property
    def block(self) -> str:
        return SOURCE_BLOCKS[self.source_type]

    @property
    def type_name(self) -> str:
        return self.block.upper()


def _row(row: tuple[Any, ...]) -> Connector:
    cid, name, source_type, config, usage_type, status, created_ms, updated_ms = row
    return Connector(cid, name, source_type, json.loads(config), json.loads(usage_type), status, created_ms, updated_ms)


_COLUMNS = "id, name, source_type, config, usage_type, status, created_ms, updated_ms"


class ConnectorStore:
    """Connectors in the emulator's database. Blocking: call through ``anyio.to_thread``."""

    def __init__(self, host: HasStore, *, allow_remote: bool = False) -> None:
        # The store opens when the app starts; the host (``MoiState``) hands it out from then on.
        self._host = host
        #: Whether sources may be on other machines (``--allow-remote-sources``); else loopback only.
        self.allow_remote = allow_remote

    @property
    def store(self) -> StoreLike:
        return self._host.store

    def create(self, name: str, source_type: int, config: dict[str, Any], usage_type: list[Any]) -> int:
        now = now_ms()
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM connectors WHERE name = ?", (name,)).fetchone():
                raise ApiError(409, DUPLICATE_NAME, f"a connector named {short(name)!r} already exists")
            largest = db.execute("SELECT MAX(id) FROM connectors").fetchone()[0]
            cid = max(int(largest or 0) + 1, FIRST_CONNECTOR_ID)
            db.execute(
                f"INSERT INTO connectors ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, name, source_type, json.dumps(config), json.dumps(usage_type), ACTIVE, now, now),
            )
        return cid

    def get(self, cid: int) -> Connector | None:
        with self.store.reading() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM connectors WHERE id = ?", (cid,)).fetchone()
        return None if row is None else _row(row)

    def require(self, cid: int) -> Connector:
        found = self.get(cid)
        if found is None:
            raise ApiError(404, NOT_FOUND, f"connector {cid} not found")
        return found

    def all(self) -> list[Connector]:
        with self.store.reading() as db:
            return [_row(r) for r in db.execute(f"SELECT {_COLUMNS} FROM connectors ORDER BY id")]

    def related_task_ids(self) -> dict[int, list[str]]:
        """Load task ids per connector, oldest first."""
        found: dict[int, list[str]] = {}
        with self.store.reading() as db:
            rows = db.execute("SELECT connector_id, id FROM load_tasks ORDER BY CAST(id AS INTEGER)").fetchall()
        for cid, task_id in rows:
            found.setdefault(int(cid), []).append(str(task_id))
        return found

    def update(self, cid: int, name: str | None, config: dict[str, Any] | None, usage_type: list[Any] | None) -> None:
        with self.store.transaction() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM connectors WHERE id = ?", (cid,)).fetchone()
            if row is None:
                raise ApiError(404, NOT_FOUND, f"connector {cid} not found")
            current = _row(row)
            if name is not None and name != current.name:
                if db.execute("SELECT 1 FROM connectors WHERE name = ?", (name,)).fetchone():
                    raise ApiError(409, DUPLICATE_NAME, f"a connector named {short(name)!r} already exists")
            db.execute(
                "UPDATE connectors SET name = ?, config = ?, usage_type = ?, updated_ms = ? WHERE id = ?",
                (
                    current.name if name is None else name,
                    json.dumps(current.config if config is None else config),
                    json.dumps(current.usage_type if usage_type is None else usage_type),
                    now_ms(),
                    cid,
                ),
            )

    def set_status(self, cid: int, status: str) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE connectors SET status = ? WHERE id = ?", (status, cid))

    def delete(self, cid: int) -> None:
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM connectors WHERE id = ?", (cid,)).fetchone() is None:
                raise ApiError(404, NOT_FOUND, f"connector {cid} not found")
            busy = [
                str(r[0])
                for r in db.execute(
                    "SELECT id FROM load_tasks WHERE connector_id = ? AND status IN (1, 2) ORDER BY id", (cid,)
                )
            ]
            if busy:
                raise ApiError(
                    409,
                    CONFLICT,
                    f"connector {cid} has running load tasks ({', '.join(busy[:5])}); pause or delete them first",
                )
            db.execute("DELETE FROM connectors WHERE id = ?", (cid,))


# --- rendering --------------------------------------------------------------------------------------------


def connector_json(connector: Connector, related: list[str]) -> dict[str, Any]:
    return {
        "id": connector.id,
        "source_type": connector.source_type,
        "name": connector.name,
        "status": connector.status,
        "created_at": connector.created_ms // 1000,
        "updated_at": connector.updated_ms // 1000,
        "username": EMULATOR_USER,
        # The seed shows related task ids as JSON numbers (task ids elsewhere are strings).
        "related_task_ids": [int(task_id) for task_id in related],
        "usage_type": connector.usage_type,
        connector.block: connector.config,
    }


def source_file_json(key: str, size: int) -> dict[str, Any]:
    is_dir = key.endswith("/")
    kind = DIR if is_dir else file_type(key)
    return {"uri": key, "filename": posixpath.basename(key.rstrip("/")), "size": size, "type": kind}


# --- handlers ---------------------------------------------------------------------------------------------

CONNECTORS: web.AppKey[ConnectorStore] = web.AppKey("moi_connectors", ConnectorStore)


def _connectors(request: web.Request) -> ConnectorStore:
    return request.app[CONNECTORS]


def _path_id(request: web.Request) -> int:
    return int(request.match_info["id"])


def parse_connector_id(value: Any, name: str = "connector_id") -> int:
    """A connector id given as a JSON integer or a decimal string."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise bad(f"{name} must be a connector id (an integer)")
    number = int(str(value).strip())
    if number > 2**63 - 1:
        raise bad(f"{name} is out of range")
    return number


async def create_connector(request: web.Request) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    check_keys(body, {"name", "source_type", "usage_type", *SOURCE_BLOCKS.values()})
    name = _name(body.get("name"))
    if body.get("source_type") is None:
        raise bad("source_type is required: 1 (DIFY), 2 (HDFS), 3 (MO), 4 (OSS) or 5 (S3)")
    source_type = _source_type(body.get("source_type"))
    config = _config_for(source_type, body, required=True)
    assert config is not None
    usage_type = _usage_type(body.get("usage_type"))
    store = _connectors(request)
    await anyio.to_thread.run_sync(store.create, name, source_type, config, usage_type)
    return ok(request, None)


async def validate_connector(request: web.Request) -> web.Response:
    body = await read_json_object(request, code=PARAM_INVALID)
    check_keys(body, {"source_type", "connector_id", *SOURCE_BLOCKS.values()})
    if body.get("source_type") is None:
        raise bad("source_type is required: 1 (DIFY), 2 (HDFS), 3 (MO), 4 (OSS) or 5 (S3)")
    source_type = _source_type(body.get("source_type"))
    store = _connectors(request)
    stored: Connector | None = None
    if body.get("connector_id") not in (None, ""):
        stored = await anyio.to_thread.run_sync(store.require, parse_connector_id(body["connector_id"]))
        if stored.source_type != source_type:
            raise bad(
                f"source_type is {source_type} but connector {stored.id} is {stored.type_name}"
                f" (source_type {stored.source_type})"
            )
    config = _config_for(source_type, body, required=stored is None)
    if config is None:
        assert stored is not None
        config = stored.config
    try:
        await anyio.to_thread.run_sync(lambda: probe(source_type, config, allow_remote=store.allow_remote))
    except SourceUnavailable as exc:
        result: dict[str, Any] = {"valid": False, "reason": str(exc)}
    else:
        result = {"valid": True}
    if stored is not None:
        await anyio.to_thread.run_sync(store.set_status, stored.id, ACTIVE if result["valid"] else INACTIVE)
    return ok(request, result)


def _int_list(request: web.Request, name: str, valid: set[int]) -> set[int] | None:
    raw = query_list(request, name)
    if not raw:
        return None
    try:
        values = {int(item) for item in raw}
    except ValueError:
        raise bad(f"query parameter {name} must be integers") from None
    if not values <= valid:
        raise bad(f"query parameter {name} must be among {', '.join(map(str, sorted(valid)))}")
    return values


async def list_connectors(request: web.Request) -> web.Response:
    page, page_size = query_paging(request)
    descending = query_bool(request, "is_desc")
    keyword = request.query.get("keyword", "").strip().lower()
    order_by = request.query.get("order_by", "").strip() or "id"
    if order_by not in _ORDER_FIELDS:
        raise bad(f"query parameter order_by must be one of: {', '.join(_ORDER_FIELDS)}")
    types = _int_list(request, "source_type_list", set(SOURCE_BLOCKS)) or set()
    one_type = query_int(request, "source_type", None, 1, 5)
    if one_type is not None:
        types.add(one_type)
    statuses = set(query_list(request, "status_list"))
    if request.query.get("status", "").strip():
        statuses.add(request.query["status"].strip())
    usage = set(query_list(request, "usage_type"))
    store = _connectors(request)
    connectors = await anyio.to_thread.run_sync(store.all)
    related = await anyio.to_thread.run_sync(store.related_task_ids)
    chosen = [
        c
        for c in connectors
        if (not keyword or keyword in c.name.lower())
        and (not types or c.source_type in types)
        and (not statuses or c.status in statuses)
        and (not usage or usage & {str(u) for u in c.usage_type})
    ]
    views = [connector_json(c, related.get(c.id, [])) for c in chosen]
    views.sort(key=lambda v: (v[order_by], v["id"]), reverse=descending)
    return ok(request, {"connectors": views[(page - 1) * page_size : page * page_size], "total": len(views)})


async def update_connector(request: web.Request) -> web.Response:
    cid = _path_id(request)
    body = await read_json_object(request, code=PARAM_INVALID)
    check_keys(body, {"name", "usage_type", *SOURCE_BLOCKS.values()})
    if not any(body.get(k) is not None for k in body):
        raise bad("nothing to update: give name, usage_type or the connector's config block")
    store = _connectors(request)
    current = await anyio.to_thread.run_sync(store.require, cid)
    name = _name(body["name"]) if body.get("name") is not None else None
    config = _config_for(current.source_type, body, required=False)
    usage_type = _usage_type(body["usage_type"]) if "usage_type" in body else None
    await anyio.to_thread.run_sync(store.update, cid, name, config, usage_type)
    return ok(request, None)


async def delete_connector(request: web.Request) -> web.Response:
    cid = _path_id(request)
    await anyio.to_thread.run_sync(_connectors(request).delete, cid)
    return ok(request, None)


def _list_source(connector: Connector, allow_remote: bool) -> list[dict[str, Any]]:
    if connector.source_type not in BUCKET_TYPES:
        raise bad(
            f"connector {connector.id} is {connector.type_name}: the emulator lists files only from OSS and S3"
            " connectors"
        )
    config = bucket_config(connector.source_type, connector.config, allow_remote=allow_remote)
    try:
        return [source_file_json(obj.key, obj.size) for obj in list_objects(config)]
    except SourceUnavailable as exc:
        raise bad(f"connector {connector.id} cannot be read: {exc}") from None


async def connector_files(request: web.Request) -> web.Response:
    cid = parse_connector_id(query_id(request, "connector_id"))
    types = _int_list(request, "file_types", set(TYPE_NUMBERS))
    store = _connectors(request)
    connector = await anyio.to_thread.run_sync(store.require, cid)
    files = await anyio.to_thread.run_sync(_list_source, connector, store.allow_remote)
    if types is not None:
        files = [f for f in files if f["type"] in types]
    return ok(request, {"files": files})


async def connector_summary(request: web.Request) -> web.Response:
    store = _connectors(request)
    connectors = await anyio.to_thread.run_sync(store.all)
    related = await anyio.to_thread.run_sync(store.related_task_ids)
    by_type: dict[int, int] = {}
    by_status: dict[str, int] = {}
    for c in connectors:
        by_type[c.source_type] = by_type.get(c.source_type, 0) + 1
        by_status[c.status] = by_status.get(c.status, 0) + 1
    known = {c.id for c in connectors}
    return ok(
        request,
        {
            "total": len(connectors),
            "source_types": [
                {"source_type": t, "name": SOURCE_BLOCKS[t].upper(), "count": n} for t, n in sorted(by_type.items())
            ],
            "statuses": [{"status": s, "count": n} for s, n in sorted(by_status.items())],
            "related_task_total": sum(len(ids) for cid, ids in related.items() if cid in known),
        },
    )


def add_connector_routes(app: web.Application, store: ConnectorStore) -> None:
    app[CONNECTORS] = store
    app.router.add_post("/connectors", create_connector)
    app.router.add_post("/connectors/validate", validate_connector)
    app.router.add_get("/connectors/list", list_connectors, allow_head=False)
    app.router.add_get("/connectors/files/list", connector_files, allow_head=False)
    app.router.add_get("/connectors/summary", connector_summary, allow_head=False)
    app.router.add_put(r"/connectors/{id:\d{1,18}}", update_connector)
    app.router.add_delete(r"/connectors/{id:\d{1,18}}", delete_connector)
