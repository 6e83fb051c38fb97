"""The VikingDB knowledge-base API as the target uses it: signed JSON requests, and the translation of
the platform's envelope and error codes into ``ingest.errors`` (done once, here).

Every request is signed with Volcengine V4 (service ``air``) over the exact body bytes sent, with
``Content-Type`` and ``Host`` among the signed headers (the volcengine SDK's choice).

Error codes (API-NOTES section 2): 1000001 unauthorized and 1000002 no permission -> ``AuthError``;
1000029 (and HTTP 429) -> ``RateLimitedError``; 1001010 (knowledge base full) -> ``CapacityError``;
1000005 (collection missing) -> ``ConfigError``; 1000028 and 5xx -> ``TransientError``; anything else
-> ``PermanentError`` carrying the code, e.g. 1001001 doc not exist.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ingest.errors import (
    AuthError,
    CapacityError,
    ConfigError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from ingest.http import HttpClient, HttpReply, one_line
from ingest.platforms.viking.signing import Credentials, sign

__all__ = [
    "COLLECTION_NOT_EXIST",
    "DOC_IS_FULL",
    "DOC_NOT_EXIST",
    "NO_PERMISSION",
    "QUOTA_LIMITED",
    "UNAUTHORIZED",
    "TaskInfo",
    "VikingApi",
    "check_reply",
]

UNAUTHORIZED = 1000001
NO_PERMISSION = 1000002
INVALID_REQUEST = 1000003
COLLECTION_NOT_EXIST = 1000005
INTERNAL_ERROR = 1000028
QUOTA_LIMITED = 1000029
DOC_NOT_EXIST = 1001001
DOC_IS_FULL = 1001010


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A download task (``task/info``): ``running``, ``success`` or ``fail``."""

    task_id: str
    status: str
    percentage: int
    attachment_link: str


def check_reply(reply: HttpReply, what: str, *, kb: str, endpoint: str) -> Any:
    """``data`` of a successful reply (``{}`` when absent), or the matching ``IngestError``."""
    body = reply.body if isinstance(reply.body, dict) else {}
    raw_code = body.get("code")
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    message = one_line(str(body.get("message") or ""))
    if reply.status == 200 and code == 0:
        data = body.get("data")
        return {} if data is None else data
    shown = f"{code} {message}".strip() if code is not None else (message or one_line(str(reply.body or "")))
    detail = shown or f"HTTP {reply.status}"
    if code == UNAUTHORIZED or reply.status == 401:
        raise AuthError(
            f"{what}: VikingDB rejected the request signature ({detail}); check VOLC_ACCESSKEY / VOLC_SECRETKEY"
            " (or --access-key / --secret-key) and --region"
        )
    if code == NO_PERMISSION or reply.status == 403:
        raise AuthError(f"{what}: the access key has no permission on knowledge base {kb} ({detail})")
    if code == QUOTA_LIMITED or reply.status == 429:
        raise RateLimitedError(
            f"{what}: rate limited by VikingDB ({detail})",
            status=reply.status,
            code=str(code),
            retry_after=reply.retry_after,
        )
    if code == DOC_IS_FULL:
        text = f"knowledge base {kb} is full ({detail}); delete documents or raise its limit, then rerun"
        raise CapacityError(f"{what}: {text}", status=reply.status, code=str(code), detail=text)
    if code == COLLECTION_NOT_EXIST:
        raise ConfigError(
            f"knowledge base {kb} does not exist at {endpoint} ({detail}); create it, or check --collection,"
            " --project and --resource-id"
        )
    if reply.status >= 500 or code == INTERNAL_ERROR:
        raise TransientError(
            f"{what}: VikingDB server error ({detail})",
            status=reply.status,
            code=str(code),
            retry_after=reply.retry_after,
        )
    if reply.status == 200 and code is None:
        raise TransientError(f"{what}: VikingDB answered without an envelope ({detail})", status=reply.status)
    text = f"VikingDB refused it ({detail})"
    raise PermanentError(f"{what}: {text}", status=reply.status, code=str(code), detail=text)


class VikingApi:
    """Signed calls to one VikingDB knowledge-base endpoint, for one knowledge base."""

    def __init__(
        self,
        endpoint: str,
        credentials: Credentials,
        *,
        kb_fields: Mapping[str, str],
        kb_label: str,
        connections: int = 64,
        read_timeout: float = 300.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._credentials = credentials
        parts = urlsplit(self.endpoint)
        self._host = parts.netloc
        self._base_path = parts.path.rstrip("/")
        self.kb_fields = dict(kb_fields)
        self.kb_label = kb_label
        self.http = HttpClient(
            self.endpoint,
            headers={"User-Agent": "ingest/0.1 (+viking)", "Accept": "application/json"},
            connections=connections,
            read_timeout=read_timeout,
        )

    async def call(self, method: str, path: str, body: Any, *, what: str) -> Any:
        """Send one signed request; return ``data`` or raise the mapped error."""
        raw = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "Host": self._host}
        headers.update(sign(method, self._base_path + path, [], headers, raw, self._credentials))
        reply = await self.http.request(method, path, what=what, data=raw, headers=headers)
        return check_reply(reply, what, kb=self.kb_label, endpoint=self.endpoint)

    async def ping(self) -> None:
        await self.call("GET", "/ping", None, what=f"connecting to VikingDB at {self.endpoint}")

    async def collection_info(self) -> dict[str, Any]:
        body = {"name" if k == "collection_name" else k: v for k, v in self.kb_fields.items()}
        data = await self.call(
            "POST", "/api/knowledge/collection/info", body, what=f"checking knowledge base {self.kb_label}"
        )
        return data if isinstance(data, dict) else {}

    async def add_doc(self, fields: Mapping[str, Any], *, what: str) -> dict[str, Any]:
        data = await self.call("POST", "/api/knowledge/doc/add", {**self.kb_fields, **fields}, what=what)
        return data if isinstance(data, dict) else {}

    async def doc_info(self, doc_id: str, *, what: str) -> dict[str, Any] | None:
        """The document, or ``None`` when the platform does not hold it (1001001)."""
        try:
            data = await self.call("POST", "/api/knowledge/doc/info", {**self.kb_fields, "doc_id": doc_id}, what=what)
        except PermanentError as exc:
            if exc.code == str(DOC_NOT_EXIST):
                return None
            raise
        return data if isinstance(data, dict) else {}

    async def list_docs(self, doc_ids: list[str], *, what: str) -> list[dict[str, Any]]:
        """The documents among ``doc_ids`` (at most 100) that the platform holds."""
        body = {**self.kb_fields, "offset": 0, "limit": 100, "filter": {"doc_id_list": doc_ids}}
        data = await self.call("POST", "/api/knowledge/doc/list", body, what=what)
        docs = data.get("doc_list") if isinstance(data, dict) else None
        return [d for d in docs if isinstance(d, dict)] if isinstance(docs, list) else []

    async def task_info(self, task_id: str) -> TaskInfo:
        data = await self.call("POST", "/api/knowledge/task/info", {"task_id": task_id}, what=f"task {task_id}")
        if not isinstance(data, dict):
            raise TransientError(f"task {task_id}: VikingDB answered without task data")
        return TaskInfo(
            task_id,
            str(data.get("status") or ""),
            int(data.get("percentage") or 0),
            str(data.get("attachment_link") or ""),
        )

    async def aclose(self) -> None:
        await self.http.aclose()
