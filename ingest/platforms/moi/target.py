"""MatrixOne Intelligence (MOI): local files into a volume through ``POST /connectors/upload``.

One upload request carries up to ``max_batch_files`` files as repeated ``file`` parts with a ``meta``
array in MOI 5.0's form (``filename`` = the file's name, ``path`` = its relative path in the tree)
and creates one MOI task; ``/task/files`` reports each file's status and ``/task/retry`` re-runs the
failed ones. Dedup uses ``{"by": ["name", "md5"], "strategy": "skip"}``. Tasks are followed together
through ``/task/list`` pages (``tasklist``), falling back to ``/task/files`` for the tasks the list
cannot settle.

The volume's files are listed with ``/catalog/file/list`` (one ``volume_id`` filter, paged) and deleted
one by one with ``/catalog/file/delete`` (``{"id"}``); the id is the upload's ``file_id``, which is what a
receipt carries. A changed file uploaded again is a new file of its own id (``version_ids="new"``): the
old one stays until it is deleted. See docs/moi.md for the documentation followed.
"""

from __future__ import annotations

import calendar
import functools
import posixpath
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from ingest._aio import run_concurrently
from ingest.errors import ConfigError, PermanentError, TransientError
from ingest.models import FileItem, Receipt, RemoteState, RemoteStatus
from ingest.platforms.base import RemoteDocument, Target, TargetContext, TargetFeatures
from ingest.platforms.moi.config import MoiTargetConfig
from ingest.platforms.moi.tasklist import TaskOrder, Verdict, listed_tasks, verdict
from ingest.platforms.moi.wire import FILE_STATUS_TABLES, CatalogFile, DedupConfig, UploadFileResult, UploadResult

if TYPE_CHECKING:
    from ingest.platforms.moi.client import MoiClient

__all__ = ["MoiTarget", "MoiTargetConfig"]

DEDUP_SKIP = DedupConfig(by=["name", "md5"], strategy="skip")
TASK_FILES_PAGE = 1000
POLL_PARALLEL_TASKS = 8
#: Tasks a poll must follow before a ``/task/list`` page is worth asking instead of their ``/task/files``
#: (one task is one request either way, and ``/task/files`` answers it exactly).
LIST_MIN_TASKS = 2
#: ``Receipt.extra`` key: how many files the upload that made the receipt's task carried.
TASK_FILES = "task_files"
#: Files per ``/catalog/file/list`` page, and ``/catalog/file/delete`` calls in flight (one id each).
CATALOG_PAGE = 100
DELETE_PARALLEL = 8


