"""``ingest status``: what a manifest records."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ingest.cli import output
from ingest.cli.exits import EXIT_OK
from ingest.cli.options import add_command, add_json_flag
from ingest.errors import ConfigError

__all__ = ["add_parser", "command"]

EPILOG = """\
examples:
  ingest status --manifest ./run.db            counts per state, the last run
  ingest status --manifest ./run.db --failed   and every failed file with its error
  ingest status --manifest ./run.db --json     the same, for scripts
"""


def add_parser(commands: Any) -> None:
    p = add_command(
        commands,
        "status",
        help="show what a manifest records",
        description="Counts of files per state, the source and destination, and the last runs.",
        epilog=EPILOG,
    )
    p.add_argument(
        "--manifest",
        required=True,
        metavar="PATH|URL",
        help="the manifest of a run: a SQLite file or postgresql://…?job=NAME",
    )
    p.add_argument("--job", metavar="NAME", help="the job's name in a postgresql:// manifest")
    add_json_flag(p, "machine-readable output")
    p.add_argument("--failed", action="store_true", help="list every failed file with its error")
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    from ingest.cli.jobstatus import job_lines, job_status
    from ingest.engine.converge import GONE_FAILURES_META
    from ingest.manifest import open_manifest, parse_location
    from ingest.models import FileState

    location = parse_location(args.manifest, args.job)
    if isinstance(location, Path) and not location.exists():
        raise ConfigError(f"manifest {args.manifest} does not exist")
    manifest = open_manifest(location, args.job)
    try:
        job = job_status(manifest)
        counts = manifest.counts()
        runs = manifest.runs()
        info: dict[str, Any] = {
            "manifest": str(location),
            "source": manifest.get_meta("source"),
            "destination": manifest.get_meta("target"),
            "files": counts,
            "total": sum(counts.values()),
            "last_run": runs[-1] if runs else None,
            "runs": len(runs),
        }
        removed, excluded = manifest.get_meta("removed_from_source"), manifest.get_meta("excluded_by_filters")
        info["no_longer_in_source"] = int(removed or 0)  # as the last run of a folder found (kept on the platform)
        info["excluded_by_filters"] = int(excluded or 0)
        # Failed files later found gone from the source: recorded as gone, no longer failed (issue 13).
        info["failed_no_longer_in_source"] = int(manifest.get_meta(GONE_FAILURES_META) or 0)
        if args.failed:
            info["failed_files"] = [
                {"path": r.path, "error": r.last_error} for r in manifest.iter_files(states=(FileState.FAILED,))
            ]
    finally:
        manifest.close()
    info.update(job)
    extra = list(job_lines(job))
    if info["no_longer_in_source"]:
        extra.append(
            f"{info['no_longer_in_source']} files no longer in the source (kept on the platform; "
            "`ingest run … --delete` deletes them)"
        )
    if info["failed_no_longer_in_source"]:
        extra.append(
            f"{info['failed_no_longer_in_source']} failed files were found no longer in the source "
            "(recorded as gone, not failed)"
        )
    if info["excluded_by_filters"]:
        extra.append(f"{info['excluded_by_filters']} files now excluded by the filters (kept on the platform)")
    output.print_status(info, as_json=args.json, extra=extra)
    return EXIT_OK
