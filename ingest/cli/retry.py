"""``ingest retry-failed``: re-send the files a run recorded as failed, with that run's settings."""

from __future__ import annotations

import argparse
import os
from typing import Any

import anyio
from pydantic import ValidationError

from ingest.cli import output
from ingest.cli.exits import EXIT_CODES_HELP
from ingest.cli.options import (
    add_command,
    add_engine_flags,
    add_output_flags,
    add_platform_options,
    engine_settings,
)
from ingest.config import validation_message
from ingest.errors import ConfigError
from ingest.platforms.registry import target_specs

__all__ = ["add_parser", "command"]

EPILOG = f"""\
examples:
  MOI_KEY=… ingest retry-failed --manifest ./run.db
  ingest retry-failed --manifest ./run.db --concurrency 4 --json
  ingest retry-failed --manifest 'postgresql://ingest@db:5432/ingest?job=docs-2024'

{EXIT_CODES_HELP}
"""


def add_parser(commands: Any) -> None:
    p = add_command(
        commands,
        "retry-failed",
        help="re-send only the files a run recorded as failed",
        description="Re-send the files the manifest records as failed, with the source and destination of "
        "the run that wrote it. Secrets are never stored: provide them again, from the environment ("
        + ", ".join(env for spec in target_specs() for env in spec.secret_env.values())
        + ") or a flag.",
        epilog=EPILOG,
    )
    p.add_argument(
        "--manifest",
        required=True,
        metavar="PATH|URL",
        help="the manifest of the earlier run: a file, or postgresql://…?job=NAME",
    )
    p.add_argument("--job", metavar="NAME", help="the job's name in a postgresql:// manifest (or ?job=NAME)")
    secrets = p.add_argument_group("secrets (never stored in the manifest: give them again)")
    add_platform_options(
        secrets,
        [(spec.name, opt) for spec in target_specs() for opt in spec.cli_options if opt.field in spec.secret_env],
    )
    add_engine_flags(p)
    add_output_flags(p, manifest=False)
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    from ingest.engine.run import retry_failed, saved_config

    config = saved_config(args.manifest, _secrets(args), job=args.job)
    try:
        engine = config.engine.model_validate({**config.engine.model_dump(), **engine_settings(args)})
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "flags")) from None
    updates: dict[str, Any] = {"report": args.report, "quiet": args.quiet, "progress": args.progress}
    config = config.model_copy(update={"engine": engine, **{k: v for k, v in updates.items() if v is not None}})
    summary = anyio.run(lambda: retry_failed(config, handle_signals=True))
    output.print_summary(summary, as_json=args.json, quiet=args.quiet)
    return summary.exit_code


def _secrets(args: argparse.Namespace) -> dict[str, dict[str, str | None]]:
    """Secrets for whichever target the manifest names: each platform's flags, else its environment."""
    return {
        spec.name: {
            key: getattr(args, "target_" + key, None) or os.environ.get(env) for key, env in spec.secret_env.items()
        }
        for spec in target_specs()
    }
