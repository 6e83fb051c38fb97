"""An async client for every endpoint of the MOI data-ingestion API (the seed document):

- connectors: ``create_connector``, ``validate_connector``, ``list_connectors`` / ``iter_connectors`` /
  ``get_connector``, ``update_connector``, ``delete_connector``, ``connector_files``,
  ``connector_summary``, and ``upload_files`` (``POST /connectors/upload``, local files into a volume);
- load tasks: ``create_task``, ``list_tasks`` / ``iter_tasks`` / ``find_tasks``, ``get_task``,
  ``task_files`` / ``iter_task_files``, ``update_task``, ``pause_task``, ``resume_task``,
  ``retry_task``, ``delete_task``;
- volumes: ``create_volume``, ``volume_info``;
- the volume catalog: ``list_files`` / ``iter_files`` (``/catalog/file/list``), ``delete_file``
  (``/catalog/file/delete``).

One pooled aiohttp session (``HttpClient``); every reply goes through ``check_envelope``, which turns
MOI's ``{"code", "msg", "data"}`` into ``data`` or the matching ``ingest.errors`` error. Requests
that are safe to repeat (reads, pause, resume, update, delete) are retried on transient errors with
``retries``; creations are sent once, because MOI gives no idempotency key: repeating a ``POST /task``
whose answer was lost would create a second task. The API key is sent, never logged or put in errors.

``POST /connectors`` and ``POST /task`` answer without the new object's id in the seed document, so
``create_connector`` finds the connector by its (unique) name and ``create_task`` finds the newest task
of that connector and volume with exactly those uris.
"""

from __future__ import annotations

import json
import mimetypes
import posixpath
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from multidict import MultiDict
from pydantic import BaseModel, Field, SecretStr, ValidationError

from ingest.errors import (
    SERVER_STATUSES,
    AnyCase,
    AuthError,
    ErrorRules,
    PermanentError,
    PermissionDenied,
    RateLimitedError,
    Rule,
    TransientError,
    classify,
)
from ingest.formdata import Form
from ingest.http import HttpClient, HttpReply
from ingest.models import FileItem
from ingest.multipart_names import header_filename
from ingest.platforms.moi.wire import (
    BLOCK_FOR,
    CatalogFile,
    CatalogFilePage,
    Connector,
    ConnectorConfig,
    ConnectorCreate,
    ConnectorPage,
    ConnectorQuery,
    ConnectorSummary,
    ConnectorUpdate,
    DedupConfig,
    SourceFile,
    SourceType,
    Task,
    TaskCreate,
    TaskFile,
    TaskFilesPage,
    TaskFileStatePage,
    TaskPage,
    TaskQuery,
    TaskState,
    TaskUpdate,
    UploadResult,
    ValidateResult,
    Volume,
    wire,
)
from ingest.ratelimit import RequestBudget
from ingest.retry import RetryPolicy, retrying

__all__ = ["MOI_ERRORS", "ListedPage", "MoiClient", "UploadReply", "check_envelope"]

#: MOI's error replies (API-NOTES section 4, "Error codes"), codes in any case. 403 ``ErrForbidden`` is a
#: ``PermissionDenied`` (one line, exit 2). Not listed, hence ``PermanentError`` with MOI's words: 400
#: ``ErrParamInvalid``…, 404 ``ErrNotFound``, 409 ``ErrAlreadyExists``…
MOI_ERRORS = ErrorRules(
    "MOI",
    rows=(
        Rule(
            AuthError,
            "{what}: MOI rejected the API key ({code_or_status}); check MOI_KEY or --api-key",
            status={401},
            code=AnyCase("ErrUnauthorized", "ErrUnauthenticated", "Unauthorized", "Unauthenticated"),
        ),
        Rule(
            PermissionDenied,
            "{what}: MOI refused: the API key has no permission for this ({detail}); use a key with access",
            status={403},
            code=AnyCase("ErrForbidden"),
        ),
        Rule(
            RateLimitedError,
            "{what}: rate limited by MOI ({detail})",
            status={429},
            code=AnyCase("ErrDynamicServiceConcurrencyLimit", "ErrDynamicServiceRateLimit"),
        ),
        Rule(
            TransientError,
            "{what}: MOI server error ({detail})",
            status=SERVER_STATUSES,
            code=AnyCase("ErrServer", "ErrInternal", "ErrServiceUnavailable"),
        ),
    ),
    otherwise=Rule(PermanentError, "{what}: MOI refused ({detail})"),
)