class MoiTarget(Target):
    name = "moi"
    features = TargetFeatures(
        # MOI 5.0 documents at most 20 files per upload request.
        max_batch_files=20,
        max_batch_bytes=32 * 1024 * 1024,
        max_batched_file_size=4 * 1024 * 1024,
        server_dedup=True,
        server_retry=True,
        can_list=True,  # /catalog/file/list (MOI 5.0 "Query file list", moi-python-sdk RawClient.list_files)
        can_delete=True,  # /catalog/file/delete (moi-python-sdk RawClient.delete_file, moi-go-sdk FileDeleteRequest)
        version_ids="new",  # every upload is a file of its own id; dedup skips only an identical name + md5
    )

    def __init__(self, config: MoiTargetConfig, context: TargetContext) -> None:
        self.config = config
        self.context = context
        self._status_table = FILE_STATUS_TABLES[config.file_status_table]
        #: Off once MOI refuses ``/task/list`` (say, a key without the right): ``/task/files`` alone then.
        self._use_task_list = True
        #: The upload tasks made and still followed, in order: the list page a poll needs.
        self._task_order = TaskOrder()

    @functools.cached_property
    def client(self) -> MoiClient:
        """Made (and the HTTP stack imported: aiohttp, its TLS contexts) at the first request: a rerun that
        finds every file done never sends one (benchmarks/README.md, Issue 11)."""
        from ingest.platforms.moi.client import MoiClient

        config, context = self.config, self.context
        # Requests are sent once each: the engine owns retries (with backoff, Retry-After and dedup).
        return MoiClient(
            config.endpoint,
            config.api_key,
            auth_header=config.auth_header,
            workspace_id=config.workspace_id,
            connections=context.connections,
            request_timeout=context.request_timeout,
            retries=None,
            budget=context.budget,
        )

    def describe(self) -> str:
        return f"MOI volume {self.config.volume_id} at {self.config.endpoint}"

    def identity(self) -> str:
        return f"moi:{self.config.endpoint}/volume/{self.config.volume_id}"

    async def open(self) -> None:
        """Check the key and the volume with one cheap call, so a typo fails before any upload."""
        try:
            await self.client.volume_info(self.config.volume_id)
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
        reply = await self.client.upload_files(
            self.config.volume_id,
            items,
            dedup=DEDUP_SKIP if dedup else None,
            chunk_size=self.context.chunk_size,
            on_bytes=self.context.on_bytes,
        )
        return self._receipts(items, reply.result, reply.md5s, what)

    def _receipts(self, items: Sequence[FileItem], data: UploadResult, md5s: Sequence[str], what: str) -> list[Receipt]:
        task = data.task_id or None
        if task is not None:
            self._task_order.made(task)
        results = data.results
        if not results:
            # Single-file replies may carry only the top-level file_id.
            results = [UploadFileResult(success=data.success, file_id=data.file_id)]
        if len(results) != len(items):
            raise TransientError(f"{what}: MOI returned {len(results)} results for {len(items)} files")
        receipts = []
        for item, result, md5 in zip(items, results, md5s, strict=True):
            if not result.success:
                reason = result.message or "rejected by MOI"
                receipts.append(Receipt(item.rel_path, error=f"MOI refused the file: {reason}"))
                continue
            extra = {"md5": md5, TASK_FILES: str(len(items))}
            receipts.append(Receipt(item.rel_path, remote_id=result.file_id or None, task_id=task, extra=extra))
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
        task_of = {r.rel_path: task_id for task_id, wanted in by_task.items() for r in wanted}
        statuses.extend(await self._settle_from_list(by_task))
        calls = [functools.partial(self._poll_task_or_skip, task_id, wanted) for task_id, wanted in by_task.items()]
        for found in await run_concurrently(calls, limit=POLL_PARALLEL_TASKS):
            statuses.extend(found)
        # A task with an answer this round and no file still pending is not followed any more. (One that
        # got no answer, a hiccup, is.)
        answered = {task_of[s.rel_path] for s in statuses if s.rel_path in task_of}
        pending = {task_of[s.rel_path] for s in statuses if s.state is RemoteState.PENDING and s.rel_path in task_of}
        self._task_order.settled(answered - pending)
        return statuses

    async def _settle_from_list(self, by_task: dict[str, list[Receipt]]) -> list[RemoteStatus]:
        """Statuses of the tasks the ``/task/list`` pages settle; those tasks leave ``by_task`` (what stays
        there is asked through ``/task/files``). A batched task is settled as a whole: running, all its
        files are pending; finished with every file it carried in success, all are done."""
        listable = {task_id: files for task_id, wanted in by_task.items() if (files := _task_files(wanted))}
        if not self._use_task_list or len(listable) < LIST_MIN_TASKS:
            return []
        listed = await listed_tasks(self.client, listable, self._task_order.page_size(listable))
        if listed is None:
            self._use_task_list = False
            return []
        statuses: list[RemoteStatus] = []
        for task_id, files in listable.items():
            found = verdict(listed.get(task_id), files)
            if found is Verdict.ASK_FILES:
                continue
            state = RemoteState.DONE if found is Verdict.DONE else RemoteState.PENDING
            statuses.extend(RemoteStatus(receipt.rel_path, state) for receipt in by_task.pop(task_id))
        return statuses

    async def _poll_task_or_skip(self, task_id: str, wanted: list[Receipt]) -> list[RemoteStatus]:
        """One task's statuses; none this round if MOI hiccups, so one flaky task never stalls a batch."""
        try:
            return await self._poll_task(task_id, wanted)
        except TransientError:
            return []

    async def _poll_task(self, task_id: str, wanted: list[Receipt]) -> list[RemoteStatus]:
        found: dict[str, tuple[int, str]] = {}
        want_ids = {r.remote_id for r in wanted}
        page = 1
        while True:
            try:
                data = await self.client.task_file_states(task_id, page=page, page_size=TASK_FILES_PAGE)
            except PermanentError as exc:
                if exc.status == 404 or (exc.code or "").lower() == "errnotfound":
                    reason = f"MOI no longer knows task {task_id} ({exc.detail})"
                    return [RemoteStatus(r.rel_path, RemoteState.FAILED, reason) for r in wanted]
                raise
            for f in data.files:
                if f.id in want_ids:
                    found[f.id] = (f.status, f.reason)
            if len(found) == len(want_ids) or not data.files or page * TASK_FILES_PAGE >= data.total:
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
        retried: list[Receipt] = []
        for task_id, group in by_task.items():
            try:
                await self.client.retry_task(task_id, [str(r.remote_id) for r in group])
            except TransientError:
                continue  # left out: the engine asks again after the next poll
            retried.extend(group)
        return retried

    # ----- listing and deleting --------------------------------------------------------------------

    async def list_documents(self) -> AsyncIterator[RemoteDocument]:
        """Every file of the volume, newest first, one page in memory at a time; folders are left out."""
        async for f in self.client.iter_files(self.config.volume_id, page_size=CATALOG_PAGE):
            if f.file_type != "folder":
                yield _document(f)

    async def delete(self, remote_ids: Sequence[str]) -> list[str]:
        calls = [functools.partial(self._delete_one, remote_id) for remote_id in remote_ids]
        return [remote_id for remote_id in await run_concurrently(calls, limit=DELETE_PARALLEL) if remote_id]

    async def _delete_one(self, remote_id: str) -> str | None:
        """The id once it is gone (deleted now, or unknown to MOI); ``None`` after a transient error."""
        try:
            await self.client.delete_file(remote_id)
        except TransientError:
            return None
        return remote_id

    async def aclose(self) -> None:
        if "client" in self.__dict__:  # never made: nothing to close
            await self.client.aclose()


