"""Bucket-to-volume migrations on MOI: ``ingest migrate``.

The platform does the copying; this module drives it resumably. It lists the connector's source files
(``/connectors/files/list``), creates load tasks (``POST /task``) for chunks of ``uris_per_task`` uris,
polls ``/task/files`` until every file is terminal, retries failed files through ``/task/retry`` up to
``max_attempts`` sends, and records every file (its uri is its manifest path) in the manifest.

Resuming without creating a task twice for a file. ``POST /task`` answers without the new task's id,
so a crash can leave files whose task may or may not exist. The manifest makes that visible:

1. before a task is created, its files are recorded ``uploading`` (the intent), durably;
2. once the task is found, its files become ``processing`` with the task id;
3. then ``done`` or ``failed`` as ``/task/files`` reports.

On a rerun, files still ``uploading`` are looked up among the connector's tasks into the volume
(``/task/list``, matching the uris in each task's ``source_config``) before anything is created: found,
they are followed in that task; not found, the task was never created and is created now. Files
``processing`` are only polled, ``done`` ones skipped, ``failed`` ones sent again.

With ``schedule`` the tasks are periodic (``load_interval_type`` 1 day, 2 hour, 3 minute): a file is
done when the task's first run loaded it, and the platform keeps loading on schedule afterwards.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from ingest import _failpoints
from ingest._aio import run_concurrently, run_with_signals
from ingest.config import validation_message
from ingest.errors import ConfigError, InterruptedRun, PermanentError, TransientError
from ingest.manifest import Decision, Manifest, decide, open_manifest
from ingest.models import FileItem, Receipt, RemoteState
from ingest.platforms.moi.client import MoiClient
from ingest.platforms.moi.filetypes import FileType
from ingest.platforms.moi.wire import (
    FILE_STATUS_TABLES,
    IntervalType,
    SourceFile,
    Task,
    TaskCreate,
    TaskFile,
    TaskStatus,
)
from ingest.progress import Progress
from ingest.report import RunSummary
from ingest.retry import RetryPolicy

__all__ = ["MigrateConfig", "MigrateSummary", "migrate"]

log = logging.getLogger("ingest.platforms.moi.loadtasks")

SCHEDULES: dict[str, IntervalType] = {"day": IntervalType.DAY, "hour": IntervalType.HOUR, "minute": IntervalType.MINUTE}
#: Tasks polled at the same time.
POLL_PARALLEL_TASKS = 8
#: Attempts to create one task when MOI answers with transient errors (each followed by a lookup).
CREATE_ATTEMPTS = 4


class MigrateConfig(BaseModel):
    """Everything one ``ingest migrate`` needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str = Field(pattern=r"^https?://[^/\s]+")
    api_key: SecretStr
    connector_id: int = Field(ge=0)
    volume_id: str = Field(min_length=1)
    manifest: Path
    #: Only these ``/connectors/files/list`` types (empty: every file). Folders (type 10) are never loaded.
    file_types: tuple[int, ...] = ()
    uris_per_task: int = Field(default=100, ge=1, le=10_000)
    schedule: Literal["day", "hour", "minute"] | None = None
    #: Units of ``schedule`` between runs (MOI's ``interval``; 0 or unset means 1).
    interval: int | None = Field(default=None, ge=0)
    #: Loads of one file per run, counting MOI's retries of failed files.
    max_attempts: int = Field(default=3, ge=1, le=100)
    #: Seconds a task may keep files unfinished before they are recorded as failed.
    task_timeout: float = Field(default=3600.0, gt=0)
    #: Load tasks in flight at once.
    max_tasks: int = Field(default=16, ge=1, le=1000)
    request_retries: int = Field(default=8, ge=0, le=100)
    poll_initial: float = Field(default=0.2, gt=0)
    poll_max: float = Field(default=2.0, gt=0)
    file_status_table: Literal["seed", "v5"] = "seed"
    auth_header: Literal["moi-key", "x-api-key"] = "moi-key"
    workspace_id: str | None = None
    quiet: bool = False
    progress: bool | None = None

    @classmethod
    def build(cls, **values: object) -> MigrateConfig:
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, "ingest migrate")) from None

    def source(self) -> str:
        return f"moi-connector:{self.endpoint.rstrip('/')}/connector/{self.connector_id}"

    def destination(self) -> str:
        return f"moi:{self.endpoint.rstrip('/')}/volume/{self.volume_id}"

    def public_dump(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude={"api_key"})


