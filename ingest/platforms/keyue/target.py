"""Baidu Keyue (客悦): local files into a knowledge directory through ``llm_document_import``.

One import request carries one file (``file`` + the ``taskExtend`` training options) into one
directory, and returns the document id. Learning is followed through ``/llm/document/list``: one
listing per directory per poll round (newest first, stopping as soon as every document sought is
seen), or a lookup by name when that is cheaper. ``learnStatus`` -1 is failed, 0 learning, 1 learned,
2 knowledge enhancement (done or not, by ``treat_enhancing_as_done``). Failed documents are retried
with ``batchRetrain``. Keyue has no documented dedup, so a file a crash left mid-upload is looked up
by name (and size) in its directory before it is sent again. Without ``--mirror-dirs``, every file is
a document of its base name in the one destination directory: base names several files share are
counted in one names-only pass over the folder and warned about before the first upload
(``ingest.platforms.keyue.names``).

The destination's documents are listed with ``/llm/document/list`` directory by directory (with
``--mirror-dirs``, the destination directory and every directory below it) and deleted with
``/llm/document/batchDelete``. Every import is a new document of its own id (``version_ids="new"``).
See docs/keyue.md for the documentation followed.
"""

from __future__ import annotations

import calendar
import functools
import math
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from ingest._aio import run_concurrently
from ingest.errors import AuthError, ConfigError, PermanentError, TransientError
from ingest.models import FileItem, Receipt, RemoteState, RemoteStatus
from ingest.multipart_names import control_character_problem
from ingest.platforms.base import RemoteDocument, Target, TargetContext, TargetFeatures
from ingest.platforms.keyue.api import DELETE_FAILED, PAGE_SIZE, KeyueApi, as_int
from ingest.platforms.keyue.config import KeyueTargetConfig
from ingest.platforms.keyue.dirs import ROOT_DIR, DirectoryTree
from ingest.platforms.keyue.names import count_shared_names, shared_names_warning
from ingest.sources.base import Source
from ingest.sources.local import LocalSource, WalkStats, walk

__all__ = ["KeyueTarget", "KeyueTargetConfig"]

#: Directories listed at once in one poll round.
POLL_PARALLEL_DIRS = 8
#: Ids per ``batchRetrain`` request.
RETRAIN_BATCH = 100
#: Pages of name matches read when looking a document up by name.
MAX_NAME_PAGES = 50
#: Ids per ``batchDelete`` request.
DELETE_BATCH = 100

# learnStatus (API-NOTES section 3; -2 "crawl failed" and 3 "crawling" from the web list page).
_FAILED = {-1: "Keyue could not learn the document (learnStatus -1)", -2: "Keyue could not fetch it (learnStatus -2)"}
_LEARNED, _ENHANCING = 1, 2


def _split(rel_path: str) -> tuple[str, str]:
    """``a/b/c.txt`` → (``a/b``, ``c.txt``): the folder and the document name Keyue sees."""
    folder, _, name = rel_path.rpartition("/")
    return folder, name


