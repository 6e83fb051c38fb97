"""One run, end to end: resolve the destination (or start the embedded one), open the manifest, run
the engine under signal handling, write the report, and summarise. The CLI is a thin layer over
``run`` and ``retry_failed``; both are usable from any async code."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ingest._aio import first_leaf, run_with_signals
from ingest.config import EngineConfig, RunConfig, SyncConfig, validation_message
from ingest.engine import converge
from ingest.engine.collector import fewer_collections
from ingest.engine.deferred import StartedOnFirstUse
from ingest.engine.pipeline import run_engine
from ingest.engine.shared import DEFAULT_LEASE, run_worker
from ingest.errors import ConfigError, InterruptedRun, TransientError
from ingest.logs import event
from ingest.manifest import Manifest, PostgresLocation, open_manifest, parse_location
from ingest.models import FileItem, FileState
from ingest.platforms.base import Target, TargetConfigBase, TargetContext
from ingest.platforms.registry import EmbeddedDestination, build_target, embedded_spec, get_spec
from ingest.progress import Progress
from ingest.ratelimit import RequestBudget
from ingest.report import RunSummary, check_report_path, write_report
from ingest.retry import RetryPolicy, retrying
from ingest.sources.base import Rejected, Source
from ingest.sources.local import LocalSource, WalkOptions

__all__ = ["FailedFiles", "Job", "default_manifest_path", "retry_failed", "run", "run_job", "saved_config"]

MANIFEST_DIR = Path(".ingest/manifests")
#: Where the embedded default destination keeps its state and stored files.
EMBEDDED_DATA_DIR = Path(".ingest/local")


def default_manifest_path(source: str, destination: str) -> Path:
    """``./.ingest/manifests/<source name>-<hash of source and destination>.db``: a rerun of the same
    command finds its manifest without being told."""
    digest = hashlib.sha256(f"{source}\0{destination}".encode()).hexdigest()[:12]
    name = source.rstrip("/").rsplit("/", 1)[-1] or "root"
    return MANIFEST_DIR / f"{name}-{digest}.db"


async def run(
    config: RunConfig,
    *,
    command: str = "run",
    handle_signals: bool = False,
    only_failed: bool = False,
) -> RunSummary:
    """Ingest ``config.source`` into ``config.target`` (or the embedded emulator) and return a summary.

    ``only_failed`` re-sends the files the manifest records as failed instead of walking the tree.
    Raises ``ConfigError`` (and subclasses) for problems the user must fix, ``InterruptedRun`` when
    ``handle_signals`` is set and SIGINT/SIGTERM arrived.
    """
    if config.source.is_bucket:
        from ingest.sources.bucket import open_bucket_source

        # The bucket is checked (exists, credentials, endpoint) before anything else: nothing recorded.
        async with open_bucket_source(config.source, _walk_options(config), config.engine) as bucket:
            return await _run_source(bucket, config, command, handle_signals, only_failed)
    root = Path(config.source.path).expanduser()  # noqa: ASYNC240 - one stat, before the engine runs
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise ConfigError(f"source {root} {what}; pass the folder to ingest")
    return await _run_source(
        LocalSource(root.resolve(), _walk_options(config), own_state=_own_state(config)),
        config,
        command,
        handle_signals,
        only_failed,
    )


async def _run_source(
    source: Source, config: RunConfig, command: str, handle_signals: bool, only_failed: bool
) -> RunSummary:
    return await run_job(
        Job(
            source=source,
            target=config.target,
            engine=config.engine,
            manifest=None if config.manifest is None else parse_location(config.manifest, config.job),
            job_name=config.job,
            shared=config.shared,
            lease=config.lease,
            report=config.report,
            quiet=config.quiet,
            progress=config.progress,
            settings=config.public_dump(),
            sync=config.sync,
            scan_removed=not only_failed,
            forget_gone_failures=True,
        ),
        command=command,
        handle_signals=handle_signals,
        only_failed=only_failed,
    )


@dataclass(frozen=True, slots=True)
class Job:
    """One source into one destination through the engine: what ``run_job`` needs.

    ``ingest run`` builds it from a ``RunConfig`` with a local folder; other commands (``ingest
    migrate``) build it with their own source and target.
    """

    source: Source
    #: ``None``: the embedded default destination.
    target: TargetConfigBase | None
    engine: EngineConfig
    #: A SQLite file or a PostgreSQL job; ``None``: a SQLite file named after source and destination.
    manifest: Path | PostgresLocation | None = None
    #: The job's name in a PostgreSQL manifest (else the location's ``?job=``, else derived).
    job_name: str | None = None
    #: Share the job with other processes (claims, leases, one elected walk); implied by PostgreSQL.
    shared: bool = False
    lease: float = DEFAULT_LEASE
    report: Path | None = None
    quiet: bool = False
    progress: bool | None = None
    #: The settings recorded in the manifest (no secrets), read back by ``retry-failed``.
    settings: dict[str, Any] = field(default_factory=dict)
    #: Builds the summary (a command may extend it); called with destination, manifest path and report.
    summary_factory: Callable[..., RunSummary] = RunSummary
    #: Builds a target that is no ``--target`` of ``ingest run`` (``ingest migrate``'s load tasks);
    #: ``None``: the registered platform of ``target.type``.
    target_factory: Callable[[Any, TargetContext], Target] | None = None
    #: Replace on change, ``--delete``, ``--max-delete`` (``ingest.engine.converge``).
    sync: SyncConfig = field(default_factory=SyncConfig)
    #: Look every manifest file up in the source to find the removed ones (``ingest run`` of a folder).
    scan_removed: bool = False
    #: Look the failed files up in the source, and forget those gone (``ingest run``, ``retry-failed``).
    forget_gone_failures: bool = False


async def run_job(job: Job, *, command: str, handle_signals: bool = False, only_failed: bool = False) -> RunSummary:
    """Run ``job`` end to end: destination, manifest, engine under signal handling, report, summary."""
    started = time.monotonic()
    if job.report is not None:
        check_report_path(job.report)
    async with AsyncExitStack() as stack:
        embedded: EmbeddedDestination | None = None
        if job.target is None:
            factory = embedded_spec().embedded
            assert factory is not None  # embedded_spec() returns the platform that has one
            embedded = await stack.enter_async_context(factory(EMBEDDED_DATA_DIR))
            target_config: TargetConfigBase = embedded.config
        else:
            target_config = job.target
        progress = Progress(job.progress if job.progress is not None else sys.stderr.isatty(), quiet=job.quiet)
        stack.callback(progress.close)
        summary: RunSummary | None = None

        def on_bytes(n: int) -> None:
            assert summary is not None  # bytes flow only once the engine runs
            summary.sent_bytes += n
            progress.sent(n)

        # One bucket for the whole run: uploads, polls, lookups, deletes and their retries share it. Without
        # --max-rps it paces nothing until the platform answers 429, and then keeps under its limit.
        budget = RequestBudget(job.engine.max_rps)
        context = TargetContext(
            connections=job.engine.concurrency + 8,
            chunk_size=job.engine.chunk_size,
            on_bytes=on_bytes,
            on_message=progress.message,
            request_timeout=job.engine.request_timeout,
            budget=budget,
        )
        target = (
            job.target_factory(target_config, context) if job.target_factory else build_target(target_config, context)
        )
        stack.push_async_callback(target.aclose)
        if embedded is not None and embedded.start is not None:
            # Started (and the target opened) just before the first request: a rerun with nothing to send
            # never pays for starting it. Its settings are ours, so there is no typo to catch first.
            opened = target
            target = StartedOnFirstUse(target, embedded.start, lambda: _open_target(opened, job.engine.request_retries))
        else:
            # The destination is checked before the manifest is touched: a typo in it is the error to show.
            await _open_target(target, job.engine.request_retries)
        converge.check(job.sync, target)  # what the platform cannot do is refused before any work
        if not only_failed and not job.quiet:  # a warning nobody sees is not worth a pass over the source
            await target.preflight(job.source)
        destination = embedded.identity if embedded is not None else target.identity()
        manifest_path = job.manifest or default_manifest_path(job.source.identity(), destination)
        given_job = manifest_path.job if isinstance(manifest_path, PostgresLocation) else None
        shared = job.shared or isinstance(manifest_path, PostgresLocation)
        manifest = open_manifest(
            manifest_path, job.job_name or given_job or _default_job(job.source.identity(), destination)
        )
        stack.callback(manifest.close)
        if not isinstance(manifest_path, PostgresLocation) and not shared:
            from ingest.manifest.lock import hold

            stack.enter_context(hold(manifest_path))  # one run per manifest: a second one exits 2 at once
        manifest.bind(job.source.identity(), destination)
        manifest.set_meta("run_config", json.dumps(job.settings))
        run_id = manifest.start_run(command)
        source = FailedFiles(manifest, job.source) if only_failed else job.source
        status = "failed"
        summary = job.summary_factory(
            destination=embedded.description if embedded is not None else target.describe(),
            manifest=str(manifest_path) if isinstance(manifest_path, PostgresLocation) else manifest_path,
            report=job.report,
            stored_at=embedded.stored_at if embedded is not None else None,
        )
        sync = converge.Convergence(
            target=target,
            manifest=manifest,
            source=job.source,  # the whole source, also under retry-failed: it says what is gone
            sync=job.sync,
            summary=summary,
            run_id=run_id,
            scan_removed=job.scan_removed and not shared,
            # Idempotent and limited to failed rows, so every worker of a shared job may do it.
            forget_gone_failures=job.forget_gone_failures,
            say=progress.message,
        )
        event("run-start", command=command, run_id=run_id, manifest=str(summary.manifest), source=source.describe())
        try:
            engine = (
                run_worker(
                    store=sync.hooked(manifest),
                    source=source,
                    target=sync.wrap(target),
                    run_id=run_id,
                    config=job.engine,
                    progress=progress,
                    summary=summary,
                    lease=job.lease,
                )
                if shared
                else run_engine(
                    source=source,
                    target=sync.wrap(target),
                    manifest=sync.hooked(manifest),
                    run_id=run_id,
                    config=job.engine,
                    progress=progress,
                    summary=summary,
                )
            )
            try:
                with fewer_collections():
                    async with manifest.writer():
                        interrupted = await run_with_signals(handle_signals, sync.around(engine))
            except BaseExceptionGroup as group:
                # The task groups around the engine wrap what it raised: show the error itself.
                raise first_leaf(group, (ConfigError, Exception)) from None
            status = "interrupted" if interrupted else "completed"
        finally:
            progress.close()
            target.add_to_summary(summary)
            summary.max_rps, summary.rate_limited = budget.max_rps, budget.rejected
            summary.budget_requests, summary.budget_waits = budget.taken, budget.waited
            summary.settled_rps = budget.rate if budget.rejected else None
            summary.elapsed = time.monotonic() - started
            summary.passed_over = dict(source.passed_over())
            manifest.finish_run(run_id, status, summary.to_json())
            for path, reason in summary.failures:
                event("file-failed", f"{path}: {reason}", path=path, error=reason)
            event("run-end", command=command, run_id=run_id, status=status, summary=summary.to_json())
        if job.report is not None:
            write_report(manifest, run_id, job.report)
        if status == "interrupted":
            raise InterruptedRun(
                f"interrupted; the manifest {manifest_path} is consistent: run the same command again to resume"
            )
        return summary


def _default_job(source: str, destination: str) -> str:
    """A PostgreSQL job without a name is named like the default SQLite manifest: a rerun finds it."""
    return default_manifest_path(source, destination).stem


async def _open_target(target: Target, retries: int) -> None:
    try:
        await retrying(target.open, RetryPolicy(attempts=retries + 1, max_delay=5.0), what="connecting")
    except TransientError as exc:
        raise ConfigError(f"{exc}; check --endpoint and that the platform is up") from None


def _own_state(config: RunConfig) -> list[Path]:
    """ingest's own files, never part of a source even with ``--hidden``: the state folder of this
    working directory (default manifests, the embedded destination's data), the manifest and the report."""
    paths = [MANIFEST_DIR.parent]
    if isinstance(config.manifest, Path):
        paths.append(config.manifest)
    elif isinstance(config.manifest, str) and not config.manifest.startswith(("postgres://", "postgresql://")):
        paths.append(Path(config.manifest))
    if config.report is not None:
        paths.append(config.report)
    from ingest.manifest.lock import lock_path

    paths.extend(lock_path(p) for p in paths[1:2] if p != config.report)  # the manifest's lock file
    return paths


def _walk_options(config: RunConfig) -> WalkOptions:
    s = config.source
    return WalkOptions(
        include=s.include,
        exclude=s.exclude,
        hidden=s.hidden,
        follow_symlinks=s.follow_symlinks,
        max_size=s.max_size,
    )


class FailedFiles:
    """The manifest's failed files, looked up again in the source: the source of ``retry-failed``."""

    def __init__(self, manifest: Manifest, source: Source) -> None:
        self.manifest = manifest
        self.source = source

    def identity(self) -> str:
        return self.source.identity()

    def describe(self) -> str:
        return f"the failed files of {self.source.describe()}"

    async def entries(self) -> AsyncIterator[FileItem | Rejected]:
        for record in self.manifest.iter_files(states=(FileState.FAILED,)):
            found = await self.source.lookup(record.path)
            if isinstance(found, Rejected):
                yield Rejected(record.path, f"{found.reason} (last error: {record.last_error})")
            else:
                yield found

    async def refresh(self, item: FileItem) -> FileItem | str:
        return await self.source.refresh(item)

    async def lookup(self, rel_path: str) -> FileItem | Rejected:
        return await self.source.lookup(rel_path)

    def passed_over(self) -> Mapping[str, int]:
        return {}


def saved_config(
    manifest: Path | str, secrets: dict[str, dict[str, str | None]], *, job: str | None = None
) -> RunConfig:
    """The config of the last run recorded in a manifest (a SQLite file, or a job in a ``postgresql://``
    database), with secrets supplied again by the caller (they are never stored):
    ``secrets[target type][field]``. A database URL is used as given (its password is never stored)."""
    location = parse_location(manifest, job)
    if isinstance(location, Path) and not location.exists():
        raise ConfigError(f"manifest {location} does not exist; pass the --manifest of an earlier run")
    with open_manifest(location) as store:
        raw = store.get_meta("run_config")
    if raw is None:
        raise ConfigError(f"manifest {store.describe()} records no run; nothing to retry")
    data = json.loads(raw)
    target = data.get("target")
    if target:
        spec = get_spec(str(target.get("type")))
        for key, env in spec.secret_env.items():
            value = secrets.get(spec.name, {}).get(key)
            if not value:
                raise ConfigError(
                    f"retry-failed needs the {key.replace('_', ' ')} again: set {env} (secrets are never stored)"
                )
            target[key] = value
    data["manifest"] = str(manifest)  # as given: the stored one has its password replaced
    if job is not None:
        data["job"] = job
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, f"settings for retrying {store.describe()}")) from None


async def retry_failed(config: RunConfig, *, handle_signals: bool = False) -> RunSummary:
    """Re-send only the files the manifest records as failed."""
    return await run(config, command="retry-failed", handle_signals=handle_signals, only_failed=True)
