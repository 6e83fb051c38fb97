"""``ingest viking …``: VikingDB tools beyond ingesting (``task-info``), printed through ``ingest.cli.output``."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError

from ingest.cli import output
from ingest.cli.exits import EXIT_OK
from ingest.cli.options import add_command, add_json_flag, add_subcommands
from ingest.config import load_toml, validation_message
from ingest.errors import ConfigError
from ingest.platforms.registry import get_spec
from ingest.platforms.viking.config import VikingTargetConfig

__all__ = ["add_viking_commands"]

EPILOG = """\
examples:
  VOLC_ACCESSKEY=… VOLC_SECRETKEY=… ingest viking task-info 7f3a… --region cn-beijing
  ingest viking task-info 7f3a… --config configs/viking.toml --json
"""


def add_viking_commands(commands: Any) -> None:
    parser = add_command(
        commands,
        "viking",
        help="VikingDB knowledge-base tools (task-info)",
        description="Tools for the VikingDB knowledge base beyond ingesting.",
        epilog=EPILOG,
    )
    tools = add_subcommands(parser, "viking_command", "TOOL")
    p = add_command(
        tools,
        "task-info",
        help="show a download task's status, progress and attachment link",
        description="Ask /api/knowledge/task/info about a download task. Credentials come from "
        "VOLC_ACCESSKEY / VOLC_SECRETKEY (or --access-key / --secret-key).",
        epilog=EPILOG,
    )
    p.add_argument("task_id", metavar="ID", help="the task id")
    p.add_argument("--config", metavar="FILE.toml", help="take endpoint, region and keys from [target]")
    p.add_argument("--endpoint", metavar="URL", help="the API base URL (default: the cn-beijing endpoint)")
    p.add_argument("--region", metavar="REGION", help="the region requests are signed for (default cn-beijing)")
    p.add_argument("--access-key", metavar="AK", help="access key (prefer VOLC_ACCESSKEY)")
    p.add_argument("--secret-key", metavar="SK", help="secret key (prefer VOLC_SECRETKEY)")
    add_json_flag(p, "print the task as JSON")
    p.set_defaults(handler=_task_info_command)


def _task_info_command(args: argparse.Namespace) -> int:
    tree: dict[str, Any] = {}
    if args.config:
        tree = dict(load_toml(Path(args.config)).get("target") or {})
    settings = {
        "endpoint": args.endpoint,
        "region": args.region,
        "access_key": args.access_key or os.environ.get("VOLC_ACCESSKEY"),
        "secret_key": args.secret_key or os.environ.get("VOLC_SECRETKEY"),
    }
    tree.update({k: v for k, v in settings.items() if v})
    tree["type"] = "viking"
    for key, env in get_spec("viking").secret_env.items():
        if not tree.get(key):
            raise ConfigError(f"task-info needs the {key.replace('_', ' ')}: set {env} (or --{key.replace('_', '-')})")
    # The knowledge base and staging store play no part in task/info; placeholders satisfy the model.
    tree.setdefault("collection_name", "unused")
    tree.setdefault("staging", {"bucket": "unused"})
    try:
        config = VikingTargetConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "task-info settings")) from None
    from ingest.platforms.viking.target import fetch_task_info  # the HTTP stack, only when the command runs

    info = anyio.run(fetch_task_info, config, args.task_id)
    if args.json:
        output.print_json(dataclasses.asdict(info))
        return EXIT_OK
    output.say(f"task {info.task_id}: {info.status}, {info.percentage}%")
    if info.attachment_link:
        output.say(f"attachment: {info.attachment_link}")
    return EXIT_OK