@dataclass(slots=True)
class MigrateSummary(RunSummary):
    """A migration's outcome; ``sent_*`` count what MOI loaded for this run."""

    tasks_created: int = 0
    periodic_tasks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = dict(RunSummary.to_json(self))
        data["tasks_created"] = self.tasks_created
        data["periodic_tasks"] = list(self.periodic_tasks)
        return data

    def lines(self, *, max_failures: int = 20) -> list[str]:
        out = []
        for line in RunSummary.lines(self, max_failures=max_failures):
            if line.startswith("sent "):
                line = f"loaded {line.removeprefix('sent ')} through {self.tasks_created} new load task(s)"
            elif line.startswith("re-send only the failed files"):
                line = "run the same `ingest migrate` command again to load the failed files again"
            out.append(line)
        if self.periodic_tasks:
            shown = ", ".join(self.periodic_tasks[:10]) + (" …" if len(self.periodic_tasks) > 10 else "")
            out.insert(-1, f"{len(self.periodic_tasks)} periodic task(s) keep loading on MOI: {shown}")
        return out


@dataclass(slots=True)
class _Tracked:
    """One file this run follows on MOI."""

    uri: str
    size: int
    attempts: int
    file_id: str | None = None


@dataclass(slots=True)
class _InFlight:
    task_id: str
    files: dict[str, _Tracked]
    started: float
    paused_said: bool = False


