"""``ingest run``: send a folder's files to a platform, resumably."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import anyio

from ingest.cli import output
from ingest.cli.exits import EXIT_CODES_HELP
from ingest.cli.options import (
    add_command,
    add_destination_flags,
    add_engine_flags,
    add_output_flags,
    add_scale_flags,
    add_source_flags,
    config_from_args,
)

__all__ = ["EPILOG", "add_parser", "command"]

EPILOG = f"""\
examples:
  ingest run ./docs                          send ./docs to the embedded local MOI emulator
  MOI_KEY=… ingest run ./docs --target moi --endpoint https://moi.example.com --volume-id 1001
  ingest run ./docs --config configs/moi.toml --concurrency 64 --report run.json
  ingest status --manifest ./run.db          what the run did, per state
  ingest retry-failed --manifest ./run.db    re-send only the files that failed
  ingest serve moi --port 8080 --data-dir ./moi-data --api-key devkey --volume 1001
  KEYUE_TOKEN=… ingest run ./docs --target keyue --endpoint URL --uid u1 --username alice --dir-id 0 --mirror-dirs
  VOLC_ACCESSKEY=… VOLC_SECRETKEY=… ingest run ./docs --target viking --collection kb1 --staging-bucket stage
  ingest migrate --connector 7 --volume-id 1001 --manifest m.db   bucket -> MOI volume via load tasks
  AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… ingest run s3://corp-docs/handbook/ \
      --source-endpoint https://oss-cn-hangzhou.aliyuncs.com --target keyue …   a bucket through the engine
  ingest run s3://kb-src/ --target viking --collection kb1 --by-reference    TOS objects added by tos_path

{EXIT_CODES_HELP}
"""


#: Shown when a bucket goes into MOI through the engine: MOI can also load it server-side.
MIGRATE_NOTE = (
    "note: MOI can read this bucket itself: `ingest migrate --connector ID --volume-id …` (server-side"
    " connectors, no bytes through this machine) is the better choice when MOI reaches the bucket and the"
    " bucket is large; `ingest run s3://…` streams every byte through here, and suits buckets MOI cannot"
    " reach, filters (--include/--exclude/--max-size) and one manifest across sources"
)


def add_parser(commands: Any) -> None:
    p = add_command(
        commands,
        "run",
        help="send a folder's files to a platform",
        description="Send every file under SOURCE to the destination, resumably: files already done and "
        "unchanged are skipped without any network call; files caught mid-upload by a crash are re-sent "
        "with the platform's dedup option; changed files are sent again.",
        epilog=EPILOG,
    )
    p.add_argument("source", nargs="?", help="the folder or s3://BUCKET/PREFIX to ingest (or source.path in --config)")
    p.add_argument("--config", type=Path, metavar="FILE.toml", help="settings file; flags override it")
    add_source_flags(p)
    add_destination_flags(p)
    add_engine_flags(p)
    add_output_flags(p)
    add_scale_flags(p)
    from ingest.cli.sync import add_sync_flags

    add_sync_flags(p)
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    from ingest.cli.sync import run_command
    from ingest.engine.run import run

    config = config_from_args(args)
    done = run_command(args, config)  # --dry-run, --every/--cron; also --delete, --on-change, --log-file
    if done is not None:
        return done
    from ingest.cli.sync import synced

    config = synced(args, config)
    fan_out = (args.processes or 1) > 1 or args.ray is not None
    if config.target is None and not config.quiet and not args.json and not fan_out:
        output.say("no --target given: sending to the embedded local MOI emulator (files under ./.ingest/local)")
    if config.source.is_bucket and config.target is not None and config.target.type == "moi" and not args.json:
        output.say(MIGRATE_NOTE)
    if fan_out:
        from ingest.cli import fanout

        argv = sys.argv[1:] if args.argv is None else args.argv
        manifest = str(config.manifest) if config.manifest is not None else None
        if args.ray is not None:
            summary = fanout.run_on_ray(config, args.workers or 2, args.ray or None)
        else:
            show = not config.quiet and not args.json
            summary = fanout.run_processes(
                argv, args.processes, manifest=manifest, job=config.job, show=show, max_rps=config.engine.max_rps
            )
    else:
        summary = anyio.run(lambda: run(config, handle_signals=True))
    output.print_summary(summary, as_json=args.json, quiet=args.quiet)
    return summary.exit_code
