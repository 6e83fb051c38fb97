"""The convergence side of the command line: ``ingest run``'s flags for replace/delete, the dry run,
schedules and logs; ``ingest plan``; and what ``ingest run`` does with them (``run_command``)."""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from ingest.cli import output
from ingest.cli.exits import EXIT_CODES_HELP, EXIT_FAILED, EXIT_OK
from ingest.config import RunConfig, SyncConfig
from ingest.errors import ConfigError

__all__ = ["add_plan_parser", "add_sync_flags", "apply_sync_flags", "run_command"]


def add_sync_flags(p: argparse.ArgumentParser, *, schedule: bool = True) -> None:
    g = p.add_argument_group("converging (see docs/sync.md)")
    g.add_argument(
        "--on-change",
        choices=["replace", "keep"],
        help="a changed file's previous document: deleted once the new one is done (replace, the default where "
        "the platform can delete) or kept",
    )
    g.add_argument(
        "--delete",
        action="store_true",
        default=None,
        help="delete the documents of files no longer in the source (only documents this manifest created)",
    )
    g.add_argument(
        "--max-delete",
        metavar="N|P%",
        help="with --delete, stop before deleting anything if more than N documents (or P%% of the files) would "
        "go (default 50%%)",
    )
    g.add_argument("--dry-run", action="store_true", help="print what the run would do; send nothing")
    g.add_argument("--remote", action="store_true", help="with --dry-run: also list what the platform holds")
    if schedule:
        g.add_argument("--every", metavar="INTERVAL", help="run again every INTERVAL (30m, 1h, 1d) until stopped")
        g.add_argument("--cron", metavar="'M H DoM Mon DoW'", help="run on a cron schedule until stopped")
    g.add_argument("--log-file", metavar="PATH", help="append events (runs, failures, retries, deletes) to PATH")
    g.add_argument("--log-format", choices=["text", "json"], default="text", help="one JSON object per event (json)")


def apply_sync_flags(args: argparse.Namespace, config: RunConfig) -> RunConfig:
    values: dict[str, Any] = config.sync.model_dump()
    for key in ("on_change", "delete", "max_delete"):
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    from pydantic import ValidationError

    try:
        sync = SyncConfig.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "flags"
        raise ConfigError(f"{flag}: {err['msg'].removeprefix('Value error, ')}") from None
    return config.model_copy(update={"sync": sync})


def _configure_logs(args: argparse.Namespace, config: RunConfig) -> None:
    from pathlib import Path

    from ingest.logs import configure, secrets_of

    if getattr(args, "log_file", None):
        configure(Path(args.log_file), args.log_format, secrets=secrets_of(config))


def run_command(args: argparse.Namespace, config: RunConfig) -> int | None:
    """``ingest run`` with a dry run or a schedule: its exit code; ``None``: an ordinary run."""
    config = apply_sync_flags(args, config)
    _configure_logs(args, config)
    if args.dry_run:
        return _plan(args, config)
    if args.every or args.cron:
        return _scheduled(args, config)
    return None


def synced(args: argparse.Namespace, config: RunConfig) -> RunConfig:
    return apply_sync_flags(args, config)


def _plan(args: argparse.Namespace, config: RunConfig) -> int:
    from ingest.engine.plan import make_plan

    plan = anyio.run(lambda: make_plan(config, remote=args.remote))  # --max-rps is in config.engine
    if args.json:
        output.print_json(plan.to_json())
    else:
        for line in plan.lines():
            output.say(line)
    return EXIT_FAILED if plan.max_delete_stops else EXIT_OK


def _scheduled(args: argparse.Namespace, config: RunConfig) -> int:
    from ingest.engine.schedule import Schedule, parse_every, run_scheduled

    if args.every and args.cron:
        raise ConfigError("give either --every or --cron, not both")
    schedule = Schedule(every=parse_every(args.every) if args.every else None, cron=args.cron)

    def on_summary(summary: Any) -> None:
        output.print_summary(summary, as_json=args.json, quiet=args.quiet)

    def say(line: str) -> None:
        if not config.quiet and not args.json:
            output.say(line)

    return anyio.run(lambda: run_scheduled(config, schedule, on_summary=on_summary, on_error=output.error, say=say))


PLAN_EPILOG = f"""\
examples:
  ingest plan ./docs --target moi --endpoint URL --volume-id 1001 --manifest run.db
  ingest plan ./docs --manifest run.db --delete --max-delete 10 --json
  ingest plan ./docs --manifest run.db --remote     also list what the platform holds

{EXIT_CODES_HELP} (1 here: --max-delete would stop the run)
"""


def add_plan_parser(commands: Any) -> None:
    from ingest.cli.options import (
        add_command,
        add_destination_flags,
        add_engine_flags,
        add_output_flags,
        add_scale_flags,
        add_source_flags,
    )

    p = add_command(
        commands,
        "plan",
        help="what `ingest run` would do, without sending anything",
        description="Walk the source and read the manifest as a run does, send nothing, and print what the run "
        "would do: new, changed (replaced), unchanged, to delete, bytes, requests and a time estimate. The same "
        "as `ingest run --dry-run`.",
        epilog=PLAN_EPILOG,
    )
    from pathlib import Path

    p.add_argument("source", nargs="?", type=Path, help="the folder to ingest (or source.path in --config)")
    p.add_argument("--config", type=Path, metavar="FILE.toml", help="settings file; flags override it")
    add_source_flags(p)
    add_destination_flags(p)
    add_engine_flags(p)
    add_output_flags(p)
    add_scale_flags(p)
    add_sync_flags(p, schedule=False)
    p.set_defaults(handler=_plan_command, dry_run=True)


def _plan_command(args: argparse.Namespace) -> int:
    from ingest.cli.options import config_from_args

    config = apply_sync_flags(args, config_from_args(args))
    return _plan(args, config)
