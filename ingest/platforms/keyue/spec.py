"""Keyue's registration: what ``--target keyue`` takes from flags, the environment and config files."""

from __future__ import annotations

from ingest.platforms.base import Target, TargetContext
from ingest.platforms.keyue.config import KeyueTargetConfig
from ingest.platforms.registry import CliOption, TargetSpec

__all__ = ["SPEC"]

CLI_OPTIONS = (
    CliOption(
        "--token",
        "token",
        "Keyue: the robot's API key (prefer the KEYUE_TOKEN environment variable: the command line is visible)",
        metavar="TOKEN",
    ),
    CliOption("--uid", "uid", "Keyue: user id (uid header), from the Keyue console", metavar="UID"),
    CliOption("--username", "username", "Keyue: user name (username header)", metavar="NAME"),
    CliOption("--dir-id", "dir_id", "Keyue: destination directory id (default 0, the default directory)", metavar="ID"),
    CliOption(
        "--mirror-dirs",
        "mirror_dirs",
        "Keyue: recreate the local folder tree as directories under --dir-id, each file in its folder's",
        kind="switch",
    ),
    CliOption(
        "--split-by",
        "split_by",
        "Keyue taskExtend: chunk boundaries, punc or wrap (the doc calls punc newline and wrap punctuation "
        "splitting); default: automatic",
        choices=("punc", "wrap"),
    ),
    CliOption(
        "--chunk-size",
        "chunk_size",
        "Keyue taskExtend: maximum characters per chunk, 200-800 (default: automatic)",
        metavar="N",
    ),
    CliOption(
        "--overlap",
        "overlap_proportion",
        "Keyue taskExtend: overlap between chunks in percent, 0-20 (default: automatic)",
        metavar="PCT",
    ),
    CliOption(
        "--pre-handle-text",
        "pre_handle_text",
        "Keyue taskExtend: remove repeated spaces, newlines and tabs",
        kind="switch",
    ),
    CliOption(
        "--pre-handle-directory",
        "pre_handle_directory",
        "Keyue taskExtend: remove tables of contents, headers and footers",
        kind="switch",
    ),
    CliOption(
        "--treat-enhancing-as-done",
        "treat_enhancing_as_done",
        "Keyue: count a learned document as done while knowledge enhancement (learnStatus 2) still runs",
        kind="switch",
    ),
    CliOption(
        "--api-prefix",
        "api_prefix",
        "Keyue: API path, open (/open/v1/api/v2, default) or csp-service (/csp-service/open/v1/api/v2)",
        choices=("open", "csp-service"),
    ),
)


def _target(config: KeyueTargetConfig, context: TargetContext) -> Target:
    """The target (and its HTTP client), imported when a run builds one: the CLI needs only the settings."""
    from ingest.platforms.keyue.target import KeyueTarget

    return KeyueTarget(config, context)


SPEC = TargetSpec(
    name="keyue",
    help="Baidu Keyue (客悦): files into a knowledge directory through llm_document_import",
    config_model=KeyueTargetConfig,
    factory=_target,
    secret_env={"token": "KEYUE_TOKEN"},
    cli_options=CLI_OPTIONS,
)