_Item = TypeVar("_Item", covariant=True)

#: Page size used when a method walks every page of a list.
LIST_PAGE = 100
TASK_FILES_PAGE = 1000
#: Repeats of a safe request after connection errors, 5xx and 429 (``retries=None`` sends each once).
DEFAULT_RETRIES = RetryPolicy(attempts=5, max_delay=5.0)
#: Newest tasks ``create_task`` looks through for the one it just created.
FIND_CREATED_PAGES = 5


def check_envelope(reply: HttpReply, what: str) -> Any:
    """Return ``data`` of a successful MOI envelope, or raise the matching ``IngestError`` (``MOI_ERRORS``).

    MOI answers ``{"code": "OK", "msg", "data"}``; ``code`` is compared case-insensitively (some
    endpoints say ``"ok"``). ``ErrServer`` may arrive with HTTP 200.
    """
    body = reply.envelope
    code = str(body.get("code", "")) if body else ""
    msg = str(body.get("msg") or body.get("message") or "").strip()
    if 200 <= reply.status < 300 and code.lower() == "ok":
        return body.get("data")
    detail = f"{code}: {msg}" if code and msg else (code or msg or (str(reply.body)[:200] if reply.body else ""))
    detail = " ".join((detail or f"HTTP {reply.status}").split())[:300]  # one line, bounded
    raise classify(
        MOI_ERRORS, what=what, status=reply.status, code=code or None, detail=detail, retry_after=reply.retry_after
    )


def _not_found(what: str, detail: str) -> PermanentError:
    return PermanentError(f"{what}: {detail}", status=404, code="ErrNotFound", detail=detail)


def _params(model: BaseModel | None) -> MultiDict[str]:
    """Query parameters: booleans as ``true``/``false``, arrays as repeated parameters."""
    params: MultiDict[str] = MultiDict()
    for key, value in (wire(model) if model is not None else {}).items():
        for item in value if isinstance(value, list) else [value]:
            params.add(key, ("true" if item else "false") if isinstance(item, bool) else str(item))
    return params


def _parse(model: type[Any], data: Any, what: str) -> Any:
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "data"
        raise TransientError(f"{what}: MOI answered in an unexpected form ({where}: {err['msg']})") from None


class _Page(Protocol[_Item]):
    @property
    def files(self) -> Sequence[_Item]: ...
    @property
    def total(self) -> int: ...


async def _every(fetch: Callable[[int], Awaitable[_Page[_Item]]], page_size: int) -> AsyncIterator[_Item]:
    """Every item of a paged list: ``fetch(page)`` gives one page (``files``, ``total``), pages from 1."""
    number = 1
    while True:
        page = await fetch(number)
        for item in page.files:
            yield item
        if not page.files or number * page_size >= page.total:
            return
        number += 1


class _TaskRows(BaseModel):
    """A ``/task/list`` page whose tasks stay raw objects, for ``list_task_states`` to validate the few it wants."""

    tasks: list[Any] = Field(default_factory=list)
    total: int = 0


@dataclass(frozen=True, slots=True)
class ListedPage:
    """What ``list_task_states`` read: the id of every task on the page (in order), the wanted ones found."""

    ids: list[str]
    found: dict[str, TaskState]
    total: int


@dataclass(frozen=True, slots=True)
class UploadReply:
    """What ``upload_files`` got back, and the md5 of each file as it was streamed."""

    result: UploadResult
    md5s: list[str]