class _Migration:
    def __init__(
        self,
        config: MigrateConfig,
        client: MoiClient,
        manifest: Manifest,
        run_id: int,
        progress: Progress,
        summary: MigrateSummary,
    ) -> None:
        self.config = config
        self.client = client
        self.manifest = manifest
        self.run_id = run_id
        self.progress = progress
        self.summary = summary
        self.in_flight: dict[str, _InFlight] = {}
        self.table = FILE_STATUS_TABLES[config.file_status_table]
        self.interval_type = SCHEDULES[config.schedule] if config.schedule else IntervalType.ONCE

    # ----- planning ------------------------------------------------------------------------------------------

    async def run(self, files: Sequence[SourceFile]) -> None:
        pending: list[_Tracked] = []
        unresolved: dict[str, _Tracked] = {}
        for f in files:
            item = _item(f)
            record = self.manifest.lookup(item.rel_path)
            decision = decide(record, item)
            if decision is Decision.SKIP:
                self.summary.skipped += 1
                continue
            self.progress.discovered(f.size)
            # Attempts count per run, as in `ingest run`: a file followed from an earlier run has used one.
            tracked = _Tracked(f.uri, f.size, 0)
            if decision is Decision.POLL and record is not None and record.task_id:
                tracked.file_id = record.remote_id
                tracked.attempts = 1
                self._follow(record.task_id, tracked)
                self.summary.resumed += 1
            elif decision is Decision.SEND_DEDUP:
                tracked.attempts = 1
                unresolved[f.uri] = tracked
            else:
                pending.append(tracked)
        if unresolved:
            for never_created in await self._resolve(unresolved):
                never_created.attempts = 0  # its task was never created: the coming one is its first send
                pending.append(never_created)
        pending.sort(key=lambda t: t.uri)
        await self._drive(pending)

    async def _resolve(self, unresolved: dict[str, _Tracked]) -> list[_Tracked]:
        """Files whose task may exist: follow them in it when it does; the others still need a task."""
        found: dict[str, str] = {}
        async for task in self.client.find_tasks(self.config.connector_id, self.config.volume_id):
            for uri in task.uris:
                if uri in unresolved and (uri not in found or int(task.id) > int(found[uri])):
                    found[uri] = task.id
        receipts = [Receipt(uri, task_id=task_id) for uri, task_id in found.items()]
        await self.manifest.mark_processing(receipts, self.run_id)
        for uri, task_id in found.items():
            self._follow(task_id, unresolved[uri])
        self.summary.resumed += len(found)
        if found:
            log.info("resumed %d file(s) in load tasks created before an interruption", len(found))
        return [t for uri, t in unresolved.items() if uri not in found]

    def _follow(self, task_id: str, tracked: _Tracked) -> None:
        entry = self.in_flight.setdefault(task_id, _InFlight(task_id, {}, time.monotonic()))
        entry.files[tracked.uri] = tracked

    # ----- the loop ------------------------------------------------------------------------------------------

    async def _drive(self, pending: list[_Tracked]) -> None:
        queue = list(_chunks(pending, self.config.uris_per_task))
        queue.reverse()
        delay = self.config.poll_initial
        while queue or self.in_flight:
            while queue and len(self.in_flight) < self.config.max_tasks:
                await self._create(queue.pop())
            if not self.in_flight:
                continue
            before = self.summary.done + self.summary.failed
            await self._poll_round()
            progressed = self.summary.done + self.summary.failed != before
            delay = self.config.poll_initial if progressed else min(delay * 1.5, self.config.poll_max)
            if self.in_flight:
                await anyio.sleep(delay)

    async def _create(self, chunk: list[_Tracked]) -> None:
        items = [FileItem(t.uri, Path(t.uri), t.size, 0) for t in chunk]
        await self.manifest.mark_uploading(items, self.run_id, dedup=False)
        for t in chunk:
            t.attempts += 1
        _failpoints.failpoint("migrate-after-intent")
        spec = TaskCreate(
            source_connector_id=self.config.connector_id,
            volume_id=self.config.volume_id,
            uris=[t.uri for t in chunk],
            load_interval_type=self.interval_type,
            interval=self.config.interval if self.config.schedule else None,
        )
        try:
            task = await self._create_task(spec, {t.uri: t for t in chunk})
        except PermanentError as exc:
            await self._fail([(t, exc.detail) for t in chunk])
            return
        if task is None:
            return  # every file was found in existing tasks (and is followed there)
        _failpoints.failpoint("migrate-after-create")
        self.summary.tasks_created += 1
        if self.interval_type is not IntervalType.ONCE:
            self.summary.periodic_tasks.append(task.id)
        await self.manifest.mark_processing([Receipt(t.uri, task_id=task.id) for t in chunk], self.run_id)
        for t in chunk:
            self._follow(task.id, t)

    async def _create_task(self, spec: TaskCreate, chunk: dict[str, _Tracked]) -> Task | None:
        """Create the task; after an answer that got lost, look for it before creating it again."""
        policy = RetryPolicy(attempts=CREATE_ATTEMPTS, max_delay=5.0)
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                task = await self.client.create_task(spec)
                if task is not None:
                    return task
                error = TransientError(f"MOI accepted a load task for {len(spec.uris)} uri(s) but does not list it")
            except TransientError as exc:
                error = exc
            left = await self._resolve(dict(chunk))
            if not left:
                return None
            if len(left) < len(chunk):
                # Part of the chunk is in a task already (an earlier run's): create one for the rest only.
                chunk = {t.uri: t for t in left}
                spec = spec.model_copy(update={"uris": [t.uri for t in left]})
            if attempt == CREATE_ATTEMPTS:
                raise error
            await anyio.sleep(policy.delay(attempt, error, random.Random()))
        return None

    async def _poll_round(self) -> None:
        calls = [functools.partial(self._poll_task, entry) for entry in list(self.in_flight.values())]
        await run_concurrently(calls, limit=POLL_PARALLEL_TASKS)

    async def _poll_task(self, entry: _InFlight) -> None:
        try:
            listed = {f.name: f async for f in self.client.iter_task_files(entry.task_id)}
        except PermanentError as exc:
            if exc.status != 404:
                raise
            await self._fail([(t, f"MOI no longer knows load task {entry.task_id}") for t in entry.files.values()])
            self.in_flight.pop(entry.task_id, None)
            return
        done: list[_Tracked] = []
        failed: list[tuple[_Tracked, str]] = []
        retry: list[tuple[_Tracked, TaskFile]] = []
        newly_known: list[_Tracked] = []
        for uri, tracked in list(entry.files.items()):
            f = listed.get(uri)
            if f is None:
                failed.append((tracked, f"MOI load task {entry.task_id} does not list {uri}"))
                continue
            if tracked.file_id != f.id:
                tracked.file_id = f.id
                newly_known.append(tracked)
            state = self.table.get(f.status, RemoteState.PENDING)
            if state is RemoteState.DONE:
                done.append(tracked)
            elif state is RemoteState.FAILED:
                reason = f.reason or f"MOI file status {f.status}"
                if tracked.attempts < self.config.max_attempts:
                    retry.append((tracked, f))
                else:
                    failed.append((tracked, reason))
        if newly_known:
            receipts = [Receipt(t.uri, remote_id=t.file_id, task_id=entry.task_id) for t in newly_known]
            await self.manifest.mark_processing(receipts, self.run_id)
        if done:
            await self.manifest.mark_done([t.uri for t in done], self.run_id)
            for t in done:
                entry.files.pop(t.uri)
                self.summary.done += 1
                self.summary.sent_files += 1
                self.summary.sent_bytes += t.size
                self.progress.sent(t.size)
            self.progress.finished(len(done))
        if retry:
            await self._retry(entry, retry)
        if failed:
            for t, _ in failed:
                entry.files.pop(t.uri, None)
            await self._fail(failed)
        if entry.files and time.monotonic() - entry.started > self.config.task_timeout:
            reason = f"still not finished on MOI after {self.config.task_timeout:.0f}s (load task {entry.task_id})"
            await self._fail([(t, reason) for t in entry.files.values()])
            entry.files.clear()
        if not entry.files:
            self.in_flight.pop(entry.task_id, None)
        elif not entry.paused_said:
            await self._say_if_paused(entry)

    async def _retry(self, entry: _InFlight, retry: list[tuple[_Tracked, TaskFile]]) -> None:
        await self.client.retry_task(entry.task_id, [f.id for _, f in retry])
        receipts = [Receipt(t.uri, remote_id=f.id, task_id=entry.task_id) for t, f in retry]
        await self.manifest.mark_processing(receipts, self.run_id, retried=True)
        for t, f in retry:
            t.attempts += 1
            await self.manifest.note_error(t.uri, f.reason or f"MOI file status {f.status}")
        log.info("retrying %d failed file(s) in load task %s", len(retry), entry.task_id)

    async def _say_if_paused(self, entry: _InFlight) -> None:
        task = await self.client.get_task(entry.task_id)
        if task.status in (TaskStatus.PAUSING, TaskStatus.PAUSED):
            entry.paused_said = True
            self.progress.message(
                f"load task {entry.task_id} is paused on MOI; resume it with `ingest moi tasks resume {entry.task_id}`"
            )

    async def _fail(self, failures: Iterable[tuple[_Tracked, str]]) -> None:
        pairs = [(t.uri, reason) for t, reason in failures]
        if not pairs:
            return
        await self.manifest.mark_failed(pairs, self.run_id)
        self.summary.failed += len(pairs)
        self.summary.failures.extend(pairs)
        self.progress.finished(len(pairs))


