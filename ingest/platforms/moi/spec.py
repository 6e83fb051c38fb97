"""MOI's registration: what ``--target moi`` takes from flags, the environment and config files."""

from __future__ import annotations

from typing import Any

from ingest.platforms.base import Target, TargetContext
from ingest.platforms.moi.config import MoiTargetConfig
from ingest.platforms.moi.embedded import embedded_moi
from ingest.platforms.registry import CliOption, TargetSpec

__all__ = ["SPEC"]

CLI_OPTIONS = (
    CliOption("--volume-id", "volume_id", "MOI: the volume to load files into", metavar="ID"),
    CliOption(
        "--api-key",
        "api_key",
        "MOI: API key (prefer the MOI_KEY environment variable: the command line is visible to others)",
        metavar="KEY",
    ),
    CliOption(
        "--file-status-table",
        "file_status_table",
        "MOI: status codes of /task/files: 'seed' (4 failed, 5 success; default) or 'v5' (3 failed, 4 success)",
        choices=("seed", "v5"),
    ),
    CliOption("--workspace-id", "workspace_id", "MOI 5.0: workspace id, sent as X-Workspace-ID", metavar="ID"),
)


def _add_commands(commands: Any) -> None:
    """``ingest moi connectors|tasks …`` and ``ingest migrate``, imported only when the CLI is built."""
    from ingest.platforms.moi.commands import add_moi_commands

    add_moi_commands(commands)


def _target(config: MoiTargetConfig, context: TargetContext) -> Target:
    """The target, imported when a run builds one: the CLI and the settings need only ``MoiTargetConfig``."""
    from ingest.platforms.moi.target import MoiTarget

    return MoiTarget(config, context)


SPEC = TargetSpec(
    name="moi",
    help="MatrixOne Intelligence (MOI): files into a volume through /connectors/upload",
    config_model=MoiTargetConfig,
    factory=_target,
    secret_env={"api_key": "MOI_KEY"},
    cli_options=CLI_OPTIONS,
    add_commands=_add_commands,
    embedded=embedded_moi,
)