class KeyueTarget(Target):
    name = "keyue"
    # One document per import request; learning states come by directory listing; no dedup.
    features = TargetFeatures(
        max_batch_files=1,
        server_dedup=False,
        server_retry=True,
        can_list=True,  # GET /llm/document/list per directory (DocumentList)
        can_delete=True,  # POST /llm/document/batchDelete (DocumentDelete)
        version_ids="new",  # every import is a document of its own id
    )

    def __init__(self, config: KeyueTargetConfig, context: TargetContext) -> None:
        self.config = config
        self.context = context
        self.api = KeyueApi(config, context)
        self.tree = DirectoryTree(self.api, config.dir_id)
        self._task_extend = config.task_extend()

    def describe(self) -> str:
        mirrored = ", mirroring folders as directories" if self.config.mirror_dirs else ""
        return f"Keyue directory {self.config.dir_id} at {self.config.endpoint}{mirrored}"

    def identity(self) -> str:
        c = self.config
        return f"keyue:{c.endpoint}{c.api_base}/user/{c.uid}/dir/{c.dir_id}" + ("/mirror" if c.mirror_dirs else "")

    async def open(self) -> None:
        """Check the credentials and the destination directory with one directory listing."""
        c = self.config
        try:
            await self.tree.load()
        except PermanentError as exc:
            if exc.status == 404:
                raise ConfigError(
                    f"no Keyue API at {c.endpoint}{c.api_base} (HTTP 404); check --endpoint and --api-prefix"
                ) from None
            # Listing directories takes no parameters: a refusal can only be about the headers.
            raise AuthError(
                f"Keyue refused the credentials: {exc.detail}; check KEYUE_TOKEN (or --token), --uid and --username"
            ) from None
        if c.dir_id == ROOT_DIR:
            return
        found = self.tree.get(c.dir_id)
        if found is None:
            raise ConfigError(
                f"Keyue directory {c.dir_id} does not exist at {c.endpoint}; pass the id of an existing directory "
                "with --dir-id (0 is the default directory)"
            )
        if not found.has_perm:
            raise ConfigError(f"user {c.uid} has no permission on Keyue directory {c.dir_id} ({found.name!r})")

    async def preflight(self, source: Source) -> None:
        """Without ``--mirror-dirs``, warn about base names several files share (they become documents of
        the same name in one directory): one names-only pass over a local folder, before any upload. Other
        sources are not listed twice (a remote listing costs requests); nor is anything when nobody listens."""
        if self.config.mirror_dirs or self.context.on_message is None or not isinstance(source, LocalSource):
            return
        shared = await count_shared_names(self._names(source))
        if shared is not None:
            self.context.on_message(shared_names_warning(shared, self.config.dir_id))

    async def _names(self, source: LocalSource) -> AsyncIterator[str]:
        """The document name of every file the run would send. A walk of its own, so that the source's
        counts of what was passed over stay those of the run's walk."""
        async for entry in walk(source.root, source.options, WalkStats(), own_state=source.own_state):
            if isinstance(entry, FileItem) and self.refuse(entry) is None:
                yield _split(entry.rel_path)[1]

    # ----- import --------------------------------------------------------------------------------

    def refuse(self, item: FileItem) -> str | None:
        # The document's name is the multipart part's filename (a header), and mirrored folders become
        # directory names: Keyue takes neither with a control character (ingest.multipart_names).
        _, name = _split(item.rel_path)
        return control_character_problem(item.rel_path if self.config.mirror_dirs else name, "Keyue")

    async def _directory_of(self, item: FileItem, *, create: bool) -> str | None:
        folder, _ = _split(item.rel_path)
        if not self.config.mirror_dirs or not folder:
            return self.config.dir_id
        return await self.tree.ensure(folder) if create else self.tree.lookup(folder)

    async def submit(self, items: Sequence[FileItem], *, dedup: bool) -> list[Receipt]:
        receipts = []
        for item in items:  # one document per request: ``max_batch_files`` is 1
            existing = await self.find_existing(item) if dedup else None
            receipts.append(existing or await self._import(item))
        return receipts

    async def _import(self, item: FileItem) -> Receipt:
        dir_id = await self._directory_of(item, create=True)
        assert dir_id is not None
        _, name = _split(item.rel_path)
        data, md5 = await self.api.import_document(item, name, dir_id, self._task_extend)
        doc_id = data.get("id") if isinstance(data, dict) else None
        if doc_id in (None, "") or isinstance(doc_id, bool):
            return Receipt(item.rel_path, error="Keyue accepted the file but returned no document id to follow")
        extra = {"dir_id": dir_id, "name": name, "md5": md5}
        if isinstance(data, dict) and data.get("taskStatus") is not None:
            extra["task_status"] = str(data["taskStatus"])
        return Receipt(item.rel_path, remote_id=str(doc_id), extra=extra)

    async def find_existing(self, item: FileItem) -> Receipt | None:
        """The document a crash mid-upload may have left: same name and size in the file's directory."""
        dir_id = await self._directory_of(item, create=False)
        if dir_id is None:
            return None  # its directory was never created, so neither was the document
        _, name = _split(item.rel_path)
        try:
            found = await self._by_name(dir_id, name)
        except PermanentError:
            return None  # the directory cannot be listed: the import will say why, for this file alone
        for doc in found:
            if as_int(doc.get("size")) == item.size:
                return Receipt(item.rel_path, remote_id=str(doc["id"]), extra={"dir_id": dir_id, "name": name})
        return None

    async def _by_name(self, dir_id: str, name: str) -> list[dict[str, Any]]:
        """Documents of ``dir_id`` named exactly ``name`` (the keyword search also finds near names)."""
        matches: list[dict[str, Any]] = []
        async with aclosing(self._pages(dir_id, keyword=name, max_pages=MAX_NAME_PAGES)) as pages:
            async for docs in pages:
                matches.extend(d for d in docs if d.get("name") == name and d.get("id") not in (None, ""))
        return matches

    async def _pages(
        self, dir_id: str, *, keyword: str | None = None, start: int = 1, max_pages: int | None = None
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """Pages of a directory listing from ``start`` on, until the last one (by ``total`` when the
        platform gives it, else by a short or empty page)."""
        pn = start
        while max_pages is None or pn < start + max_pages:
            page = await self.api.documents(dir_id, pn=pn, keyword=keyword)
            docs = [d for d in page.get("list") or [] if isinstance(d, dict)]
            yield docs
            size, total = as_int(page.get("ps")) or PAGE_SIZE, as_int(page.get("total"))
            if not docs or (pn * size >= total if total is not None else len(docs) < size):
                return
            pn += 1

    # ----- polling -------------------------------------------------------------------------------

    async def poll(self, receipts: Sequence[Receipt]) -> list[RemoteStatus]:
        by_dir: dict[str, list[Receipt]] = defaultdict(list)
        statuses: list[RemoteStatus] = []
        for receipt in receipts:
            dir_id = receipt.extra.get("dir_id")
            if receipt.remote_id is None or not dir_id:
                reason = "Keyue gave no document id or directory to follow"
                statuses.append(RemoteStatus(receipt.rel_path, RemoteState.FAILED, reason))
            else:
                by_dir[dir_id].append(receipt)
        calls = [functools.partial(self._poll_dir_or_later, dir_id, wanted) for dir_id, wanted in by_dir.items()]
        results = await run_concurrently(calls, limit=POLL_PARALLEL_DIRS)
        errors = [error for _, error in results if error is not None]
        if results and len(errors) == len(results):
            raise errors[0]  # Keyue is unreachable for now: let the engine back off
        for found, _ in results:
            statuses.extend(found)
        return statuses

    async def _poll_dir_or_later(
        self, dir_id: str, wanted: list[Receipt]
    ) -> tuple[list[RemoteStatus], TransientError | None]:
        """One directory's statuses; a listing that failed transiently leaves them pending, so one
        failed request among hundreds of directories does not cost the whole round."""
        try:
            return await self._poll_dir(dir_id, wanted), None
        except TransientError as exc:
            return [RemoteStatus(r.rel_path, RemoteState.PENDING) for r in wanted], exc

    async def _poll_dir(self, dir_id: str, wanted: list[Receipt]) -> list[RemoteStatus]:
        """The documents of one directory: page through its listing (newest first) until every one
        sought is seen, or look the rest up by name when that takes fewer requests."""
        want = {str(r.remote_id): r for r in wanted}
        seen: dict[str, dict[str, Any]] = {}

        def take(docs: list[Any]) -> None:
            for d in docs:
                if isinstance(d, dict) and str(d.get("id")) in want:
                    seen[str(d["id"])] = d

        try:
            first = await self.api.documents(dir_id, pn=1)
            take(first.get("list") or [])
            page_size = max(1, as_int(first.get("ps")) or PAGE_SIZE)
            total = as_int(first.get("total"))
            pages_left = math.ceil(total / page_size) - 1 if total is not None else None
            missing = [r for doc_id, r in want.items() if doc_id not in seen]
            if missing and pages_left is not None and len(missing) < pages_left:
                for r in missing:
                    take(await self._by_name(dir_id, r.extra.get("name") or _split(r.rel_path)[1]))
            elif missing and len(first.get("list") or []) >= page_size and pages_left != 0:
                async with aclosing(self._pages(dir_id, start=2)) as pages:
                    async for docs in pages:
                        take(docs)
                        if len(seen) == len(want):
                            break
        except PermanentError as exc:
            # The directory itself is refused (deleted meanwhile?): its documents cannot be followed.
            return [RemoteStatus(r.rel_path, RemoteState.FAILED, exc.detail) for r in wanted]
        return [self._status(r, seen.get(doc_id)) for doc_id, r in want.items()]

    def _status(self, receipt: Receipt, doc: dict[str, Any] | None) -> RemoteStatus:
        if doc is None:
            reason = f"Keyue directory {receipt.extra.get('dir_id')} no longer lists document {receipt.remote_id}"
            return RemoteStatus(receipt.rel_path, RemoteState.FAILED, reason)
        status = as_int(doc.get("learnStatus"))
        if status in _FAILED:
            detail = str(doc.get("errorMsg") or doc.get("failReason") or "").strip()
            reason = f"{_FAILED[status]}: {detail}" if detail else _FAILED[status]
            return RemoteStatus(receipt.rel_path, RemoteState.FAILED, reason)
        if status == _LEARNED or (status == _ENHANCING and self.config.treat_enhancing_as_done):
            return RemoteStatus(receipt.rel_path, RemoteState.DONE)
        return RemoteStatus(receipt.rel_path, RemoteState.PENDING)  # learning, enhancing, crawling, unknown

    async def retry(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        ids = [r.remote_id for r in receipts if r.remote_id is not None]
        for start in range(0, len(ids), RETRAIN_BATCH):
            await self.api.retrain(ids[start : start + RETRAIN_BATCH])
        return list(receipts)

    # ----- listing and deleting --------------------------------------------------------------------

    async def list_documents(self) -> AsyncIterator[RemoteDocument]:
        """Every document of the destination directory (and, with ``--mirror-dirs``, of every directory
        below it), one page of one directory in memory at a time."""
        if self.config.mirror_dirs:
            await self.tree.load()  # directories made since the run began (or by another run) count too
            directories = self.tree.subtree()
        else:
            directories = [(self.config.dir_id, "")]
        for dir_id, path in directories:
            async with aclosing(self._pages(dir_id)) as pages:
                async for docs in pages:
                    for doc in docs:
                        if doc.get("id") not in (None, ""):
                            yield _document(doc, dir_id, path)

    async def delete(self, remote_ids: Sequence[str]) -> list[str]:
        gone: list[str] = []
        for start in range(0, len(remote_ids), DELETE_BATCH):
            gone.extend(await self._delete_batch(list(remote_ids[start : start + DELETE_BATCH])))
        return gone

    async def _delete_batch(self, ids: list[str]) -> list[str]:
        """The ids of ``ids`` that are gone. Keyue refuses a whole batch with 4007283 ("文档删除失败") when
        one id cannot be deleted, without saying which: the batch is split until the refused ids stand
        alone, and an id refused alone is one Keyue does not hold (see docs/keyue.md)."""
        try:
            await self.api.delete_documents(ids)
        except TransientError:
            return []
        except PermanentError as exc:
            if exc.code != str(DELETE_FAILED) and as_int(exc.code) != DELETE_FAILED:
                raise
            if len(ids) == 1:
                return ids
            half = len(ids) // 2
            return [*await self._delete_batch(ids[:half]), *await self._delete_batch(ids[half:])]
        return ids

    async def aclose(self) -> None:
        await self.api.aclose()


_STATES = {_LEARNED: RemoteState.DONE, -1: RemoteState.FAILED, -2: RemoteState.FAILED}


def _document(doc: dict[str, Any], dir_id: str, path: str) -> RemoteDocument:
    status = as_int(doc.get("learnStatus"))
    state = _STATES.get(status if status is not None else 0, RemoteState.PENDING)
    reason = str(doc.get("errorMsg") or "").strip() or None if state is RemoteState.FAILED else None
    return RemoteDocument(
        remote_id=str(doc["id"]),
        name=str(doc.get("name") or ""),
        folder=dir_id,
        size=as_int(doc.get("size")),
        state=state,
        reason=reason,
        created=_beijing_seconds(doc.get("created")),
        extra={"dir_path": path, "learn_status": str(status)},
    )


def _beijing_seconds(value: Any) -> float | None:
    """Keyue's ``YYYY-MM-DD HH:MM:SS`` (Beijing time, UTC+8) as seconds since the epoch."""
    if not isinstance(value, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(value[:19], "%Y-%m-%d %H:%M:%S")) - 8 * 3600)
    except ValueError:
        return None
