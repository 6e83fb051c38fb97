"""Volcengine VikingDB knowledge base: each local file is staged in TOS (any S3-compatible store), then
added with ``POST /api/knowledge/doc/add`` and followed with ``doc/list`` / ``doc/info`` until the
platform says ``process_status`` 0 (done) or 1 (failed, with ``failed_code`` and ``failed_msg``).

The platform has no upload API of its own (API-NOTES section 2): documents come from TOS (``add_type:
tos``, ``tos_path`` = ``<bucket>/<key>``) or a URL (``add_type: url``, here a presigned GET URL of the
staged object). Every file gets a deterministic ``doc_id`` from its relative path (``viking_naming``):
the platform has no dedup the engine could ask for, so resuming after a crash looks the id up with
``doc/info`` (``find_existing``), and a failed document is simply added again, which overwrites it.

The knowledge base's documents are listed with ``doc/list`` (``offset``/``limit`` pages of 100, newest
first) and deleted with ``doc/delete``. The doc_id is the path's, not the version's: a changed file is
added under the same id, which overwrites the document (``version_ids="same"``; docs/viking.md says why).

A knowledge base that is full (1001010) stops the run from sending more; a missing one (1000005) is a
configuration error. ``ingest viking task-info ID`` shows a download task (``/api/knowledge/task/info``).
"""

from __future__ import annotations

import functools
import logging
import posixpath
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from ingest._aio import run_concurrently
from ingest.errors import ConfigError, TransientError
from ingest.http import one_line
from ingest.models import FileItem, Receipt, RemoteState, RemoteStatus
from ingest.platforms.base import RemoteDocument, Target, TargetContext, TargetFeatures
from ingest.platforms.viking.api import TaskInfo, VikingApi
from ingest.platforms.viking.config import StagingConfig, VikingTargetConfig
from ingest.platforms.viking.doctypes import SIZE_LIMITS, doc_type_for, supported_extensions
from ingest.platforms.viking.naming import doc_id_for, doc_name_for, meta_for, source_path_metadata, staging_key
from ingest.platforms.viking.signing import Credentials
from ingest.platforms.viking.staging import Staging, StagingSettings

__all__ = ["VikingTarget", "VikingTargetConfig", "fetch_task_info"]

log = logging.getLogger(__name__)

#: Ids per ``doc/list`` call (the documented maximum ``limit``), and such calls in parallel.
LIST_CHUNK = 100
POLL_PARALLEL = 8

#: What ``failed_code`` means (API-NOTES section 2), for messages when the platform's is empty.
FAILED_CODES = {
    10001: "download timeout",
    10002: "download failed",
    10003: "URL verification failed",
    10005: "Feishu (lark) document access error",
    30001: "file over the size limit",
    40004: "more than 10,000 chunks",
    45002: "more than 200 pages",
}
DELETING = 5


