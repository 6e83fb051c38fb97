"""VikingDB's registration: what ``--target viking`` takes from flags, the environment and config files."""

from __future__ import annotations

import argparse
from typing import Any

from ingest.platforms.base import Target, TargetContext
from ingest.platforms.registry import CliOption, TargetSpec
from ingest.platforms.viking.config import VikingTargetConfig, parse_meta_flag

__all__ = ["SPEC"]


def _meta_flag(text: str) -> str:
    try:
        parse_meta_flag(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


CLI_OPTIONS = (
    CliOption(
        "--region", "region", "VikingDB: the region requests are signed for (default cn-beijing)", metavar="REGION"
    ),
    CliOption("--collection", "collection_name", "VikingDB: the knowledge base's name", metavar="NAME"),
    CliOption("--project", "project", "VikingDB: the knowledge base's project (default 'default')", metavar="NAME"),
    CliOption(
        "--resource-id",
        "resource_id",
        "VikingDB: the knowledge base's resource id (instead of a name)",
        metavar="ID",
    ),
    CliOption(
        "--staging-endpoint",
        "staging_endpoint",
        "VikingDB: S3-compatible store files are staged in (default: TOS of the region)",
        metavar="URL",
    ),
    CliOption("--staging-bucket", "staging_bucket", "VikingDB: the staging bucket", metavar="BUCKET"),
    CliOption(
        "--staging-prefix",
        "staging_prefix",
        "VikingDB: key prefix of staged files (default ingest/)",
        metavar="PREFIX",
    ),
    CliOption(
        "--staging-path-style",
        "staging_path_style",
        "VikingDB: path-style staging URLs (default: only for IP addresses and localhost)",
        kind="switch",
    ),
    CliOption(
        "--by-reference",
        "by_reference",
        "VikingDB: add the objects of an s3:// source that is the TOS VikingDB reads by their own tos_path"
        " (no staging copy, no bytes through this machine)",
        kind="switch",
    ),
    CliOption(
        "--add-type",
        "add_type",
        "VikingDB: how doc/add reads staged files: by tos_path (tos, default) or a presigned URL (url)",
        choices=("tos", "url"),
    ),
    CliOption(
        "--meta",
        "meta",
        "VikingDB: a meta field for every document, KEY=VALUE or KEY:TYPE=VALUE (repeatable); values may use "
        "{path}, {top_folder}, {folder}, {name}, {stem}, {ext}",
        metavar="KEY=VALUE",
        kind="repeat",
        convert=_meta_flag,
    ),
    CliOption("--doc-id-prefix", "doc_id_prefix", "VikingDB: prefix of every doc_id, to keep trees apart", metavar="P"),
    CliOption(
        "--access-key",
        "access_key",
        "VikingDB: access key (prefer VOLC_ACCESSKEY: the command line is visible to others)",
        metavar="AK",
    ),
    CliOption("--secret-key", "secret_key", "VikingDB: secret key (prefer VOLC_SECRETKEY)", metavar="SK"),
)


def _add_commands(commands: Any) -> None:
    """``ingest viking task-info``, imported only when the CLI is built."""
    from ingest.platforms.viking.commands import add_viking_commands

    add_viking_commands(commands)


def _target(config: VikingTargetConfig, context: TargetContext) -> Target:
    """The target (its HTTP and S3 clients), imported when a run builds one: the CLI needs only the settings."""
    from ingest.platforms.viking.target import VikingTarget

    return VikingTarget(config, context)


SPEC = TargetSpec(
    name="viking",
    help="Volcengine VikingDB knowledge base: files staged in TOS, then doc/add",
    config_model=VikingTargetConfig,
    factory=_target,
    secret_env={"access_key": "VOLC_ACCESSKEY", "secret_key": "VOLC_SECRETKEY"},
    cli_options=CLI_OPTIONS,
    add_commands=_add_commands,
)
