"""MatrixOne Intelligence (MOI): local files into a volume through ``POST /connectors/upload``.

One upload request carries up to ``max_batch_files`` files as repeated ``file`` parts with a ``meta``
array in the seed document's form (``file_name`` = the relative path, ``file_size``, ``mime_type``)
and creates one MOI task; ``/task/files`` reports each file's status and ``/task/retry`` re-runs the
failed ones. Dedup uses ``{"by": ["name", "md5"], "strategy": "skip"}``.
"""

from __future__ import annotations

import functools
import json
import mimetypes
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import Field, SecretStr

from ingest._aio import run_concurrently
from ingest.config import TargetConfigBase
from ingest.exceptions import (
    AuthError,
    ConfigError,
    PermanentError,
    RateLimitedError,
    RemoteError,
    TransientError,
)
from ingest.models import FileItem, Receipt, RemoteState, RemoteStatus
from ingest.targets._http import FileBody, HttpClient, HttpReply
from ingest.targets.base import CliOption, Target, TargetContext, TargetFeatures, register_target

__all__ = ["MoiTarget", "MoiTargetConfig", "check_envelope"]

_AUTH_CODES = {"errunauthorized", "errunauthenticated", "unauthorized", "unauthenticated"}
_RATE_CODES = {"errdynamicserviceconcurrencylimit", "errdynamicserviceratelimit"}
_SERVER_CODES = {"errserver", "errinternal", "errserviceunavailable"}

# /task/files status codes -> what the engine acts on. 0 and unknown codes count as still pending.
_STATUS_TABLES: dict[str, dict[int, RemoteState]] = {
    # seed: 1 waiting, 2 uploading, 3 paused, 4 failed, 5 success, 6 retrying
    "seed": {4: RemoteState.FAILED, 5: RemoteState.DONE},
    # MOI 5.0: 1 waiting, 2 uploading, 3 failed, 4 success
    "v5": {3: RemoteState.FAILED, 4: RemoteState.DONE},
}

DEDUP_SKIP = {"by": ["name", "md5"], "strategy": "skip"}
TASK_FILES_PAGE = 1000
POLL_PARALLEL_TASKS = 8


class MoiTargetConfig(TargetConfigBase):
    """MatrixOne Intelligence: upload into a volume through ``/connectors/upload``."""

    type: Literal["moi"] = "moi"
    api_key: SecretStr
    volume_id: str = Field(min_length=1)
    #: Which table of ``/task/files`` status codes the platform speaks: the seed document's
    #: (4 failed, 5 success) or MOI 5.0's (3 failed, 4 success).
    file_status_table: Literal["seed", "v5"] = "seed"
    #: ``moi-key`` (the seed) or ``x-api-key`` (MOI 5.0, with ``workspace_id``).
    auth_header: Literal["moi-key", "x-api-key"] = "moi-key"
    workspace_id: str | None = None


def check_envelope(reply: HttpReply, what: str) -> Any:
    """Return ``data`` of a successful MOI envelope, or raise the matching ``IngestError``.

    MOI answers ``{"code": "OK", "msg", "data"}``; ``code`` is compared case-insensitively (some
    endpoints say ``"ok"``). ``ErrServer`` may arrive with HTTP 200.
    """
    body = reply.body if isinstance(reply.body, dict) else {}
    code = str(body.get("code", "")) if body else ""
    msg = str(body.get("msg") or body.get("message") or "").strip()
    if 200 <= reply.status < 300 and code.lower() == "ok":
        return body.get("data")
    lowered = code.lower()
    detail = f"{code}: {msg}" if code and msg else (code or msg or (str(reply.body)[:200] if reply.body else ""))
    detail = " ".join((detail or f"HTTP {reply.status}").split())[:300]  # one line, bounded
    if reply.status == 401 or lowered in _AUTH_CODES:
        raise AuthError(f"{what}: MOI rejected the API key ({code or reply.status}); check MOI_KEY or --api-key")
    if reply.status == 429 or lowered in _RATE_CODES:
        raise RateLimitedError(
            f"{what}: rate limited by MOI ({detail})",
            status=reply.status,
            code=code,
            retry_after=reply.retry_after,
        )
    if reply.status >= 500 or lowered in _SERVER_CODES:
        raise TransientError(
            f"{what}: MOI server error ({detail})",
            status=reply.status,
            code=code,
            retry_after=reply.retry_after,
        )
    if 200 <= reply.status < 300 and not code:
        raise TransientError(f"{what}: MOI answered without an envelope ({detail})", status=reply.status)
    text = f"MOI refused ({detail})"
    raise PermanentError(f"{what}: {text}", status=reply.status, code=code, detail=text)


