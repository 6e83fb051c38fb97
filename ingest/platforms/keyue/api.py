"""The Baidu Keyue knowledge API as the target uses it: one call per endpoint, envelopes decoded once.

Keyue answers ``{"time","data","code":200,"msg":"OK"}`` on success and ``{"msg","requestId","code",
"tip"}`` on failure (API-NOTES section 3). ``check_envelope`` turns a failure into the matching
``ingest.errors`` type through the table ``KEYUE_ERRORS``: HTTP 401/403 → ``AuthError``; 429 →
``RateLimitedError``; 5xx → ``TransientError``; 4000526 → ``VersionConflict``; anything else (4002012
"request rejected" …) → ``PermanentError`` with the platform's ``msg`` and ``tip``. The HTTP status of
failures is not documented, so ``code`` is trusted whatever the status says.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from typing import Any

from ingest.errors import (
    SERVER_STATUSES,
    AuthError,
    ErrorRules,
    PermanentError,
    RateLimitedError,
    Rule,
    TransientError,
    VersionConflict,
    classify,
)
from ingest.formdata import Form
from ingest.http import HttpClient, HttpReply, one_line
from ingest.models import FileItem
from ingest.platforms.base import TargetContext
from ingest.platforms.keyue.config import KeyueTargetConfig

__all__ = [
    "DELETE_FAILED",
    "INVALID",
    "KEYUE_ERRORS",
    "SUCCESS",
    "VERSION_CONFLICT",
    "KeyueApi",
    "as_int",
    "check_envelope",
]

SUCCESS = 200
#: "服务器处理该请求失败,请检查请求是否合法": the request was rejected as invalid.
INVALID = 4002012
#: "目录列表数据版本不一致,请刷新重试": the directory list changed since it was read.
VERSION_CONFLICT = 4000526
#: "文档删除失败": DocumentDelete's documented failure.
DELETE_FAILED = 4007283

#: Page size of ``/llm/document/list`` requests.
PAGE_SIZE = 100

#: Keyue's error replies (API-NOTES section 3). The HTTP status of a failure is not documented, so the
#: code counts whatever the status says; any other code (4002012 "request rejected", 4000178, …) is a
#: ``PermanentError`` with Keyue's ``msg`` and ``tip``.
KEYUE_ERRORS = ErrorRules(
    "Keyue",
    rows=(
        Rule(
            AuthError,
            "{what}: Keyue rejected the credentials ({detail}); check KEYUE_TOKEN (or --token), --uid and --username",
            status={401, 403},
        ),
        Rule(RateLimitedError, "{what}: rate limited by Keyue ({detail})", status={429}, code={429}),
        Rule(TransientError, "{what}: Keyue server error ({detail})", status=SERVER_STATUSES, code=range(500, 600)),
        Rule(VersionConflict, "{what}: Keyue refused ({detail})", code={VERSION_CONFLICT}),
    ),
    otherwise=Rule(PermanentError, "{what}: Keyue refused ({detail})"),
)


def as_int(value: Any) -> int | None:
    """An integer Keyue sent as a JSON number or a numeric string; ``None`` for anything else (booleans too)."""
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def check_envelope(reply: HttpReply, what: str, *, secret: str = "") -> Any:
    """Return ``data`` of a successful Keyue envelope, or raise the matching ``IngestError`` (``KEYUE_ERRORS``).

    ``secret`` (the token) is scrubbed from anything quoted, should a server ever echo it.
    """
    body = reply.envelope
    code = as_int(body.get("code"))
    if 200 <= reply.status < 300 and code == SUCCESS:
        return body.get("data")
    msg = str(body.get("msg") or body.get("message") or "").strip()
    tip = str(body.get("tip") or "").strip()
    if body:
        detail = f"{code}: {msg}" if code is not None else msg
        detail = f"{detail} ({tip})" if tip else detail
    else:
        detail = f"HTTP {reply.status}" + (f": {reply.body}" if reply.body else "")
    detail = one_line(detail or f"HTTP {reply.status}")
    if secret:
        detail = detail.replace(secret, "***")
    raise classify(
        KEYUE_ERRORS, what=what, status=reply.status, code=code, detail=detail, retry_after=reply.retry_after
    )


class KeyueApi:
    """The endpoints the target calls, over one pooled session carrying ``token``, ``uid``, ``username``."""

    def __init__(self, config: KeyueTargetConfig, context: TargetContext) -> None:
        self._secret = config.token.get_secret_value()
        self.base = config.api_base
        self.http = HttpClient(
            config.endpoint,
            headers={
                "token": self._secret,
                "uid": config.uid,
                "username": config.username,
                "User-Agent": "ingest/0.1 (+keyue)",
            },
            connections=context.connections,
            read_timeout=context.request_timeout,
            budget=context.budget,
        )
        self._context = context

    async def _call(self, method: str, path: str, *, what: str, **kwargs: Any) -> Any:
        reply = await self.http.request(method, self.base + path, what=what, **kwargs)
        return check_envelope(reply, what, secret=self._secret)

    async def directories(self) -> list[dict[str, Any]]:
        """Every directory the credentials can see: ``[{id, name, parentId, version, hasPerm, …}]``."""
        what = "listing Keyue directories"
        data = await self._call("GET", "/directory", what=what)
        if not isinstance(data, list):
            raise TransientError(f"{what}: Keyue answered {type(data).__name__} instead of a list")
        return [d for d in data if isinstance(d, dict) and d.get("id") not in (None, "")]

    async def create_directory(self, name: str, parent_id: str, version: Any) -> Any:
        what = f"creating Keyue directory {name!r} in {parent_id}"
        return await self._call(
            "POST",
            "/directory/create",
            what=what,
            json_body={"name": name, "parentId": parent_id, "version": version},
        )

    async def documents(self, dir_id: str, *, pn: int, keyword: str | None = None) -> dict[str, Any]:
        """One page of a directory's documents: ``{total, pn, ps, list: […]}``."""
        params: dict[str, str | int] = {"dirId": dir_id, "pn": pn, "ps": PAGE_SIZE}
        if keyword:
            params["keyword"] = keyword
        what = f"listing documents of Keyue directory {dir_id}"
        data = await self._call("GET", "/llm/document/list", what=what, params=params)
        if not isinstance(data, dict):
            raise TransientError(f"{what}: Keyue answered {type(data).__name__} instead of a page")
        return data

    async def import_document(self, item: FileItem, name: str, dir_id: str, task_extend: str) -> tuple[Any, str]:
        """Stream one file into ``dir_id``; returns ``data`` of the reply and the body's md5."""
        what = f"import of {item.rel_path}"
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        form = Form()
        form.add_file("file", item, filename=name, content_type=mime)
        form.add_field("taskExtend", task_extend)
        async with form.body(chunk_size=self._context.chunk_size, on_bytes=self._context.on_bytes) as sent:
            data = await self._call(
                "POST",
                "/task/create/llm_document_import",
                what=what,
                params={"dirId": dir_id},
                data=sent.data,
                headers=sent.headers,
                file_bodies=sent.file_bodies,
            )
        return data, sent.md5s[0]

    async def retrain(self, document_ids: Sequence[str]) -> None:
        what = f"retraining {len(document_ids)} Keyue document(s)"
        await self._call("POST", "/llm/document/batchRetrain", what=what, json_body={"documentIds": list(document_ids)})

    async def delete_documents(self, document_ids: Sequence[str]) -> None:
        """``POST …/llm/document/batchDelete`` (DocumentDelete); fails with 4007283 "文档删除失败"."""
        what = f"deleting {len(document_ids)} Keyue document(s)"
        await self._call("POST", "/llm/document/batchDelete", what=what, json_body={"documentIds": list(document_ids)})

    async def aclose(self) -> None:
        await self.http.aclose()
