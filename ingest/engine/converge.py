"""Convergence: a rerun leaves the destination holding exactly one current document per source file.

Around the engine (``Convergence.around``), inside the manifest's writer:

1. **Resume** what a crash left: delete intents (``deleting`` rows of ``ingest.manifest.versions``) are
   carried out again (``Target.delete`` is idempotent); with ``version_ids == "same"`` every earlier
   version still recorded is deleted before anything is sent.
2. **Removed files** (an ``ingest run`` of a local folder): every file of the manifest is looked up in the
   source. A file now excluded by the filters is kept (and counted so). A file gone is kept and counted
   ("no longer in the source") unless ``--delete``: then, if the deletions stay within ``--max-delete``,
   its document becomes a ``removed`` version (the intent, committed in one transaction with the removal
   of its file row), else the run stops before sending or deleting anything (``MaxDeleteExceeded``).
   **Failed files gone from the source** (any run of a whole source, and ``retry-failed``): their
   failure no longer applies. Their rows go (``VersionStore.forget_failed``; a document the platform
   holds for one is a failed ``attempt``), they are counted in the meta ``failed_no_longer_in_source``,
   and neither the run's exit code nor ``retry-failed`` sees them again. Under ``--delete`` step 2
   already removed them with the other gone files.
3. The **engine** runs. A changed file's previous remote id was kept as a ``replaced`` version by the
   same transaction that recorded the new version's intent (``mark_uploading``). As files reach done
   (``mark_done``, seen through ``hooked``), a deleter task alongside the engine deletes their earlier
   versions (make before break): failpoint ``after-new-version-done``.
4. **Sweep**: whatever is left — earlier versions whose successor is done, every removed file's
   document, deletions a crash or an error interrupted — is deleted. Every delete is: intent committed
   (``before-old-deleted``), ``Target.delete``, then the rows forgotten (``mid-delete`` in between).

With ``version_ids == "same"`` (the platform reuses the id), ``SameIdTarget`` deletes a file's earlier
versions just before its new version is submitted (delete then add), each step recorded: a SIGKILL
anywhere converges on the next run to exactly one current document.

Only remote ids this manifest recorded are ever deleted; a version equal to its file's current remote id
(a dedup resend that found the same document) is forgotten, never deleted.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import anyio

from ingest import _failpoints
from ingest.config import SyncConfig
from ingest.errors import ConfigError, IngestError, PermanentError, TransientError
from ingest.manifest.base import Manifest
from ingest.manifest.versions import Version, VersionStore
from ingest.models import FileItem, FileState, Receipt
from ingest.platforms.base import ForwardingTarget, Target
from ingest.report import RunSummary
from ingest.retry import RetryPolicy, retrying
from ingest.sources.base import Rejected, Source
from ingest.sources.globs import GlobSet

#: Reasons of earlier versions: a done version replaced by a new one, or an attempt that failed (or was cut
#: short) and was sent again. With same ids only ``replaced`` is deleted before the send: a resent attempt
#: overwrites its own id, which the sweep then finds current and forgets.
_EARLIER = ("replaced", "attempt")

__all__ = [
    "DELETE_CHUNK",
    "GONE_FAILURES_META",
    "Convergence",
    "MaxDeleteExceeded",
    "SameIdTarget",
    "classify_paths",
    "delete_versions",
    "max_delete_limit",
]

log = logging.getLogger("ingest.converge")

#: The manifest meta counting failed files found gone from the source (and so no longer failed).
GONE_FAILURES_META = "failed_no_longer_in_source"
#: Remote ids per ``Target.delete`` call.
DELETE_CHUNK = 50
#: Deletes are retried like any request; ids still there after that stay recorded for the next run.
DELETE_RETRY = RetryPolicy(attempts=5, initial_delay=0.2, max_delay=5.0)


class MaxDeleteExceeded(IngestError):
    """``--delete`` would delete more than ``--max-delete`` allows: nothing was deleted (exit 1)."""


def max_delete_limit(spec: str, total: int) -> int:
    """``"10"`` → 10; ``"50%"`` of ``total`` files → ``floor(total / 2)``."""
    if spec.endswith("%"):
        return math.floor(total * float(spec[:-1]) / 100)
    return int(spec)


def replace_mode(sync: SyncConfig, target: Target) -> bool:
    """Whether changed files replace their previous documents on this run."""
    if sync.on_change == "keep":
        return False
    return sync.on_change == "replace" or target.features.can_delete


def check(sync: SyncConfig, target: Target) -> None:
    """Refuse, before any work, what ``target`` cannot do (one line, exit 2)."""
    if sync.delete and not target.features.can_delete:
        raise ConfigError(
            f"--delete needs a target that can delete documents, and {target.name} cannot; "
            "run without --delete (removed files stay on the platform)"
        )
    if sync.on_change == "replace" and not target.features.can_delete:
        raise ConfigError(
            f"--on-change replace needs a target that can delete documents, and {target.name} cannot; "
            "pass --on-change keep (a changed file's previous document then stays on the platform)"
        )


# ----- the source side: is a manifest path still in the source? --------------------------------------


def _local_status(root: str, options: Any, include: GlobSet, exclude: GlobSet, rel: str) -> str:
    # Plain strings, not ``Path``: this runs once per manifest row on every rerun (a million rows).
    if not options.hidden and (rel.startswith(".") or "/." in rel):
        return "excluded"
    if exclude and "/" in rel:
        parts = rel.split("/")
        if any(exclude.matches("/".join(parts[:i])) for i in range(1, len(parts))):
            return "excluded"
    try:
        st = os.stat(root + rel) if options.follow_symlinks else os.lstat(root + rel)
    except OSError:
        return "gone"
    if not stat.S_ISREG(st.st_mode):
        return "excluded" if stat.S_ISLNK(st.st_mode) else "gone"
    if (include and not include.matches(rel)) or (exclude and exclude.matches(rel)):
        return "excluded"
    if options.max_size is not None and st.st_size > options.max_size:
        return "excluded"
    return "present"


async def classify_paths(source: Source, paths: Sequence[str]) -> list[str]:
    """For each path: ``present`` (the walk yields it), ``excluded`` (on disk, but the filters now leave it
    out) or ``gone``."""
    from ingest.sources.local import LocalSource

    if isinstance(source, LocalSource):
        root, options = os.path.join(source.root, ""), source.options
        include, exclude = GlobSet(options.include), GlobSet(options.exclude)
        return await anyio.to_thread.run_sync(
            lambda: [_local_status(root, options, include, exclude, p) for p in paths]
        )
    out: list[str] = []
    for path in paths:
        found = await source.lookup(path)
        # Only a certain "not there" is gone: an object that could not be looked up (403, network) is
        # kept as it is, or a flaky store would have its documents deleted and its failures dropped.
        out.append("gone" if isinstance(found, Rejected) and found.gone else "present")
    return out


async def scan_removed(
    manifest: Manifest, source: Source, *, page: int = 500
) -> AsyncIterator[tuple[list[tuple[str, str | None]], int]]:
    """Pages of ``(path, remote_id)`` of manifest files gone from the source, with the number of files
    of that page now excluded by the filters. Flat memory: one page of paths at a time."""
    batch: list[tuple[str, str | None]] = []

    async def flush() -> tuple[list[tuple[str, str | None]], int]:
        states = await classify_paths(source, [p for p, _ in batch])
        gone = [entry for entry, s in zip(batch, states, strict=True) if s == "gone"]
        return gone, sum(s == "excluded" for s in states)

    for record in manifest.iter_files():
        batch.append((record.path, record.remote_id))
        if len(batch) >= page:
            yield await flush()
            batch = []
    if batch:
        yield await flush()


# ----- deleting --------------------------------------------------------------------------------------


async def delete_versions(
    target: Target,
    store: VersionStore,
    versions: Sequence[Version],
    *,
    on_deleted: Callable[[Version], None] | None = None,
) -> list[Version]:
    """Delete ``versions`` on the platform: the intent is committed first, each chunk is forgotten once the
    platform confirmed it. Returns the versions still there (a transient error): they stay recorded."""
    if not versions:
        return []
    await store.intend(versions)
    _failpoints.failpoint("before-old-deleted")
    left: list[Version] = []
    for start in range(0, len(versions), DELETE_CHUNK):
        chunk = list(versions[start : start + DELETE_CHUNK])
        ids = [v.remote_id for v in chunk]

        async def call(ids: list[str] = ids) -> list[str]:
            return await target.delete(ids)

        try:
            gone = set(await retrying(call, DELETE_RETRY, what="deleting documents"))
        except (TransientError, PermanentError) as exc:
            log.warning("deleting %d documents failed, the next run asks again: %s", len(ids), exc)
            left.extend(chunk)
            continue
        _failpoints.failpoint("mid-delete")
        done = [v for v in chunk if v.remote_id in gone]
        await store.forget(done)
        left.extend(v for v in chunk if v.remote_id not in gone)
        for v in done:
            log.info("deleted %s (%s, %s)", v.remote_id, v.path, v.reason)
            from ingest.logs import event

            event("delete", path=v.path, remote_id=v.remote_id, reason=v.reason)
            if on_deleted is not None:
                on_deleted(v)
    return left


class Convergence:
    """What one run does besides sending: see the module's docstring."""

    def __init__(
        self,
        *,
        target: Target,
        manifest: Manifest,
        source: Source,
        sync: SyncConfig,
        summary: RunSummary,
        run_id: int,
        scan_removed: bool,
        forget_gone_failures: bool = False,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.target = target
        self.manifest = manifest
        self.source = source
        self.sync = sync
        self.summary = summary
        self.run_id = run_id
        self.scan_removed = scan_removed
        self.forget_gone_failures = forget_gone_failures
        self.say = say or (lambda _line: None)
        self.store = VersionStore(manifest)
        self.replace = replace_mode(sync, target)
        self.same_ids = target.features.version_ids == "same"
        self._done_paths: Any = None

    def wrap(self, target: Target) -> Target:
        """The target the engine sends through: delete-then-add for ``version_ids == "same"``."""
        if self.replace and self.same_ids and target.features.can_delete:
            return SameIdTarget(target, self)
        return target

    async def around(self, engine: Coroutine[Any, Any, object]) -> None:
        """``engine`` between the resume and removal steps and the sweep."""
        rows_before: int | None = None
        try:
            await self.resume()
            if self.forget_gone_failures and not (self.scan_removed and self.sync.delete):
                await self.gone_failures()
            if self.scan_removed and self.sync.delete:
                # Before anything is sent: over --max-delete, the run must stop with nothing done.
                await self.removals()
            elif self.scan_removed:
                # Only counted (nothing is deleted), so after the walk, which usually proves that no
                # file left: a look at every manifest row (an lstat each) was a third of a no-op rerun.
                rows_before = self.manifest.file_count()
        except BaseException:
            engine.close()  # never started: nothing to clean up
            raise
        if not self._streaming:
            await engine
            await self._removals_after_walk(rows_before)
            await self.sweep()
            return
        send, receive = anyio.create_memory_object_stream[list[str]](math.inf)
        self._done_paths = send
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._delete_replaced, receive)
            try:
                await engine
            finally:
                self._done_paths = None
                send.close()
        await self._removals_after_walk(rows_before)
        await self.sweep()

    async def _removals_after_walk(self, rows_before: int | None) -> None:
        """Count the files no longer in the source once the walk is over (no ``--delete``). When the
        walk met every file the manifest held before the run, none can have gone: nothing to scan."""
        if rows_before is None or not self.summary.walk_finished:
            return  # counted before the run, or a walk cut short: the last complete count stands
        if self.summary.walk_known == rows_before:
            self.summary.removed_kept = self.summary.excluded_kept = 0
            await self._note(0, 0)
            return
        await self.removals()

    @property
    def _streaming(self) -> bool:
        """Make before break as files finish: an earlier version goes as soon as its successor is done."""
        return self.replace and not self.same_ids and self.target.features.can_delete

    def hooked(self, manifest: Any) -> Any:
        """The manifest the engine writes to: ``mark_done`` also hands the done paths to the deleter."""
        return _DoneHook(manifest, self) if self._streaming else manifest

    def _done(self, paths: list[str]) -> None:
        if self._done_paths is not None and paths:
            self._done_paths.send_nowait(paths)

    async def _delete_replaced(self, receive: Any) -> None:
        """Delete the earlier versions of files as they reach done (batched by what has arrived)."""
        async with receive:
            async for paths in receive:
                batch = list(paths)
                while True:
                    try:
                        batch.extend(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                todo: list[Version] = []
                forget: list[Version] = []
                for v in self.store.iter(paths=batch):
                    if v.reason not in _EARLIER or v.state == "deleting":
                        continue
                    record = self.manifest.lookup(v.path)
                    if record is not None and record.remote_id == v.remote_id:
                        forget.append(v)
                    elif record is not None and record.state is FileState.DONE:
                        todo.append(v)
                await self.store.forget(forget)
                if todo:
                    _failpoints.failpoint("after-new-version-done")
                    await self._delete(todo)

    def _count(self, v: Version) -> None:
        if v.reason == "removed":
            self.summary.deleted += 1
        else:
            self.summary.replaced += 1

    async def resume(self) -> None:
        """Delete intents a crash left; with same-id versions, every recorded earlier version."""
        if not self.target.features.can_delete:
            return
        todo: list[Version] = []
        forget: list[Version] = []
        for v in self.store.iter():
            if not (v.state == "deleting" or (self.same_ids and self.replace and v.reason == "replaced")):
                continue
            record = self.manifest.lookup(v.path)
            if record is not None and record.remote_id == v.remote_id:
                forget.append(v)  # the current version after all: never deleted
            else:
                todo.append(v)
        await self.store.forget(forget)
        await self._delete(todo)

    async def removals(self) -> None:
        """Count (and with ``--delete`` record for deletion) the files gone from the source."""
        gone_docs = gone_rows = excluded = 0
        async for gone, excl in scan_removed(self.manifest, self.source):
            excluded += excl
            gone_rows += len(gone)
            gone_docs += sum(1 for _, rid in gone if rid)
        self.summary.excluded_kept = excluded
        if not self.sync.delete or not gone_rows:
            self.summary.removed_kept = gone_rows
            await self._note(gone_rows, excluded)
            return
        total = self.manifest.file_count()
        limit = max_delete_limit(self.sync.max_delete, total)
        if gone_docs > limit:
            await self._note(gone_rows, excluded)
            raise MaxDeleteExceeded(
                f"--delete would delete {gone_docs} documents of files no longer in the source, more than "
                f"--max-delete {self.sync.max_delete} allows ({limit} of {total} files); nothing was sent or "
                f"deleted: check the source, then rerun with --max-delete {gone_docs} to proceed"
            )
        async for gone, _ in scan_removed(self.manifest, self.source):
            await self.store.remove_files([p for p, _ in gone], self.run_id)
        await self._note(0, excluded)

    async def gone_failures(self, *, page: int = 500) -> None:
        """Forget the failed files no longer in the source (see the module's docstring, step 2)."""
        forgotten = 0
        batch: list[str] = []

        async def flush() -> int:
            states = await classify_paths(self.source, batch)
            gone = [path for path, s in zip(batch, states, strict=True) if s == "gone"]
            await self.store.forget_failed(gone, self.run_id)
            return len(gone)

        for record in self.manifest.iter_files(states=(FileState.FAILED,)):
            batch.append(record.path)
            if len(batch) >= page:
                forgotten += await flush()
                batch = []
        if batch:
            forgotten += await flush()
        self.summary.gone_failures = forgotten
        if forgotten:
            before = int(self.manifest.get_meta(GONE_FAILURES_META) or 0)
            await self.store.note_meta({GONE_FAILURES_META: str(before + forgotten)})

    async def _note(self, removed: int, excluded: int) -> None:
        await self.store.note_meta({"removed_from_source": str(removed), "excluded_by_filters": str(excluded)})

    async def sweep(self) -> None:
        """Delete every earlier version whose successor is done, and every removed file's document."""
        if not self.target.features.can_delete:
            kept = sum(self.store.count().values())
            if kept and self.sync.on_change is None:
                self.say(
                    f"{kept} earlier versions of changed files stay on the platform: {self.target.name} cannot "
                    "delete documents"
                )
            return
        todo: list[Version] = []
        forget: list[Version] = []
        replaced = False
        for v in self.store.iter():
            record = self.manifest.lookup(v.path)
            if record is not None and record.remote_id == v.remote_id:
                forget.append(v)  # it is the current version after all (a resend found it again)
            elif v.state == "deleting" or v.reason not in _EARLIER:
                todo.append(v)
            elif not self.replace:
                continue
            elif self.same_ids or record is None or record.state is FileState.DONE:
                todo.append(v)
                replaced = True
        await self.store.forget(forget)
        if replaced:
            _failpoints.failpoint("after-new-version-done")
        await self._delete(todo)

    async def _delete(self, versions: list[Version]) -> None:
        left = await delete_versions(self.target, self.store, versions, on_deleted=self._count)
        self.summary.delete_pending += len(left)


class _DoneHook:
    """A manifest whose ``mark_done`` also tells the convergence which files finished (every other
    attribute is the manifest's own)."""

    def __init__(self, inner: Any, convergence: Convergence) -> None:
        self._inner = inner
        self._convergence = convergence

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def mark_done(self, paths: Sequence[str], run_id: int, **kwargs: Any) -> set[str]:
        lost: set[str] = await self._inner.mark_done(paths, run_id, **kwargs)
        self._convergence._done([p for p in paths if p not in lost])
        return lost


class SameIdTarget(ForwardingTarget):
    """Delete then add: a file's earlier versions are deleted (each step recorded) just before its new
    version is submitted, for platforms that give a new version the id of the old one."""

    def __init__(self, inner: Target, convergence: Convergence) -> None:
        super().__init__(inner)
        self.convergence = convergence

    async def submit(self, items: Sequence[FileItem], *, dedup: bool) -> list[Receipt]:
        c = self.convergence
        old = [v for v in c.store.iter(paths=[i.rel_path for i in items]) if v.reason == "replaced"]
        if old:
            await c._delete(old)
        return await self.inner.submit(items, dedup=dedup)