@register_target
class MoiTarget(Target):
    name = "moi"
    config_model = MoiTargetConfig
    secret_env: ClassVar[Mapping[str, str]] = {"api_key": "MOI_KEY"}
    cli_options = (
        CliOption("--volume-id", "volume_id", "MOI: the volume to load files into", metavar="ID"),
        CliOption(
            "--api-key",
            "api_key",
            "MOI: API key (prefer the MOI_KEY environment variable: the command line is visible to others)",
            metavar="KEY",
        ),
        CliOption(
            "--file-status-table",
            "file_status_table",
            "MOI: status codes of /task/files: 'seed' (4 failed, 5 success; default) or 'v5' (3 failed, 4 success)",
            choices=("seed", "v5"),
        ),
        CliOption("--workspace-id", "workspace_id", "MOI 5.0: workspace id, sent as X-Workspace-ID", metavar="ID"),
    )
    features = TargetFeatures(
        # MOI 5.0 documents at most 20 files per upload request.
        max_batch_files=20,
        max_batch_bytes=32 * 1024 * 1024,
        max_batched_file_size=4 * 1024 * 1024,
        batch_poll=True,
        server_dedup=True,
        server_retry=True,
    )

    def __init__(self, config: MoiTargetConfig, context: TargetContext) -> None:
        self.config = config
        self.context = context
        key = config.api_key.get_secret_value()
        headers = {"moi-key": key} if config.auth_header == "moi-key" else {"X-API-Key": key}
        if config.workspace_id:
            headers["X-Workspace-ID"] = config.workspace_id
        headers["User-Agent"] = "ingest/0.1 (+moi)"
        self.http = HttpClient(
            config.endpoint,
            headers=headers,
            connections=context.connections,
            read_timeout=context.request_timeout,
        )
        self._status_table = _STATUS_TABLES[config.file_status_table]

    @classmethod
    def from_config(cls, config: Any, context: TargetContext) -> MoiTarget:
        if not isinstance(config, MoiTargetConfig):
            raise TypeError("MoiTarget needs a MoiTargetConfig")
        return cls(config, context)

    def describe(self) -> str:
        return f"MOI volume {self.config.volume_id} at {self.config.endpoint}"

    def identity(self) -> str:
        return f"moi:{self.config.endpoint}/volume/{self.config.volume_id}"

    async def open(self) -> None:
        """Check the key and the volume with one cheap call, so a typo fails before any upload."""
        what = f"checking MOI volume {self.config.volume_id}"
        reply = await self.http.request(
            "POST", "/catalog/volume/info", what=what, json_body={"id": self.config.volume_id}
        )
        try:
            check_envelope(reply, what)
        except PermanentError as exc:
            if exc.status == 404 or (exc.code or "").lower() == "errnotfound":
                raise ConfigError(
                    f"MOI volume {self.config.volume_id} does not exist at {self.config.endpoint}; "
                    "create it or pass the id of an existing volume with --volume-id"
                ) from None
            raise ConfigError(str(exc)) from None

    # ----- upload --------------------------------------------------------------------------------

    async def submit(self, items: Sequence[FileItem], *, dedup: bool) -> list[Receipt]:
        what = f"upload of {items[0].rel_path}" + (f" and {len(items) - 1} more" if len(items) > 1 else "")
        form = aiohttp.FormData(quote_fields=False)
        meta = [
            {
                "file_name": item.rel_path,
                "file_size": item.size,
                "mime_type": mimetypes.guess_type(item.rel_path)[0] or "application/octet-stream",
            }
            for item in items
        ]
        form.add_field("VolumeID", self.config.volume_id)
        form.add_field("meta", json.dumps(meta, ensure_ascii=False))
        if dedup:
            form.add_field("dedup", json.dumps(DEDUP_SKIP))
        bodies: list[FileBody] = []
        try:
            for item, entry in zip(items, meta, strict=True):
                body = FileBody(
                    item,
                    chunk_size=self.context.chunk_size,
                    on_bytes=self.context.on_bytes,
                    content_type=str(entry["mime_type"]),
                    filename=item.rel_path,
                )
                bodies.append(body)
                form.add_field("file", body, filename=item.rel_path, content_type=str(entry["mime_type"]))
            reply = await self.http.request("POST", "/connectors/upload", what=what, data=form, file_bodies=bodies)
        finally:
            for body in bodies:
                body.close_now()
        data = check_envelope(reply, what) or {}
        return self._receipts(items, data, bodies, what)

    def _receipts(
        self, items: Sequence[FileItem], data: dict[str, Any], bodies: Sequence[FileBody], what: str
    ) -> list[Receipt]:
        task_id = data.get("task_id")
        task = str(task_id) if task_id not in (None, "") else None
        results = data.get("results")
        if not isinstance(results, list) or not results:
            # Single-file replies may carry only the top-level file_id.
            results = [{"success": data.get("success", True), "file_id": data.get("file_id")}]
        if len(results) != len(items):
            raise TransientError(f"{what}: MOI returned {len(results)} results for {len(items)} files")
        receipts = []
        for item, result, body in zip(items, results, bodies, strict=True):
            if not result.get("success", False):
                reason = str(result.get("message") or "rejected by MOI")
                receipts.append(Receipt(item.rel_path, error=f"MOI refused the file: {reason}"))
                continue
            file_id = result.get("file_id")
            receipts.append(
                Receipt(
                    item.rel_path,
                    remote_id=str(file_id) if file_id not in (None, "") else None,
                    task_id=task,
                    extra={"md5": body.hexdigest},
                )
            )
        return receipts

    # ----- polling -------------------------------------------------------------------------------

    async def poll(self, receipts: Sequence[Receipt]) -> list[RemoteStatus]:
        by_task: dict[str, list[Receipt]] = defaultdict(list)
        statuses: list[RemoteStatus] = []
        for receipt in receipts:
            if receipt.task_id is None or receipt.remote_id is None:
                statuses.append(
                    RemoteStatus(receipt.rel_path, RemoteState.FAILED, "MOI gave no task or file id to follow")
                )
            else:
                by_task[receipt.task_id].append(receipt)
        calls = [functools.partial(self._poll_task, task_id, wanted) for task_id, wanted in by_task.items()]
        for found in await run_concurrently(calls, limit=POLL_PARALLEL_TASKS):
            statuses.extend(found)
        return statuses

    async def _poll_task(self, task_id: str, wanted: list[Receipt]) -> list[RemoteStatus]:
        what = f"status of MOI task {task_id}"
        found: dict[str, tuple[int, str]] = {}
        want_ids = {r.remote_id for r in wanted}
        page = 1
        while True:
            reply = await self.http.request(
                "GET",
                "/task/files",
                what=what,
                params={"task_id": task_id, "page": page, "page_size": TASK_FILES_PAGE},
            )
            try:
                data = check_envelope(reply, what) or {}
            except PermanentError as exc:
                if exc.status == 404:
                    reason = f"MOI no longer knows task {task_id}"
                    return [RemoteStatus(r.rel_path, RemoteState.FAILED, reason) for r in wanted]
                raise
            files = data.get("files") or []
            for f in files:
                fid = str(f.get("id"))
                if fid in want_ids:
                    found[fid] = (int(f.get("status") or 0), str(f.get("reason") or ""))
            total = int(data.get("total") or 0)
            if len(found) == len(want_ids) or not files or page * TASK_FILES_PAGE >= total:
                break
            page += 1
        out = []
        for r in wanted:
            if r.remote_id not in found:
                out.append(
                    RemoteStatus(r.rel_path, RemoteState.FAILED, f"MOI task {task_id} does not list file {r.remote_id}")
                )
                continue
            code, reason = found[r.remote_id]
            state = self._status_table.get(code, RemoteState.PENDING)
            out.append(
                RemoteStatus(
                    r.rel_path,
                    state,
                    (reason or f"MOI file status {code}") if state is RemoteState.FAILED else None,
                )
            )
        return out

    async def retry(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        by_task: dict[str, list[Receipt]] = defaultdict(list)
        for receipt in receipts:
            if receipt.task_id is not None and receipt.remote_id is not None:
                by_task[receipt.task_id].append(receipt)
        for task_id, group in by_task.items():
            what = f"retry of {len(group)} file(s) in MOI task {task_id}"
            reply = await self.http.request(
                "POST",
                "/task/retry",
                what=what,
                json_body={"task_id": task_id, "ids": [r.remote_id for r in group]},
            )
            check_envelope(reply, what)
        return list(receipts)

    async def aclose(self) -> None:
        await self.http.aclose()


def is_remote_error(exc: BaseException) -> bool:
    return isinstance(exc, RemoteError)