class VikingTarget(Target):
    name = "viking"
    features = TargetFeatures(
        max_batch_files=1,  # doc/add takes one document
        server_dedup=False,  # nothing to ask for: find_existing checks the deterministic doc_id instead
        server_retry=False,  # re-adding the same doc_id overwrites: the engine sends failed files again
        can_list=True,  # doc/list, offset/limit pages (API-NOTES section 2)
        can_delete=True,  # doc/delete by doc_id
        # One doc_id per path (naming.doc_id_for): a changed file is re-added under it, which overwrites.
        version_ids="same",
    )

    def __init__(self, config: VikingTargetConfig, context: TargetContext) -> None:
        self.config = config
        self.context = context
        credentials = Credentials(
            config.access_key.get_secret_value(), config.secret_key.get_secret_value(), config.region
        )
        if config.resource_id:
            kb_fields = {"resource_id": config.resource_id}
        else:
            assert config.collection_name is not None
            kb_fields = {"collection_name": config.collection_name, "project": config.project}
        self.api = VikingApi(
            config.endpoint,
            credentials,
            kb_fields=kb_fields,
            kb_label=config.knowledge_base(),
            connections=context.connections,
            read_timeout=context.request_timeout,
            budget=context.budget,
        )
        #: The TOS VikingDB reads: where a by-reference source must be.
        self.tos_endpoint = config.staging.endpoint_for(config.region)
        #: ``None`` only by reference without a staging bucket (the config requires one otherwise).
        self._staging = (
            None
            if config.staging.bucket is None
            else Staging(
                _staging_settings(config, config.staging.bucket),
                chunk_size=context.chunk_size,
                on_bytes=context.on_bytes,
                connections=context.connections,
                read_timeout=context.request_timeout,
            )
        )
        self._warned_ids = False

    @property
    def staging(self) -> Staging:
        if self._staging is None:
            raise RuntimeError("no staging bucket: only --by-reference runs without one")
        return self._staging

    def describe(self) -> str:
        where = f"staged in {self._staging.describe()}" if self._staging is not None else "by reference"
        return f"VikingDB knowledge base {self.config.knowledge_base()} at {self.config.endpoint} ({where})"

    def identity(self) -> str:
        kb = (
            f"resource/{self.config.resource_id}"
            if self.config.resource_id
            else f"{self.config.project}/{self.config.collection_name}"
        )
        ids = f"#ids={self.config.doc_id_prefix}" if self.config.doc_id_prefix else ""
        return f"viking:{self.config.endpoint}/{kb}{ids}"

    async def open(self) -> None:
        """Connectivity (``GET /ping``), credentials and the knowledge base; the staging bucket alongside."""

        async def check_api() -> None:
            await self.api.ping()
            await self.api.collection_info()

        await run_concurrently([check_api, *([self._staging.open] if self._staging is not None else [])], limit=2)

    def refuse(self, item: FileItem) -> str | None:
        doc_type = doc_type_for(item.rel_path)
        if doc_type is None:
            ext = posixpath.splitext(item.rel_path)[1]
            what = f"{ext} files" if ext else "files without an extension"
            leave_out = f"--exclude '*{ext}'" if ext else "--exclude"
            return f"VikingDB does not take {what} (it takes {supported_extensions()}); leave them out with {leave_out}"
        limit = SIZE_LIMITS.get(doc_type)
        if limit is not None and item.size > limit:
            return (
                f"VikingDB takes {doc_type} files up to {limit // (1024 * 1024)} MiB and this one is"
                f" {item.size / (1024 * 1024):.1f} MiB; leave it out with --max-size or split it"
            )
        return None

    # ----- adding --------------------------------------------------------------------------------

    def _doc_id(self, item: FileItem) -> str:
        return doc_id_for(item.rel_path, self.config.doc_id_prefix)

    async def submit(self, items: Sequence[FileItem], *, dedup: bool) -> list[Receipt]:
        return [await self._add(item) for item in items]

    async def _add(self, item: FileItem) -> Receipt:
        doc_type = doc_type_for(item.rel_path)
        if doc_type is None:  # refuse() keeps these out; a file renamed since the walk lands here
            return Receipt(item.rel_path, error=self.refuse(item))
        doc_id = self._doc_id(item)
        if self.config.by_reference:
            return await self._add_by_reference(item, doc_id, doc_type)
        key = staging_key(self.staging.settings.prefix, doc_id, item)
        # doc_id in the object metadata is how the platform names a document added by tos_path.
        staged = await self.staging.put(item, key, {"doc_id": doc_id, **source_path_metadata(item.rel_path)})
        fields: dict[str, Any] = {
            "add_type": self.config.add_type,
            "doc_id": doc_id,
            "doc_name": doc_name_for(item.rel_path),
            "doc_type": doc_type,
        }
        if self.config.add_type == "tos":
            fields["tos_path"] = f"{self.staging.settings.bucket}/{key}"
        else:
            fields["url"] = await self.staging.presign(key, self.config.url_expires)
        if self.config.meta:
            fields["meta"] = meta_for(self.config.meta, item.rel_path)
        data = await self.api.add_doc(fields, what=f"adding {item.rel_path}")
        given = str(data.get("doc_id") or doc_id)
        if given != doc_id and not self._warned_ids:
            self._warned_ids = True
            log.warning(
                "VikingDB named %s %s instead of %s: the staging store dropped the doc_id metadata, so a rerun"
                " after a crash cannot recognise documents already added; consider --add-type url",
                item.rel_path,
                given,
                doc_id,
            )
        return Receipt(item.rel_path, remote_id=given, extra={"md5": staged.md5, "key": key})

    def _reference(self, item: FileItem) -> tuple[str, str]:
        """``(bucket, key)`` of a source object VikingDB can read itself, or ``ConfigError``."""
        ref = item.origin.reference() if item.origin is not None else None
        if ref is None:
            raise ConfigError(
                "--by-reference adds objects of an s3:// source by their tos_path; this source is a local folder:"
                " drop --by-reference to stage its files"
            )
        endpoint, bucket, key = ref
        tos = self.tos_endpoint.rstrip("/")
        if (endpoint or "").rstrip("/") != tos:
            raise ConfigError(
                f"--by-reference: the source bucket is at {endpoint or 'AWS S3'}, not in the TOS VikingDB reads"
                f" ({tos}); drop --by-reference to stage copies, or set --staging-endpoint if it is that TOS"
            )
        return bucket, key

    async def _add_by_reference(self, item: FileItem, doc_id: str, doc_type: str) -> Receipt:
        """``doc/add`` of the source object itself (``add_type: tos``): no staging, no bytes sent."""
        bucket, key = self._reference(item)
        fields: dict[str, Any] = {
            "add_type": "tos",
            "doc_id": doc_id,
            "doc_name": doc_name_for(item.rel_path),
            "doc_type": doc_type,
            "tos_path": f"{bucket}/{key}",
        }
        if self.config.meta:
            fields["meta"] = meta_for(self.config.meta, item.rel_path)
        data = await self.api.add_doc(fields, what=f"adding {item.rel_path} by reference")
        return Receipt(
            item.rel_path, remote_id=str(data.get("doc_id") or doc_id), extra={"tos_path": fields["tos_path"]}
        )

    async def find_existing(self, item: FileItem) -> Receipt | None:
        """The document for this version of the file, if a crash interrupted the run after its doc/add."""
        if self.config.by_reference:
            # The object's key names every version alike: add again, which replaces the doc_id's document.
            return None
        doc_id = self._doc_id(item)
        key = staging_key(self.staging.settings.prefix, doc_id, item)
        doc = await self.api.doc_info(doc_id, what=f"looking up {item.rel_path}")
        if doc is None or not self._from_key(doc, key):
            return None  # never added, or added from an older version of the file: add it (again)
        return Receipt(item.rel_path, remote_id=doc_id, extra={"key": key})

    def _from_key(self, doc: Mapping[str, Any], key: str) -> bool:
        """Whether the platform's document was added from the staged object ``key``."""
        if doc.get("tos_path") == f"{self.staging.settings.bucket}/{key}":
            return True
        url = doc.get("url")
        return isinstance(url, str) and unquote(urlsplit(url).path).endswith("/" + key)

    # ----- polling -------------------------------------------------------------------------------

    async def poll(self, receipts: Sequence[Receipt]) -> list[RemoteStatus]:
        statuses: list[RemoteStatus] = []
        pending: list[Receipt] = []
        for receipt in receipts:
            if receipt.remote_id is None:
                statuses.append(RemoteStatus(receipt.rel_path, RemoteState.FAILED, "VikingDB gave no doc_id to follow"))
            else:
                pending.append(receipt)
        chunks = [pending[i : i + LIST_CHUNK] for i in range(0, len(pending), LIST_CHUNK)]
        calls = [functools.partial(self._poll_chunk, chunk) for chunk in chunks]
        for found in await run_concurrently(calls, limit=POLL_PARALLEL):
            statuses.extend(found)
        return statuses

    async def _poll_chunk(self, receipts: list[Receipt]) -> list[RemoteStatus]:
        ids = [str(r.remote_id) for r in receipts]
        docs = await self.api.list_docs(ids, what=f"status of {len(ids)} document(s)")
        by_id = {str(d.get("doc_id")): d for d in docs}
        out = []
        for receipt in receipts:
            doc = by_id.get(str(receipt.remote_id))
            if doc is None:
                # Not listed: ask for it alone before calling it lost (a list may lag behind an add).
                doc = await self.api.doc_info(str(receipt.remote_id), what=f"status of {receipt.rel_path}")
            out.append(_status(receipt, doc))
        return out

    # ----- listing and deleting --------------------------------------------------------------------

    async def list_documents(self) -> AsyncIterator[RemoteDocument]:
        """Every document of the knowledge base, in ``doc/list`` pages of ``LIST_CHUNK`` (newest first).

        Documents being deleted (process_status 5) are left out: their deletion was accepted already.
        """
        offset = 0
        while True:
            total, docs = await self.api.list_page(offset, LIST_CHUNK, what="listing the knowledge base")
            for doc in docs:
                found = _remote_document(doc)
                if found is not None:
                    yield found
            offset += len(docs)
            if not docs or (total >= 0 and offset >= total):
                return

    async def delete(self, remote_ids: Sequence[str]) -> list[str]:
        calls = [functools.partial(self._delete_one, doc_id) for doc_id in remote_ids]
        return [doc_id for doc_id in await run_concurrently(calls, limit=POLL_PARALLEL) if doc_id]

    async def _delete_one(self, doc_id: str) -> str | None:
        """The id once it is gone (deleted now, or unknown: 1001001); ``None`` after a transient error."""
        try:
            await self.api.delete_doc(doc_id, what=f"deleting document {doc_id}")
        except TransientError:
            return None
        return doc_id

    async def aclose(self) -> None:
        try:
            await self.api.aclose()
        finally:
            if self._staging is not None:
                await self._staging.aclose()

    # ----- task/info -----------------------------------------------------------------------------

    async def task_info(self, task_id: str) -> TaskInfo:
        return await self.api.task_info(task_id)


