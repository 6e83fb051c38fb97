"""The dry run (``ingest run --dry-run``, ``ingest plan``): what a run would do, with nothing sent.

It walks the source and reads the manifest exactly as a run does (the same ``decide`` rule, the same
removal scan of ``ingest.engine.converge``), so its counts are what the next run does: ``new`` +
``changed`` + ``resume`` files sent and done, ``unchanged`` skipped, ``replace_deletes`` earlier versions
deleted, ``to_delete`` documents of removed files deleted (or the run stopped by ``--max-delete``).

No request reaches the platform: the target is built (for its features and identity) but never opened.
With ``remote`` it lists the destination (``Target.list_documents``: read-only requests) and counts
what it holds: this manifest's documents and others'.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ingest.config import RunConfig
from ingest.engine import converge
from ingest.manifest import PostgresLocation, open_manifest, parse_location
from ingest.manifest.base import Decision, decide
from ingest.manifest.versions import VersionStore
from ingest.platforms.base import Target, TargetContext
from ingest.platforms.registry import build_target
from ingest.sources.base import Rejected, Source
from ingest.sources.local import LocalSource

__all__ = ["ASSUMED_LATENCY", "Plan", "make_plan"]

#: The round trip assumed per request for the time estimate (seconds).
ASSUMED_LATENCY = 0.25


@dataclass(slots=True)
class Plan:
    source: str
    destination: str
    manifest: str
    new: int = 0
    changed: int = 0
    #: Recorded, unchanged, but not done (a crash or failure before): sent (or polled) again.
    resume: int = 0
    unchanged: int = 0
    #: Files the walk or the platform rejects: they would fail.
    rejected: int = 0
    bytes_to_send: int = 0
    unchanged_bytes: int = 0
    on_change: str = "replace"
    #: Earlier versions of files that the run deletes (replace on change).
    replace_deletes: int = 0
    delete: bool = False
    #: Files no longer in the source (their documents, with ``delete``, are deleted).
    removed: int = 0
    #: Documents of removed files the run deletes (with ``delete``).
    to_delete: int = 0
    #: Files now excluded by the filters: kept on the platform.
    excluded_kept: int = 0
    max_delete: str = "50%"
    max_delete_limit: int = 0
    max_delete_stops: bool = False
    requests: int = 0
    concurrency: int = 1
    max_rps: float | None = None
    estimate_s: float = 0.0
    remote: dict[str, int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def to_send(self) -> int:
        return self.new + self.changed + self.resume

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "to_send": self.to_send}

    def lines(self) -> list[str]:
        out = [
            f"dry run: {self.source} -> {self.destination} (manifest {self.manifest}); nothing was sent",
            f"  new          {self.new:>8}",
            f"  changed      {self.changed:>8}   ({_CHANGE[self.on_change]})",
            f"  resume       {self.resume:>8}   (recorded but not done)",
            f"  unchanged    {self.unchanged:>8}   (skipped, no request)",
        ]
        if self.rejected:
            out.append(f"  rejected     {self.rejected:>8}   (would fail: see the run's failures)")
        out.append(f"  to send      {self.to_send:>8}   {_human(self.bytes_to_send)}")
        out.append(f"  old versions {self.replace_deletes:>8}   to delete (replace on change)")
        if self.delete:
            verdict = (
                f"STOPS the run: more than --max-delete {self.max_delete} ({self.max_delete_limit})"
                if self.max_delete_stops
                else f"within --max-delete {self.max_delete} ({self.max_delete_limit})"
            )
            out.append(f"  to delete    {self.to_delete:>8}   documents of files no longer in the source; {verdict}")
        elif self.removed:
            out.append(
                f"  removed      {self.removed:>8}   no longer in the source: kept (pass --delete to delete them)"
            )
        if self.excluded_kept:
            out.append(f"  excluded     {self.excluded_kept:>8}   now left out by the filters: kept on the platform")
        rate = f", at most {self.max_rps:g} requests/s" if self.max_rps else ""
        out.append(
            f"about {self.requests} requests; roughly {_duration(self.estimate_s)} at concurrency "
            f"{self.concurrency}{rate} (assuming {ASSUMED_LATENCY:g}s per request)"
        )
        if self.remote is not None:
            r = self.remote
            out.append(
                f"platform holds {r['documents']} documents: {r['current']} current of this manifest, "
                f"{r['earlier']} earlier versions, {r['others']} not created by this manifest (never touched)"
            )
        out.extend(self.notes)
        return out


_CHANGE = {"replace": "replace: earlier version deleted", "keep": "keep: earlier version stays"}


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


async def make_plan(config: RunConfig, *, remote: bool = False, max_rps: float | None = None) -> Plan:
    """What ``ingest run`` with ``config`` would do now. Sends nothing (lists with ``remote``).

    ``max_rps`` (default: the config's ``--max-rps``) bounds the time estimate by the request budget."""
    from ingest.engine.run import _walk_options, default_manifest_path, run_job  # noqa: F401 - same rules
    from ingest.errors import ConfigError

    max_rps = max_rps if max_rps is not None else config.engine.max_rps
    if config.source.is_bucket:
        from ingest.sources.bucket import open_bucket_source

        # Listing a bucket is reading, not sending: the dry run lists it like the run would.
        async with open_bucket_source(config.source, _walk_options(config), config.engine) as bucket:
            return await _plan_from(config, bucket, remote, max_rps)
    root = Path(config.source.path).expanduser()  # noqa: ASYNC240 - one stat, before anything runs
    if not root.is_dir():
        raise ConfigError(f"source {root} does not exist or is not a folder; pass the folder to ingest")
    return await _plan_from(config, LocalSource(root.resolve(), _walk_options(config)), remote, max_rps)


async def _plan_from(config: RunConfig, source: Source, remote: bool, max_rps: float | None) -> Plan:
    if config.target is None:
        from ingest.engine.run import EMBEDDED_DATA_DIR
        from ingest.platforms.registry import embedded_spec

        factory = embedded_spec().embedded
        assert factory is not None
        async with factory(EMBEDDED_DATA_DIR) as embedded:
            target = build_target(embedded.config, TargetContext())
            return await _plan(config, source, target, embedded.identity, embedded.description, remote, max_rps)
    target = build_target(config.target, TargetContext(connections=config.engine.concurrency + 8))
    try:
        return await _plan(config, source, target, target.identity(), target.describe(), remote, max_rps)
    finally:
        await target.aclose()


async def _plan(
    config: RunConfig,
    source: Source,
    target: Target,
    identity: str,
    description: str,
    remote: bool,
    max_rps: float | None,
) -> Plan:
    from ingest.engine.run import default_manifest_path

    sync = config.sync
    converge.check(sync, target)
    location = (
        parse_location(config.manifest, config.job)
        if config.manifest is not None
        else default_manifest_path(source.identity(), identity)
    )
    replace = converge.replace_mode(sync, target) and target.features.can_delete
    plan = Plan(
        source=source.describe(),
        destination=description,
        manifest=str(location),
        on_change="replace" if replace else "keep",
        delete=sync.delete,
        max_delete=sync.max_delete,
        concurrency=config.engine.concurrency,
        max_rps=max_rps,
    )
    exists = isinstance(location, PostgresLocation) or location.exists()
    manifest = (
        open_manifest(location, config.job or (location.job if isinstance(location, PostgresLocation) else None))
        if exists
        else None
    )
    try:
        async for entry in source.entries():
            if isinstance(entry, Rejected) or target.refuse(entry) is not None:
                plan.rejected += 1
                continue
            record = manifest.lookup(entry.rel_path) if manifest is not None else None
            decision = decide(record, entry)
            if decision is Decision.SKIP:
                plan.unchanged += 1
                plan.unchanged_bytes += entry.size
                continue
            if record is None:
                plan.new += 1
            elif record.size != entry.size or record.mtime_ns != entry.mtime_ns:
                plan.changed += 1
                if record.remote_id and replace:
                    plan.replace_deletes += 1
            else:
                plan.resume += 1
                if record.remote_id and replace and decision is not Decision.POLL:
                    plan.replace_deletes += 1
            if decision is not Decision.POLL:
                plan.bytes_to_send += entry.size
        if manifest is not None:
            store = VersionStore(manifest)
            if target.features.can_delete:
                for v in store.iter():
                    current = manifest.lookup(v.path)
                    if current is not None and current.remote_id == v.remote_id:
                        continue
                    if v.state == "deleting" or v.reason not in ("replaced", "attempt"):
                        plan.to_delete += v.reason == "removed"
                        plan.replace_deletes += v.reason != "removed"
                    elif replace:
                        plan.replace_deletes += 1
            gone_docs = 0
            async for gone, excluded in converge.scan_removed(manifest, source):
                plan.removed += len(gone)
                plan.excluded_kept += excluded
                gone_docs += sum(1 for _, rid in gone if rid)
            total = manifest.file_count()
            plan.max_delete_limit = converge.max_delete_limit(sync.max_delete, total)
            if sync.delete:
                plan.max_delete_stops = gone_docs > plan.max_delete_limit
                if plan.max_delete_stops:
                    plan.notes.append(
                        f"the run would stop before sending or deleting anything: rerun with --max-delete {gone_docs}"
                    )
                else:
                    plan.to_delete += gone_docs
            if remote:
                plan.remote = await _remote_counts(target, manifest, store)
        elif remote:
            plan.remote = await _remote_counts(target, None, None)
    finally:
        if manifest is not None:
            manifest.close()
    _estimate(plan, config, target)
    return plan


async def _remote_counts(target: Target, manifest: Any, store: VersionStore | None) -> dict[str, int]:
    from ingest.errors import ConfigError

    if not target.features.can_list:
        raise ConfigError(f"--remote needs a target that can list its documents, and {target.name} cannot")
    await target.open()
    counts = {"documents": 0, "current": 0, "earlier": 0, "others": 0}
    async for doc in target.list_documents():
        counts["documents"] += 1
        if store is not None and store.file_by_remote_id(doc.remote_id) is not None:
            counts["current"] += 1
        elif store is not None and store.by_remote_id(doc.remote_id) is not None:
            counts["earlier"] += 1
        else:
            counts["others"] += 1
    return counts


def _estimate(plan: Plan, config: RunConfig, target: Target) -> None:
    features = target.features
    batch = max(1, min(config.engine.batch_files or features.max_batch_files, features.max_batch_files))
    sends = math.ceil(plan.to_send / batch)
    polls = sends  # at least one status check per accepted request
    deletes = math.ceil((plan.replace_deletes + plan.to_delete) / converge.DELETE_CHUNK)
    plan.requests = sends + polls + deletes
    seconds = plan.requests * ASSUMED_LATENCY / max(1, config.engine.concurrency)
    if plan.max_rps:
        seconds = max(seconds, plan.requests / plan.max_rps)
    plan.estimate_s = seconds
