"""``ingest viking …``: VikingDB tools beyond ingesting (``task-info``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError

from ingest.config import load_toml, validation_message
from ingest.errors import ConfigError
from ingest.platforms.registry import get_spec
from ingest.platforms.viking.target import VikingTargetConfig, fetch_task_info

__all__ = ["add_viking_commands"]


def add_viking_commands(commands: Any) -> None:
    parser = commands.add_parser(
        "viking",
        help="VikingDB knowledge-base tools (task-info)",
        description="Tools for the VikingDB knowledge base beyond ingesting.",
    )
    tools = parser.add_subparsers(dest="viking_command", metavar="TOOL", parser_class=type(parser))
    tools.required = True
    p = tools.add_parser(
        "task-info",
        help="show a download task's status, progress and attachment link",
        description="Ask /api/knowledge/task/info about a download task. Credentials come from "
        "VOLC_ACCESSKEY / VOLC_SECRETKEY (or --access-key / --secret-key).",
    )
    p.add_argument("task_id", metavar="ID", help="the task id")
    p.add_argument("--config", metavar="FILE.toml", help="take endpoint, region and keys from [target]")
    p.add_argument("--endpoint", metavar="URL", help="the API base URL (default: the cn-beijing endpoint)")
    p.add_argument("--region", metavar="REGION", help="the region requests are signed for (default cn-beijing)")
    p.add_argument("--access-key", metavar="AK", help="access key (prefer VOLC_ACCESSKEY)")
    p.add_argument("--secret-key", metavar="SK", help="secret key (prefer VOLC_SECRETKEY)")
    p.add_argument("--json", action="store_true", help="print the task as JSON")
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
    info = anyio.run(fetch_task_info, config, args.task_id)
    if args.json:
        print(json.dumps({"task_id": info.task_id, "status": info.status, "percentage": info.percentage,
                          "attachment_link": info.attachment_link}, ensure_ascii=False))  # fmt: skip
    else:
        print(f"task {info.task_id}: {info.status}, {info.percentage}%")
        if info.attachment_link:
            print(f"attachment: {info.attachment_link}")
    sys.stdout.flush()
    return 0