class MoiClient:
    """The MOI API at one endpoint with one key. Use as ``async with MoiClient(...) as moi:``."""

    def __init__(
        self,
        endpoint: str,
        api_key: str | SecretStr,
        *,
        auth_header: Literal["moi-key", "x-api-key"] = "moi-key",
        workspace_id: str | None = None,
        connections: int = 16,
        request_timeout: float = 300.0,
        retries: RetryPolicy | None = DEFAULT_RETRIES,
        budget: RequestBudget | None = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        headers = {"moi-key": key} if auth_header == "moi-key" else {"X-API-Key": key}
        if workspace_id:
            headers["X-Workspace-ID"] = workspace_id
        headers["User-Agent"] = "ingest/0.1 (+moi)"
        self.endpoint = endpoint.rstrip("/")
        self.http = HttpClient(
            self.endpoint, headers=headers, connections=connections, read_timeout=request_timeout, budget=budget
        )
        self.retries = retries

    async def __aenter__(self) -> MoiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: MultiDict[str] | dict[str, str] | None = None,
        json_body: Any = None,
        repeatable: bool = True,
    ) -> Any:
        async def once() -> Any:
            reply = await self.http.request(method, path, what=what, params=params, json_body=json_body)
            return check_envelope(reply, what)

        if self.retries is None or not repeatable:
            return await once()
        return await retrying(once, self.retries, what=what)

    # ----- connectors ----------------------------------------------------------------------------------------

    async def create_connector(self, spec: ConnectorCreate) -> Connector:
        """Create a connector and return it as the platform lists it."""
        what = f"creating MOI connector {spec.name!r}"
        data = await self._call("POST", "/connectors", what=what, json_body=spec.to_wire(), repeatable=False)
        if isinstance(data, dict) and data.get("id") not in (None, ""):
            return await self.get_connector(int(data["id"]))
        found = await self.find_connector(spec.name)
        if found is None:
            raise TransientError(
                f"{what}: MOI accepted it but does not list it; look with `ingest moi connectors list`"
            )
        return found

    async def validate_connector(
        self,
        source_type: SourceType | int,
        config: ConnectorConfig | None = None,
        *,
        connector_id: int | None = None,
    ) -> ValidateResult:
        """Ask MOI to connect to a source, by config or by a stored connector's id."""
        kind = SourceType(source_type)
        body: dict[str, Any] = {"source_type": int(kind)}
        if connector_id is not None:
            body["connector_id"] = connector_id
        if config is not None:
            body[BLOCK_FOR[kind]] = wire(config)
        target = f"connector {connector_id}" if connector_id is not None else f"a {kind.name} connector config"
        what = f"validating {target}"
        data = await self._call("POST", "/connectors/validate", what=what, json_body=body)
        result: ValidateResult = _parse(ValidateResult, data, what)
        return result

    async def list_connectors(self, query: ConnectorQuery | None = None) -> ConnectorPage:
        what = "listing MOI connectors"
        data = await self._call("GET", "/connectors/list", what=what, params=_params(query))
        page: ConnectorPage = _parse(ConnectorPage, data, what)
        return page

    async def iter_connectors(self, query: ConnectorQuery | None = None) -> AsyncIterator[Connector]:
        """Every connector matching ``query``, page by page."""
        base = query or ConnectorQuery()
        page_no = 1
        while True:
            page = await self.list_connectors(base.model_copy(update={"page": page_no, "page_size": LIST_PAGE}))
            for connector in page.connectors:
                yield connector
            if not page.connectors or page_no * LIST_PAGE >= page.total:
                return
            page_no += 1

    async def find_connector(self, name: str) -> Connector | None:
        """The connector with exactly this name, or ``None``."""
        async for connector in self.iter_connectors(ConnectorQuery(keyword=name)):
            if connector.name == name:
                return connector
        return None

    async def get_connector(self, connector_id: int) -> Connector:
        """One connector by id (the API has no single-connector read: this walks the list)."""
        async for connector in self.iter_connectors():
            if connector.id == connector_id:
                return connector
        raise _not_found(f"looking up MOI connector {connector_id}", f"MOI has no connector {connector_id}")

    async def update_connector(self, connector_id: int, update: ConnectorUpdate) -> None:
        what = f"updating MOI connector {connector_id}"
        await self._call("PUT", f"/connectors/{connector_id}", what=what, json_body=update.to_wire())

    async def delete_connector(self, connector_id: int) -> None:
        what = f"deleting MOI connector {connector_id}"
        await self._call("DELETE", f"/connectors/{connector_id}", what=what)

    async def connector_files(self, connector_id: int, file_types: Iterable[int] = ()) -> list[SourceFile]:
        """The files a connector's source holds (``type`` 10 entries are folders)."""
        what = f"listing the source files of MOI connector {connector_id}"
        params: MultiDict[str] = MultiDict({"connector_id": str(connector_id)})
        for kind in file_types:
            params.add("file_types", str(int(kind)))
        data = await self._call("GET", "/connectors/files/list", what=what, params=params)
        files = (data or {}).get("files") if isinstance(data, dict) else None
        return [_parse(SourceFile, f, what) for f in files or []]

    async def connector_summary(self) -> ConnectorSummary:
        what = "reading the MOI connector summary"
        data = await self._call("GET", "/connectors/summary", what=what)
        summary: ConnectorSummary = _parse(ConnectorSummary, data, what)
        return summary

    async def upload_files(
        self,
        volume_id: str,
        items: Sequence[FileItem],
        *,
        dedup: DedupConfig | None = None,
        chunk_size: int = 1024 * 1024,
        on_bytes: Callable[[int], None] | None = None,
    ) -> UploadReply:
        """``POST /connectors/upload``: stream local files into a volume as one task (MOI 5.0 ``meta``).

        Each file is read in ``chunk_size`` pieces while it is sent; never whole in memory. Sent once:
        the caller decides whether a failed upload may be repeated (with ``dedup``).
        """
        what = f"upload of {items[0].rel_path}" + (f" and {len(items) - 1} more" if len(items) > 1 else "")
        form = Form()
        # MOI 5.0's form (and the official SDK's): ``filename`` is the file's name, ``path`` its path in the
        # source tree. The request has no destination-folder field; the folder travels in ``path`` (see
        # docs/moi.md, "Which field carries the folder").
        meta = [{"filename": posixpath.basename(item.rel_path), "path": item.rel_path} for item in items]
        form.add_field("VolumeID", volume_id)
        form.add_field("meta", json.dumps(meta, ensure_ascii=False))
        if dedup is not None:
            form.add_field("dedup", json.dumps(wire(dedup)))
        for item, entry in zip(items, meta, strict=True):
            # meta[] names the file (JSON carries any character); the part's filename is a label,
            # encoded so that a control character in a name cannot break the request.
            content_type = mimetypes.guess_type(item.rel_path)[0] or "application/octet-stream"
            form.add_file("file", item, filename=header_filename(entry["filename"]), content_type=content_type)
        async with form.body(chunk_size=chunk_size, on_bytes=on_bytes) as sent:
            reply = await self.http.request(
                "POST",
                "/connectors/upload",
                what=what,
                data=sent.data,
                headers=sent.headers,
                file_bodies=sent.file_bodies,
            )
        data = check_envelope(reply, what) or {}
        result: UploadResult = _parse(UploadResult, data, what)
        return UploadReply(result, sent.md5s)

    # ----- load tasks ----------------------------------------------------------------------------------------

    async def create_task(self, spec: TaskCreate) -> Task | None:
        """Create a load task; return it, or ``None`` when MOI accepted it but it cannot be found yet.

        Sent once (see the module docstring): after a lost answer, look for the task with ``find_tasks``
        before creating it again.
        """
        what = f"creating a MOI load task for {len(spec.uris)} uri(s) of connector {spec.source_connector_id}"
        data = await self._call("POST", "/task", what=what, json_body=spec.to_wire(), repeatable=False)
        task_id = data.get("task_id") or data.get("id") if isinstance(data, dict) else None
        if task_id not in (None, ""):
            return await self.get_task(str(task_id))
        wanted = set(spec.uris)
        newest: Task | None = None
        page_no = 1
        while page_no <= FIND_CREATED_PAGES:
            page = await self.list_tasks(
                TaskQuery(order_by="created_at", is_desc=True, page=page_no, page_size=LIST_PAGE)
            )
            for task in page.tasks:
                if self._matches(task, spec.source_connector_id, spec.volume_id) and set(task.uris) == wanted:
                    if newest is None or int(task.id) > int(newest.id):
                        newest = task
            if newest is not None or not page.tasks or page_no * LIST_PAGE >= page.total:
                break
            page_no += 1
        return newest

    @staticmethod
    def _matches(task: Task, connector_id: int, volume_id: str) -> bool:
        return task.source_connector_id == connector_id and task.volume_id == str(volume_id)

    async def list_tasks(self, query: TaskQuery | None = None) -> TaskPage:
        what = "listing MOI tasks"
        data = await self._call("GET", "/task/list", what=what, params=_params(query))
        page: TaskPage = _parse(TaskPage, data, what)
        return page

    async def list_task_states(self, query: TaskQuery, wanted: Collection[str]) -> ListedPage:
        """A ``/task/list`` page read for polling: every task's id, and the state of the ``wanted`` ones.

        Only the wanted tasks are validated (``wire.TaskState``): the others, other writers' tasks or ours
        already settled, are most of a page, and validating a ``Task`` each was the poll's main cost.
        """
        what = "listing MOI tasks"
        data = await self._call("GET", "/task/list", what=what, params=_params(query))
        page: _TaskRows = _parse(_TaskRows, data, what)
        ids: list[str] = []
        found: dict[str, TaskState] = {}
        for row in page.tasks:
            task_id = row.get("id") if isinstance(row, dict) else None
            if isinstance(task_id, int) and not isinstance(task_id, bool):
                task_id = str(task_id)
            if not isinstance(task_id, str):
                raise TransientError(f"{what}: MOI answered in an unexpected form (tasks.{len(ids)}.id: not an id)")
            ids.append(task_id)
            if task_id in wanted:
                found.setdefault(task_id, _parse(TaskState, row, what))
        return ListedPage(ids, found, page.total)

    async def iter_tasks(self, query: TaskQuery | None = None) -> AsyncIterator[Task]:
        """Every task matching ``query``, page by page."""
        base = query or TaskQuery()
        page_no = 1
        while True:
            page = await self.list_tasks(base.model_copy(update={"page": page_no, "page_size": LIST_PAGE}))
            for task in page.tasks:
                yield task
            if not page.tasks or page_no * LIST_PAGE >= page.total:
                return
            page_no += 1

    async def find_tasks(self, connector_id: int, volume_id: str) -> AsyncIterator[Task]:
        """Every load task of this connector into this volume (the list API cannot filter by them)."""
        async for task in self.iter_tasks(TaskQuery(order_by="created_at")):
            if self._matches(task, connector_id, volume_id):
                yield task

    async def get_task(self, task_id: str) -> Task:
        """One task. An unknown id is a ``PermanentError`` (MOI says ``ErrServer`` with HTTP 200)."""
        what = f"reading MOI task {task_id}"
        try:
            data = await self._call("GET", "/task/get", what=what, params={"task_id": str(task_id)})
        except TransientError as exc:
            if exc.status == 200 and (exc.code or "").lower() == "errserver":
                raise _not_found(what, f"MOI does not know task {task_id} ({exc.detail})") from None
            raise
        # The seed wraps the task in {"task": …}; the SDKs read it flat. Accept both.
        inner = data.get("task") if isinstance(data, dict) and isinstance(data.get("task"), dict) else data
        task: Task = _parse(Task, inner, what)
        return task

    async def task_files(
        self, task_id: str, *, status: int | None = None, page: int = 1, page_size: int = TASK_FILES_PAGE
    ) -> TaskFilesPage:
        what = f"reading the files of MOI task {task_id}"
        data = await self._task_files(task_id, status, page, page_size, what)
        files: TaskFilesPage = _parse(TaskFilesPage, data, what)
        return files

    async def task_file_states(
        self, task_id: str, *, page: int = 1, page_size: int = TASK_FILES_PAGE
    ) -> TaskFileStatePage:
        """``task_files`` for polling: each file's id, status and reason only (``wire.TaskFileState``)."""
        what = f"reading the files of MOI task {task_id}"
        data = await self._task_files(task_id, None, page, page_size, what)
        files: TaskFileStatePage = _parse(TaskFileStatePage, data, what)
        return files

    async def _task_files(self, task_id: str, status: int | None, page: int, page_size: int, what: str) -> Any:
        params = {"task_id": str(task_id), "page": str(page), "page_size": str(page_size)}
        if status is not None:
            params["status"] = str(status)
        try:
            return await self._call("GET", "/task/files", what=what, params=params)
        except TransientError as exc:
            # As /task/get: MOI answers an unknown (or deleted) task with ErrServer inside HTTP 200. A real
            # server error comes with a 5xx status and stays transient.
            if exc.status == 200 and (exc.code or "").lower() == "errserver":
                raise _not_found(what, f"MOI does not know task {task_id} ({exc.detail})") from None
            raise

    def iter_task_files(self, task_id: str, *, status: int | None = None) -> AsyncIterator[TaskFile]:
        return _every(lambda number: self.task_files(task_id, status=status, page=number), TASK_FILES_PAGE)

    async def update_task(self, update: TaskUpdate) -> None:
        what = f"updating MOI task {update.task_id}"
        await self._call("POST", "/task/update", what=what, json_body=update.to_wire())

    async def delete_task(self, task_id: str) -> None:
        await self._call("POST", "/task/delete", what=f"deleting MOI task {task_id}", json_body={"task_id": task_id})

    async def pause_task(self, task_id: str) -> None:
        await self._call("POST", "/task/pause", what=f"pausing MOI task {task_id}", json_body={"task_id": task_id})

    async def resume_task(self, task_id: str) -> None:
        await self._call("POST", "/task/resume", what=f"resuming MOI task {task_id}", json_body={"task_id": task_id})

    async def retry_task(self, task_id: str, file_ids: Sequence[str]) -> None:
        """Re-run failed files of a task (``ids`` are ``/task/files`` ids). Sent once: a retry is an action."""
        what = f"retry of {len(file_ids)} file(s) in MOI task {task_id}"
        body = {"task_id": task_id, "ids": list(file_ids)}
        await self._call("POST", "/task/retry", what=what, json_body=body, repeatable=False)

    # ----- volumes -------------------------------------------------------------------------------------------

    async def create_volume(self, name: str, *, database_id: int = 0, description: str = "") -> str:
        what = f"creating MOI volume {name!r}"
        body = {"database_id": database_id, "name": name, "description": description}
        data = await self._call("POST", "/catalog/volume/create", what=what, json_body=body, repeatable=False)
        if not isinstance(data, dict) or data.get("id") in (None, ""):
            raise TransientError(f"{what}: MOI answered without the new volume's id")
        return str(data["id"])

    async def volume_info(self, volume_id: str) -> Volume:
        what = f"checking MOI volume {volume_id}"
        data = await self._call("POST", "/catalog/volume/info", what=what, json_body={"id": volume_id})
        volume: Volume = _parse(Volume, data, what)
        return volume

    # ----- the volume catalog --------------------------------------------------------------------------------

    async def list_files(self, volume_id: str, *, page: int = 1, page_size: int = LIST_PAGE) -> CatalogFilePage:
        """One page of a volume's files, newest first (MOI 5.0 "Query file list"; moi-go-sdk ``FileListRequest``)."""
        what = f"listing the files of MOI volume {volume_id}"
        body = {
            "filters": [{"name": "volume_id", "values": [volume_id], "fuzzy": False}],
            "page": page,
            "page_size": page_size,
            "order": "desc",
            "order_by": "created_at",
        }
        data = await self._call("POST", "/catalog/file/list", what=what, json_body=body)
        files: CatalogFilePage = _parse(CatalogFilePage, data, what)
        return files

    def iter_files(self, volume_id: str, *, page_size: int = LIST_PAGE) -> AsyncIterator[CatalogFile]:
        """Every file of a volume, page by page (one page in memory at a time)."""
        return _every(lambda number: self.list_files(volume_id, page=number, page_size=page_size), page_size)

    async def delete_file(self, file_id: str) -> bool:
        """``/catalog/file/delete`` with ``{"id"}``; ``False`` when MOI does not know the file (404 ``ErrNotFound``)."""
        what = f"deleting MOI file {file_id}"
        try:
            await self._call("POST", "/catalog/file/delete", what=what, json_body={"id": file_id})
        except PermanentError as exc:
            if exc.status == 404 or (exc.code or "").lower() == "errnotfound":
                return False
            raise
        return True