def _staging_settings(config: VikingTargetConfig, bucket: str) -> StagingSettings:
    staging: StagingConfig = config.staging
    access = staging.access_key or config.access_key
    secret = staging.secret_key or config.secret_key
    return StagingSettings(
        endpoint=staging.endpoint_for(config.region),
        bucket=bucket,
        prefix=staging.prefix,
        region=staging.region or config.region,
        access_key=access.get_secret_value(),
        secret_key=secret.get_secret_value(),
        path_style=staging.uses_path_style(config.region),
        part_size=staging.part_size,
    )


def _status(receipt: Receipt, doc: Mapping[str, Any] | None) -> RemoteStatus:
    if doc is None:
        return RemoteStatus(
            receipt.rel_path, RemoteState.FAILED, f"VikingDB no longer has document {receipt.remote_id}"
        )
    raw = doc.get("status")
    status: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    code = status.get("process_status")
    if code == 0:
        return RemoteStatus(receipt.rel_path, RemoteState.DONE)
    if code == 1:
        failed_code = status.get("failed_code")
        message = one_line(str(status.get("failed_msg") or ""))
        meaning = message or FAILED_CODES.get(failed_code if isinstance(failed_code, int) else -1, "unknown reason")
        return RemoteStatus(
            receipt.rel_path,
            RemoteState.FAILED,
            f"VikingDB failed to process it: {meaning} (failed_code {failed_code})",
        )
    if code == DELETING:
        return RemoteStatus(
            receipt.rel_path, RemoteState.FAILED, "VikingDB is deleting the document (process_status 5)"
        )
    return RemoteStatus(receipt.rel_path, RemoteState.PENDING)


