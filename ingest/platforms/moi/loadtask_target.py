"""MOI load tasks as an engine ``Target``: files of a connector's source loaded into a volume by MOI.

``submit`` creates one load task (``POST /task``) for a batch of uris: the engine batches up to
``uris_per_task`` files and waits for full batches (``full_batches``), so a migration makes as few tasks
as it can. ``poll`` reads ``/task/files`` of each task and matches files by name (the uri), ``retry``
re-runs failed files with ``/task/retry``.

No task is ever created twice for a file, even after a SIGKILL at any instant:

1. the engine records a batch's files ``uploading`` (the intent), durably, before ``submit``;
2. ``POST /task`` answers without the task's id, so ``submit`` finds the new task by connector, volume
   and uris (``MoiClient.create_task``) and returns it in the receipts, which the engine records
   (``processing`` with the task id);
3. on a rerun, files still ``uploading`` come back with ``dedup=True`` (``server_dedup``): ``submit``
   first looks them up among the connector's tasks into the volume (``/task/list``, the uris of each
   task's ``source_config``) and follows the found ones in their task; a task is created only for the
   others. Within one run, a batch whose ``POST /task`` went out once is looked up the same way before
   it is sent again (the engine repeats ``submit`` after a transient error, say a lost answer).

With ``schedule`` the tasks are periodic: a file is done when the task's first run loaded it, and the
platform keeps loading on schedule afterwards.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from ingest._aio import run_concurrently
from ingest.errors import PermanentError, TransientError
from ingest.models import FileItem, Receipt, RemoteState, RemoteStatus
from ingest.platforms.base import TargetContext, TargetFeatures
from ingest.platforms.moi.target import MoiTarget, MoiTargetConfig
from ingest.platforms.moi.wire import IntervalType, TaskCreate, TaskFile, TaskStatus
from ingest.report import RunSummary

__all__ = ["SCHEDULES", "LoadTaskTarget", "LoadTaskTargetConfig", "MigrateSummary"]

log = logging.getLogger("ingest.platforms.moi.loadtask_target")

SCHEDULES: dict[str, IntervalType] = {"day": IntervalType.DAY, "hour": IntervalType.HOUR, "minute": IntervalType.MINUTE}
#: Tasks polled at the same time.
POLL_PARALLEL_TASKS = 8
#: No file is too large to be named in a load task: MOI copies it, nothing is sent from here.
ANY_SIZE = 1 << 62


class LoadTaskTargetConfig(MoiTargetConfig):
    """Load tasks of one connector into one volume (the volume's settings are ``MoiTargetConfig``'s)."""

    type: Literal["moi-loadtask"] = "moi-loadtask"  # type: ignore[assignment]
    connector_id: int = Field(ge=0)
    uris_per_task: int = Field(default=100, ge=1, le=10_000)
    schedule: Literal["day", "hour", "minute"] | None = None
    #: Units of ``schedule`` between runs (MOI's ``interval``; 0 or unset means 1).
    interval: int | None = Field(default=None, ge=0)


@dataclass(slots=True)
class MigrateSummary(RunSummary):
    """A migration's outcome; ``sent_*`` count what was handed to MOI's load tasks in this run."""

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


class LoadTaskTarget(MoiTarget):
    """A MOI volume filled by load tasks instead of uploads: the connection, the volume check and the
    destination's identity are ``MoiTarget``'s (a migration's manifest names the volume as a run's does)."""

    name = "moi-loadtask"

    def __init__(self, config: LoadTaskTargetConfig, context: TargetContext) -> None:
        super().__init__(config, context)
        self.config: LoadTaskTargetConfig = config
        self.features = TargetFeatures(
            max_batch_files=config.uris_per_task,
            max_batched_file_size=ANY_SIZE,
            server_dedup=True,
            server_retry=True,
            full_batches=True,
        )
        self._interval_type = SCHEDULES[config.schedule] if config.schedule else IntervalType.ONCE
        #: Uris whose ``POST /task`` went out in this process: look them up before sending them again.
        self._posted: set[str] = set()
        self._paused_said: set[str] = set()
        #: What this run did on MOI, for the summary.
        self.tasks_created = 0
        self.periodic_tasks: list[str] = []

    def describe(self) -> str:
        return f"{super().describe()} (from connector {self.config.connector_id})"

    # ----- creating tasks ------------------------------------------------------------------------------------

    async def submit(self, items: Sequence[FileItem], *, dedup: bool) -> list[Receipt]:
        uris = [item.rel_path for item in items]
        found: dict[str, str] = {}
        if dedup or any(uri in self._posted for uri in uris):
            found = await self._find(set(uris))
            if found:
                log.info("resumed %d file(s) in load tasks created before an interruption", len(found))
        rest = [uri for uri in uris if uri not in found]
        if rest:
            task_id = await self._create(rest)
            found.update(dict.fromkeys(rest, task_id))
            if self.context.on_bytes is not None:
                self.context.on_bytes(sum(item.size for item in items if item.rel_path in rest))
        file_ids: dict[tuple[str, str], str] = {}
        for task_id in set(found.values()):
            file_ids.update(await self._file_ids(task_id))
        return [Receipt(uri, remote_id=file_ids.get((found[uri], uri)), task_id=found[uri]) for uri in uris]

    async def _create(self, uris: list[str]) -> str:
        spec = TaskCreate(
            source_connector_id=self.config.connector_id,
            volume_id=self.config.volume_id,
            uris=uris,
            load_interval_type=self._interval_type,
            interval=self.config.interval if self.config.schedule else None,
        )
        self._posted.update(uris)
        task = await self.client.create_task(spec)
        if task is None:
            # Accepted but not listed yet: the engine asks again, and the lookup above finds it then.
            raise TransientError(f"MOI accepted a load task for {len(uris)} uri(s) but does not list it")
        self.tasks_created += 1
        if self._interval_type is not IntervalType.ONCE:
            self.periodic_tasks.append(task.id)
        return task.id

    async def _find(self, uris: set[str]) -> dict[str, str]:
        """The newest task of this connector and volume naming each of ``uris``, if any."""
        found: dict[str, str] = {}
        async for task in self.client.find_tasks(self.config.connector_id, self.config.volume_id):
            for uri in uris.intersection(task.uris):
                if uri not in found or int(task.id) > int(found[uri]):
                    found[uri] = task.id
        return found

    async def _file_ids(self, task_id: str) -> dict[tuple[str, str], str]:
        """``/task/files`` ids of a task's files by (task, uri); none when MOI does not answer now (they
        are not needed to follow the files, only to retry them, which looks them up again)."""
        try:
            return {(task_id, f.name): f.id async for f in self.client.iter_task_files(task_id)}
        except TransientError:
            return {}

    # ----- following tasks -----------------------------------------------------------------------------------

    async def poll(self, receipts: Sequence[Receipt]) -> list[RemoteStatus]:
        by_task: dict[str, list[Receipt]] = defaultdict(list)
        statuses: list[RemoteStatus] = []
        for receipt in receipts:
            if receipt.task_id is None:
                statuses.append(RemoteStatus(receipt.rel_path, RemoteState.FAILED, "no MOI load task to follow"))
            else:
                by_task[receipt.task_id].append(receipt)
        calls = [functools.partial(self._task_statuses, task_id, wanted) for task_id, wanted in by_task.items()]
        for found in await run_concurrently(calls, limit=POLL_PARALLEL_TASKS):
            statuses.extend(found)
        return statuses

    async def _task_statuses(self, task_id: str, wanted: list[Receipt]) -> list[RemoteStatus]:
        """The statuses of one task's files; none this round when MOI hiccups (polled again later)."""
        try:
            listed = await self._listing(task_id)
        except TransientError:
            return []
        if listed is None:
            reason = f"MOI no longer knows load task {task_id}"
            return [RemoteStatus(r.rel_path, RemoteState.FAILED, reason) for r in wanted]
        out = []
        for r in wanted:
            f = listed.get(r.rel_path)
            if f is None:
                out.append(RemoteStatus(r.rel_path, RemoteState.FAILED, f"MOI load task {task_id} does not list it"))
                continue
            state = self._status_table.get(f.status, RemoteState.PENDING)
            failure = (f.reason or f"MOI file status {f.status}") if state is RemoteState.FAILED else None
            out.append(RemoteStatus(r.rel_path, state, failure))
        if task_id not in self._paused_said and any(s.state is RemoteState.PENDING for s in out):
            await self._say_if_paused(task_id)
        return out

    async def _listing(self, task_id: str) -> dict[str, TaskFile] | None:
        """A task's files by name (the uri), or ``None`` when MOI does not know the task."""
        try:
            return {f.name: f async for f in self.client.iter_task_files(task_id)}
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise

    async def _say_if_paused(self, task_id: str) -> None:
        try:
            task = await self.client.get_task(task_id)
        except (TransientError, PermanentError):
            return  # only a hint: the files are followed all the same
        if task.status in (TaskStatus.PAUSING, TaskStatus.PAUSED) and self.context.on_message is not None:
            self._paused_said.add(task_id)
            self.context.on_message(
                f"load task {task_id} is paused on MOI; resume it with `ingest moi tasks resume {task_id}`"
            )

    async def retry(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        by_task: dict[str, list[Receipt]] = defaultdict(list)
        for receipt in receipts:
            if receipt.task_id is not None:
                by_task[receipt.task_id].append(receipt)
        retried: list[Receipt] = []
        for task_id, group in by_task.items():
            try:
                listed = await self._listing(task_id) or {}
                ids = {r.rel_path: listed[r.rel_path].id for r in group if r.rel_path in listed}
                if ids:
                    await self.client.retry_task(task_id, list(ids.values()))
            except TransientError:
                continue  # left out: the engine asks again after the next poll
            retried.extend(Receipt(uri, remote_id=file_id, task_id=task_id) for uri, file_id in ids.items())
        if retried:
            log.info("retrying %d failed file(s) in load tasks", len(retried))
        return retried

    def add_to_summary(self, summary: RunSummary) -> None:
        if isinstance(summary, MigrateSummary):
            summary.tasks_created = self.tasks_created
            summary.periodic_tasks = list(self.periodic_tasks)