def _item(f: SourceFile) -> FileItem:
    """A source file as the manifest sees it: the uri is its path; MOI lists no modification time."""
    return FileItem(f.uri, Path(f.uri), f.size, 0)


def _chunks(items: list[_Tracked], size: int) -> Iterable[list[_Tracked]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _open(client: MoiClient, config: MigrateConfig) -> list[SourceFile]:
    """Check the volume and list the connector's files; what the user must fix is a ``ConfigError``."""
    try:
        await client.volume_info(config.volume_id)
    except PermanentError as exc:
        if exc.status == 404 or (exc.code or "").lower() == "errnotfound":
            raise ConfigError(
                f"MOI volume {config.volume_id} does not exist at {config.endpoint}; pass an existing --volume-id"
            ) from None
        raise ConfigError(str(exc)) from None
    except TransientError as exc:
        raise ConfigError(f"{exc}; check --endpoint and that MOI is up") from None
    try:
        files = await client.connector_files(config.connector_id, config.file_types)
    except PermanentError as exc:
        if exc.status == 404:
            raise ConfigError(f"MOI has no connector {config.connector_id}; see `ingest moi connectors list`") from None
        raise ConfigError(str(exc)) from None
    return [f for f in files if f.type != FileType.DIR and not f.uri.endswith("/")]


async def migrate(config: MigrateConfig, *, handle_signals: bool = False) -> MigrateSummary:
    """Load every source file of the connector into the volume through MOI load tasks, resumably.

    Raises ``ConfigError`` for what the user must fix and ``InterruptedRun`` after SIGINT/SIGTERM (with
    ``handle_signals``); the manifest is consistent in both cases.
    """
    import sys

    started = time.monotonic()
    retries = RetryPolicy(attempts=config.request_retries + 1, max_delay=5.0)
    async with MoiClient(
        config.endpoint,
        config.api_key,
        auth_header=config.auth_header,
        workspace_id=config.workspace_id,
        retries=retries,
    ) as client:
        files = await _open(client, config)
        manifest = open_manifest(config.manifest)
        progress = Progress(config.progress if config.progress is not None else sys.stderr.isatty(), quiet=config.quiet)
        summary = MigrateSummary(
            destination=f"MOI volume {config.volume_id} at {config.endpoint} (from connector {config.connector_id})",
            manifest=config.manifest,
        )
        status = "failed"
        try:
            manifest.bind(config.source(), config.destination())
            manifest.set_meta("migrate_config", json.dumps(config.public_dump()))
            run_id = manifest.start_run("migrate")
            try:
                migration = _Migration(config, client, manifest, run_id, progress, summary)
                async with manifest.writer():
                    interrupted = await run_with_signals(handle_signals, migration.run(files))
                status = "interrupted" if interrupted else "completed"
            finally:
                progress.close()
                summary.elapsed = time.monotonic() - started
                manifest.finish_run(run_id, status, summary.to_json())
        finally:
            manifest.close()
    if status == "interrupted":
        raise InterruptedRun(
            f"interrupted; the manifest {config.manifest} is consistent: run the same command again to resume"
        )
    return summary