def _remote_document(doc: Mapping[str, Any]) -> RemoteDocument | None:
    doc_id = doc.get("doc_id")
    if not isinstance(doc_id, str) or not doc_id:
        return None
    raw = doc.get("status")
    status: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    code = status.get("process_status")
    if code == DELETING:
        return None
    state = RemoteState.DONE if code == 0 else RemoteState.FAILED if code == 1 else RemoteState.PENDING
    reason = one_line(str(status.get("failed_msg") or "")) or None if state is RemoteState.FAILED else None
    size, created = doc.get("doc_size"), doc.get("create_time")
    md5 = doc.get("doc_hash")
    return RemoteDocument(
        remote_id=doc_id,
        name=str(doc.get("doc_name") or ""),
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        # doc_hash is documented without its algorithm: kept as a hint, not compared as an md5.
        md5=None,
        state=state,
        reason=reason,
        created=created / 1000 if isinstance(created, int) and not isinstance(created, bool) else None,
        extra={"doc_hash": md5} if isinstance(md5, str) and md5 else {},
    )


# ----- ``ingest viking task-info`` ------------------------------------------------------------------------


async def fetch_task_info(config: VikingTargetConfig, task_id: str) -> TaskInfo:
    """``task/info`` for ``task_id`` with the endpoint, region and keys of ``config``."""
    credentials = Credentials(config.access_key.get_secret_value(), config.secret_key.get_secret_value(), config.region)
    api = VikingApi(config.endpoint, credentials, kb_fields={}, kb_label=config.knowledge_base())
    try:
        return await api.task_info(task_id)
    finally:
        await api.aclose()