def _task_files(wanted: list[Receipt]) -> int:
    """How many files the upload that made these receipts' task carried; 0 when a receipt does not say
    (written before receipts said it: resumed from an older manifest), so the task is asked its files."""
    counts = {r.extra.get(TASK_FILES) for r in wanted}
    if len(counts) != 1:
        return 0
    (count,) = counts
    return int(count) if count is not None and count.isdigit() and len(wanted) <= int(count) else 0


def _document(f: CatalogFile) -> RemoteDocument:
    folder = posixpath.dirname(f.show_path) if f.show_path else (f.parent_id or "")
    extra = {"parent_id": f.parent_id} if f.parent_id else {}
    if f.show_path:
        extra["path"] = f.show_path
    return RemoteDocument(
        remote_id=f.id, name=f.name, folder=folder or None, size=f.size, created=_seconds(f.created_at), extra=extra
    )


def _seconds(value: str | int | None) -> float | None:
    """MOI's ``created_at``: ``YYYY-MM-DD HH:MM:SS`` (taken as UTC), or epoch seconds/milliseconds."""
    if isinstance(value, int):
        return value / 1000 if value > 10**11 else float(value)
    if not value:
        return None
    try:
        return float(calendar.timegm(time.strptime(value[:19], "%Y-%m-%d %H:%M:%S")))
    except ValueError:
        return None
