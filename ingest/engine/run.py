"""One run, end to end: resolve the destination (or start the embedded one), open the manifest, run
the engine under signal handling, write the report, and summarise. The CLI is a thin layer over
``run`` and ``retry_failed``; both are usable from any async code."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from pydantic import ValidationError

from ingest._aio import run_with_signals
from ingest.config import RunConfig, validation_message
from ingest.engine.pipeline import EngineStats, run_engine
from ingest.errors import ConfigError, InterruptedRun, TransientError
from ingest.manifest.sqlite import Manifest
from ingest.models import FileItem, FileState
from ingest.platforms.base import Target, TargetConfigBase, TargetContext
from ingest.platforms.registry import EmbeddedDestination, embedded_spec, get_spec
from ingest.progress import Progress
from ingest.report import RunSummary, write_report
from ingest.retry import RetryPolicy, retrying
from ingest.sources.local import Rejected, WalkOptions, WalkStats, walk

__all__ = ["default_manifest_path", "retry_failed", "run", "saved_config"]

MANIFEST_DIR = Path(".ingest/manifests")
#: Where the embedded default destination keeps its state and stored files.
EMBEDDED_DATA_DIR = Path(".ingest/local")


def default_manifest_path(source: Path, destination: str) -> Path:
    """``./.ingest/manifests/<source name>-<hash of source and destination>.db``: a rerun of the same
    command finds its manifest without being told."""
    digest = hashlib.sha256(f"{source}\0{destination}".encode()).hexdigest()[:12]
    return MANIFEST_DIR / f"{source.name or 'root'}-{digest}.db"


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
    root = config.source.path.expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise ConfigError(f"source {root} {what}; pass the folder to ingest")
    root = root.resolve()
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        embedded: EmbeddedDestination | None = None
        if config.target is None:
            factory = embedded_spec().embedded
            assert factory is not None  # embedded_spec() returns the platform that has one
            embedded = await stack.enter_async_context(factory(EMBEDDED_DATA_DIR))
            target_config: TargetConfigBase = embedded.config
        else:
            target_config = config.target
        stats = EngineStats()
        progress = Progress(config.progress if config.progress is not None else sys.stderr.isatty(), quiet=config.quiet)
        stack.callback(progress.close)

        def on_bytes(n: int) -> None:
            stats.sent_bytes += n
            progress.sent(n)

        context = TargetContext(
            connections=config.engine.concurrency + 8, chunk_size=config.engine.chunk_size, on_bytes=on_bytes
        )
        target = get_spec(target_config.type).factory(target_config, context)
        stack.push_async_callback(target.aclose)
        destination = embedded.identity if embedded is not None else target.identity()
        manifest_path = config.manifest or default_manifest_path(root, destination)
        manifest = Manifest(manifest_path)
        stack.callback(manifest.close)
        manifest.bind(str(root), destination)
        await _open_target(target, config.engine.request_retries)
        manifest.set_meta("run_config", json.dumps(config.public_dump()))
        run_id = manifest.start_run(command)
        walk_stats = WalkStats()
        source = _failed_files(manifest, root) if only_failed else walk(root, _walk_options(config), walk_stats)
        status = "failed"
        summary = RunSummary(
            destination=embedded.description if embedded is not None else target.describe(),
            manifest=manifest_path,
            report=config.report,
            stored_at=embedded.stored_at if embedded is not None else None,
        )
        try:
            async with manifest.writer():
                interrupted = await run_with_signals(
                    handle_signals,
                    run_engine(
                        target=target,
                        manifest=manifest,
                        run_id=run_id,
                        source=source,
                        config=config.engine,
                        progress=progress,
                        stats=stats,
                    ),
                )
            status = "interrupted" if interrupted else "completed"
        finally:
            progress.close()
            _fill(summary, stats, time.monotonic() - started)
            summary.passed_over = {
                "hidden (use --hidden)": walk_stats.hidden,
                "symlinks (use --follow-symlinks)": walk_stats.symlinks,
                "excluded by --include/--exclude": walk_stats.excluded,
                "larger than --max-size": walk_stats.too_large,
                "not regular files": walk_stats.special,
                "symlink loops": walk_stats.loops,
            }
            manifest.finish_run(run_id, status, summary.to_json())
        if config.report is not None:
            write_report(manifest, run_id, config.report)
        if status == "interrupted":
            raise InterruptedRun(
                f"interrupted; the manifest {manifest_path} is consistent: run the same command again to resume"
            )
        return summary


async def _open_target(target: Target, retries: int) -> None:
    try:
        await retrying(target.open, RetryPolicy(attempts=retries + 1, max_delay=5.0), what="connecting")
    except TransientError as exc:
        raise ConfigError(f"{exc}; check --endpoint and that the platform is up") from None


def _fill(summary: RunSummary, stats: EngineStats, elapsed: float) -> None:
    summary.done = stats.done
    summary.failed = stats.failed
    summary.skipped = stats.skipped
    summary.resumed = stats.resumed
    summary.sent_files = stats.sent_files
    summary.sent_bytes = stats.sent_bytes
    summary.elapsed = elapsed
    summary.failures = list(stats.failures)
    summary.stopped_reason = stats.stopped_reason


def _walk_options(config: RunConfig) -> WalkOptions:
    s = config.source
    return WalkOptions(
        include=s.include,
        exclude=s.exclude,
        hidden=s.hidden,
        follow_symlinks=s.follow_symlinks,
        max_size=s.max_size,
    )


async def _failed_files(manifest: Manifest, root: Path) -> AsyncIterator[FileItem | Rejected]:
    """The manifest's failed files, re-read from disk, as the source of ``retry-failed``."""
    for record in manifest.iter_files(states=(FileState.FAILED,)):
        path = root / record.path
        try:
            st = await anyio.to_thread.run_sync(os.stat, path)
        except OSError:
            yield Rejected(record.path, f"not found under {root} any more (last error: {record.last_error})")
            continue
        yield FileItem(record.path, path, st.st_size, st.st_mtime_ns)


def saved_config(manifest_path: Path, secrets: dict[str, dict[str, str | None]]) -> RunConfig:
    """The config of the last run recorded in a manifest, with secrets supplied again by the caller
    (they are never stored): ``secrets[target type][field]``."""
    if not manifest_path.exists():
        raise ConfigError(f"manifest {manifest_path} does not exist; pass the --manifest of an earlier run")
    with Manifest(manifest_path) as manifest:
        raw = manifest.get_meta("run_config")
    if raw is None:
        raise ConfigError(f"manifest {manifest_path} records no run; nothing to retry")
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
    data["manifest"] = str(manifest_path)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, f"settings for retrying {manifest_path}")) from None


async def retry_failed(config: RunConfig, *, handle_signals: bool = False) -> RunSummary:
    """Re-send only the files the manifest records as failed."""
    return await run(config, command="retry-failed", handle_signals=handle_signals, only_failed=True)
