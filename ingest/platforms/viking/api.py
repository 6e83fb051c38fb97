"""The VikingDB knowledge-base API as the target uses it: signed JSON requests, and the translation of
the platform's envelope and error codes into ``ingest.errors`` (done once, here).

Every request is signed with Volcengine V4 (service ``air``) over the exact body bytes sent, with
``Content-Type`` and ``Host`` among the signed headers (the volcengine SDK's choice).

Error codes (API-NOTES section 2; the table ``VIKING_ERRORS``): 1000001 unauthorized -> ``AuthError``;
1000002 no permission -> ``PermissionDenied``; 1000029 (and HTTP 429) -> ``RateLimitedError``; 1001010
(knowledge base full) -> ``CapacityError``; 1000005 (collection missing) -> ``ConfigError``; 1000028 and
5xx -> ``TransientError``; anything else -> ``PermanentError`` carrying the code, e.g. 1001001 doc not exist.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ingest.errors import (
    SERVER_STATUSES,
    AuthError,
    CapacityError,
    ConfigError,
    ErrorRules,
    PermanentError,
    PermissionDenied,
    RateLimitedError,
    Rule,
    TransientError,
    classify,
)
from ingest.http import HttpClient, HttpReply, one_line
from ingest.platforms.viking.signing import Credentials, sign
from ingest.ratelimit import RequestBudget

__all__ = [
    "COLLECTION_NOT_EXIST",
    "DOC_IS_FULL",
    "DOC_NOT_EXIST",
    "NO_PERMISSION",
    "QUOTA_LIMITED",
    "UNAUTHORIZED",
    "VIKING_ERRORS",
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


#: VikingDB's error replies (API-NOTES section 2, "Error codes"); any other code, e.g. 1000003 invalid
#: request or 1001001 doc not exist, is a ``PermanentError`` carrying it.
VIKING_ERRORS = ErrorRules(
    "VikingDB",
    rows=(
        Rule(
            AuthError,
            "{what}: VikingDB rejected the request signature ({detail}); check VOLC_ACCESSKEY / VOLC_SECRETKEY"
            " (or --access-key / --secret-key) and --region",
            status={401},
            code={UNAUTHORIZED},
        ),
        Rule(
            PermissionDenied,
            "{what}: the access key (VOLC_ACCESSKEY or --access-key) has no permission on knowledge base {kb}"
            " ({detail}); grant it access to the knowledge base, or use a key that has it",
            status={403},
            code={NO_PERMISSION},
        ),
        Rule(RateLimitedError, "{what}: rate limited by VikingDB ({detail})", status={429}, code={QUOTA_LIMITED}),
        Rule(
            CapacityError,
            "{what}: knowledge base {kb} is full ({detail}); delete documents or raise its limit, then rerun",
            code={DOC_IS_FULL},
        ),
        Rule(
            ConfigError,
            "knowledge base {kb} does not exist at {endpoint} ({detail}); create it, or check --collection,"
            " --project and --resource-id",
            code={COLLECTION_NOT_EXIST},
        ),
        Rule(TransientError, "{what}: VikingDB server error ({detail})", status=SERVER_STATUSES, code={INTERNAL_ERROR}),
    ),
    otherwise=Rule(PermanentError, "{what}: VikingDB refused it ({detail})"),
    needs_code={200},
)


def check_reply(reply: HttpReply, what: str, *, kb: str, endpoint: str) -> Any:
    """``data`` of a successful reply (``{}`` when absent), or the matching ``IngestError`` (``VIKING_ERRORS``)."""
    body = reply.envelope
    raw_code = body.get("code")
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    message = one_line(str(body.get("message") or ""))
    if reply.status == 200 and code == 0:
        data = body.get("data")
        return {} if data is None else data
    shown = f"{code} {message}".strip() if code is not None else (message or one_line(str(reply.body or "")))
    raise classify(
        VIKING_ERRORS,
        what=what,
        status=reply.status,
        code=code,
        detail=shown or f"HTTP {reply.status}",
        retry_after=reply.retry_after,
        kb=kb,
        endpoint=endpoint,
    )


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
        budget: RequestBudget | None = None,
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
            budget=budget,
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

    async def list_page(self, offset: int, limit: int, *, what: str) -> tuple[int, list[dict[str, Any]]]:
        """One page of the knowledge base's documents, newest first: ``(total_num, doc_list)``."""
        body = {**self.kb_fields, "offset": offset, "limit": limit}
        data = await self.call("POST", "/api/knowledge/doc/list", body, what=what)
        docs = data.get("doc_list") if isinstance(data, dict) else None
        total = data.get("total_num") if isinstance(data, dict) else None
        found = [d for d in docs if isinstance(d, dict)] if isinstance(docs, list) else []
        return (total if isinstance(total, int) and not isinstance(total, bool) else -1), found

    async def delete_doc(self, doc_id: str, *, what: str) -> bool:
        """``doc/delete``; ``False`` when the platform does not hold the document (1001001)."""
        try:
            await self.call("POST", "/api/knowledge/doc/delete", {**self.kb_fields, "doc_id": doc_id}, what=what)
        except PermanentError as exc:
            if exc.code == str(DOC_NOT_EXIST):
                return False
            raise
        return True

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
