"""The flags commands share, and ``config_from_args``, which turns ``ingest run``'s into a ``RunConfig``.

Option groups: which files (``add_source_flags``), the destination, from the platform registry
(``add_destination_flags``, ``add_platform_options``), sending (``add_engine_flags``), output
(``add_output_flags``, ``add_json_flag``) and paging (``add_paging_flags``). ``Parser`` is the parser
class of every command, the platforms' included: a usage error is a ``ConfigError``, which
``ingest.cli.main`` reports in one line with exit code 2.
"""

from __future__ import annotations

import argparse
import enum
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from ingest.config import RunConfig, load_toml, parse_size, validation_message
from ingest.errors import ConfigError
from ingest.platforms.registry import CliOption, get_spec, target_specs

__all__ = [
    "ENGINE_KEYS",
    "HelpFormatter",
    "Parser",
    "add_command",
    "add_destination_flags",
    "add_engine_flags",
    "add_json_flag",
    "add_output_flags",
    "add_paging_flags",
    "add_platform_options",
    "add_source_flags",
    "add_subcommands",
    "config_from_args",
    "engine_settings",
    "number_or_name",
    "positive_float",
    "positive_int",
    "size",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps a one-paragraph description to the terminal; keeps text of several lines (the examples of an
    epilog) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


class Parser(argparse.ArgumentParser):
    """The parser of every ``ingest`` command: a usage error raises ``ConfigError`` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def add_command(
    commands: Any, name: str, *, help: str, description: str, epilog: str | None = None, **kwargs: Any
) -> argparse.ArgumentParser:
    """``ingest NAME``: one line for the list of commands, a description, and examples in ``epilog``."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=HelpFormatter, **kwargs
    )
    return parser


def add_subcommands(parser: argparse.ArgumentParser, dest: str, metavar: str) -> Any:
    """The subcommands of ``parser`` (``ingest moi GROUP``, ``ingest serve PLATFORM``): one is required."""
    sub = parser.add_subparsers(dest=dest, metavar=metavar, parser_class=Parser)
    sub.required = True
    return sub


# ----- argument types --------------------------------------------------------------------------------


def size(text: str) -> int:
    """``200MiB``, ``1.5GB``, ``4096``: a byte count."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def positive_float(text: str) -> float:
    """A number above 0 (``95``, ``0.5``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number above 0")
    return value


def number_or_name(kind: type[enum.IntEnum], what: str) -> Callable[[str], int]:
    """An argument type: any whole number, or the name of a member of ``kind`` in any case."""

    def convert(text: str) -> int:
        key = text.strip().upper()
        if key.isdigit():
            return int(key)
        if key in kind.__members__:
            return int(kind[key])
        raise argparse.ArgumentTypeError(f"{what} must be a number or one of {', '.join(kind.__members__)}")

    return convert


# ----- option groups ---------------------------------------------------------------------------------


def add_source_flags(p: argparse.ArgumentParser) -> None:
    """Which files of the source folder are sent."""
    g = p.add_argument_group("which files")
    g.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="send only matching files; repeatable ('*.pdf', 'docs/**/*.md')",
    )
    g.add_argument("--exclude", action="append", metavar="GLOB", help="leave out matching files or folders; repeatable")
    g.add_argument("--hidden", action="store_true", default=None, help="include dot-files and dot-folders")
    g.add_argument(
        "--follow-symlinks",
        action="store_true",
        default=None,
        help="follow symbolic links (loops are detected and skipped)",
    )
    g.add_argument("--max-size", type=size, metavar="SIZE", help="leave out files larger than SIZE (e.g. 200MiB)")
    b = p.add_argument_group(
        "bucket source (s3://BUCKET/PREFIX)",
        "keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or [source] access_key / secret_key); never stored",
    )
    b.add_argument(
        "--source-endpoint", metavar="URL", help="S3-compatible endpoint (OSS, TOS, MinIO, …); default: AWS S3"
    )
    b.add_argument("--source-region", metavar="REGION", help="the bucket's region")
    b.add_argument(
        "--source-path-style",
        action="store_true",
        default=None,
        help="path-style URLs (endpoint/bucket/key), for stores without virtual-host buckets",
    )


def add_destination_flags(p: argparse.ArgumentParser) -> None:
    """``--target``, ``--endpoint`` and every registered platform's own flags."""
    g = p.add_argument_group("destination (omit all of these to use the embedded local emulator)")
    g.add_argument("--target", choices=[s.name for s in target_specs()], help="the platform to send to")
    g.add_argument("--endpoint", metavar="URL", help="the platform's API base URL, e.g. http://127.0.0.1:8080")
    add_platform_options(g, [(spec.name, opt) for spec in target_specs() for opt in spec.cli_options])


def add_platform_options(group: Any, options: Sequence[tuple[str, CliOption]]) -> None:
    """Add platforms' flags to ``group`` (dest ``target_<field>``); a flag two platforms share must name the
    same setting."""
    added: dict[str, str] = {}
    for platform, opt in options:
        if opt.flag in added:
            if added[opt.flag] != opt.field:
                raise RuntimeError(f"{platform} reuses {opt.flag} for another setting")
            continue
        added[opt.flag] = opt.field
        dest = "target_" + opt.field
        if opt.kind == "switch":
            group.add_argument(opt.flag, dest=dest, action="store_true", default=None, help=opt.help)
        else:
            extra: dict[str, Any] = {"type": opt.convert} if opt.convert is not None else {}
            group.add_argument(
                opt.flag,
                dest=dest,
                metavar=opt.metavar,
                choices=opt.choices,
                action="append" if opt.kind == "repeat" else "store",
                help=opt.help,
                **extra,
            )


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    """How files are sent: ``[engine]`` settings (see ``ENGINE_KEYS``)."""
    g = p.add_argument_group("sending")
    g.add_argument("--concurrency", type=int, metavar="N", help="uploads in parallel (default 16)")
    g.add_argument(
        "--batch-files",
        type=int,
        metavar="N",
        help="small files per upload request where the platform allows it (MOI: up to 20, the default); "
        "1 = no batching",
    )
    g.add_argument("--batch-bytes", type=size, metavar="SIZE", help="bytes per batched request (default 32MiB)")
    g.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="sends per file in a run, counting the platform's own retries of failed files (default 3)",
    )
    g.add_argument(
        "--request-retries",
        type=int,
        metavar="N",
        help="repeats of one request after connection errors, 5xx and 429 (default 8)",
    )
    g.add_argument(
        "--task-timeout",
        type=float,
        metavar="SECONDS",
        help="how long a file may stay processing on the platform before it counts as failed (default 3600)",
    )
    g.add_argument(
        "--request-timeout",
        type=float,
        metavar="SECONDS",
        help="give up on a connection, or on an answer that stops arriving, after SECONDS (default 120)",
    )
    g.add_argument(
        "--unreachable-after",
        type=float,
        metavar="SECONDS",
        help="stop sending when the platform has not answered at all for SECONDS; files left unsent go "
        "with the next run (default 300)",
    )
    g.add_argument(
        "--max-rps",
        type=positive_float,
        metavar="N",
        help="send at most N requests per second to the platform, uploads, status checks, lookups, deletes "
        "and retries together (like rclone's --tpslimit), to stay under its quota; with --processes or "
        "--ray --workers each worker gets N/workers (default: no budget, only backing off after 429s)",
    )
    g.add_argument(
        "--max-in-flight",
        type=int,
        metavar="N",
        help="files accepted by the platform but not yet finished, at most; bounds memory (default 20000)",
    )
    g.add_argument(
        "--poll-initial",
        type=float,
        metavar="SECONDS",
        help="first status check after a file is accepted; the interval then grows 1.5x (default 0.1)",
    )
    g.add_argument(
        "--poll-max", type=float, metavar="SECONDS", help="longest interval between status checks (default 5)"
    )
    g.add_argument(
        "--dedup",
        choices=["resume", "always", "never"],
        help="ask the platform to skip files it already holds: only files a crash left mid-upload "
        "(resume, default), every file (always), or never",
    )
    g.add_argument(
        "--read-chunk-size", dest="chunk_size", type=size, metavar="SIZE", help="file read/stream chunk (default 1MiB)"
    )


#: The ``[engine]`` settings ``add_engine_flags`` sets, by their ``args`` names.
ENGINE_KEYS = (
    "concurrency",
    "batch_files",
    "batch_bytes",
    "max_attempts",
    "request_retries",
    "task_timeout",
    "dedup",
    "chunk_size",
    "poll_initial",
    "poll_max",
    "max_in_flight",
    "request_timeout",
    "unreachable_after",
    "max_rps",
)


def add_output_flags(p: argparse.ArgumentParser, *, manifest: bool = True) -> None:
    """Where the record goes and what is printed; ``manifest=False`` for a command that takes its own."""
    g = p.add_argument_group("output")
    if manifest:
        g.add_argument(
            "--manifest",
            metavar="PATH|URL",
            help="the manifest that makes the run resumable: a SQLite file (default: under ./.ingest/manifests/) "
            "or postgresql://user@host/db?job=NAME, shared by every process and machine of the job",
        )
    g.add_argument("--report", type=Path, metavar="FILE.json", help="write one JSON record per file at the end")
    g.add_argument("-q", "--quiet", action="store_true", default=None, help="print only errors")
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: on when stderr is a terminal)",
    )
    add_json_flag(g, "print the final summary as JSON on stdout")
    g.add_argument("-v", "--verbose", action="count", default=0, help="log retries and decisions (-vv: debug)")


def add_json_flag(p: Any, what: str = "print JSON for scripts instead of text") -> None:
    """``--json``: machine-readable output (``ingest.cli.output.print_json``)."""
    p.add_argument("--json", action="store_true", help=what)


def add_paging_flags(
    p: argparse.ArgumentParser,
    *,
    page_size: int | None = None,
    default_size: str = "the platform's",
    sorting: bool = False,
) -> None:
    """``--page``, ``--page-size``, ``--all`` (and with ``sorting`` ``--order-by``, ``--desc``) for a listing
    shown with ``ingest.cli.output.print_listing``. Without ``page_size``, the platform's page size applies."""
    g = p.add_argument_group("paging")
    g.add_argument("--page", type=positive_int, metavar="N", help="page number (default 1)")
    g.add_argument(
        "--page-size",
        type=positive_int,
        default=page_size,
        metavar="N",
        help=f"entries per page (default {page_size})" if page_size else f"entries per page (default: {default_size})",
    )
    g.add_argument("--all", action="store_true", help="fetch every page")
    if sorting:
        g.add_argument("--order-by", metavar="FIELD", help="sort field, e.g. created_at, name")
        g.add_argument("--desc", action="store_true", help="sort descending")


# ----- building the config ---------------------------------------------------------------------------


def _set(tree: dict[str, Any], section: str | None, key: str, value: Any) -> None:
    if value is None:
        return
    node = tree if section is None else tree.setdefault(section, {})
    node[key] = value


def engine_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[engine]`` settings given as flags (``add_engine_flags``), and only those."""
    return {key: value for key in ENGINE_KEYS if (value := getattr(args, key, None)) is not None}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """``ingest run``'s settings: defaults < --config file < environment secrets < flags."""
    tree: dict[str, Any] = load_toml(args.config) if args.config else {}
    origin = f"config file {args.config}" if args.config else "settings"
    _known_sections(tree, origin)
    if args.source is not None:
        _set(tree, "source", "path", str(args.source))
    for key in ("include", "exclude"):
        values = getattr(args, key)
        if values:
            tree.setdefault("source", {})[key] = [*tree.get("source", {}).get(key, []), *values]
    for key in ("hidden", "follow_symlinks", "max_size"):
        _set(tree, "source", key, getattr(args, key))
    for key in ("endpoint", "region", "path_style"):
        _set(tree, "source", key, getattr(args, f"source_{key}", None))
    for key, value in engine_settings(args).items():
        _set(tree, "engine", key, value)
    _target_flags(tree, args)
    for key in ("manifest", "report"):
        value = getattr(args, key)
        _set(tree, None, key, str(value) if value is not None else None)
    for key in ("job", "shared", "lease"):
        _set(tree, None, key, getattr(args, key, None))
    _set(tree, None, "quiet", args.quiet)
    _set(tree, None, "progress", args.progress)
    if "source" not in tree or "path" not in tree["source"]:
        raise ConfigError(
            "no source folder: pass it (or s3://BUCKET/PREFIX) as `ingest run DIR`, or set source.path in --config"
        )
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, origin)) from None


def _known_sections(tree: dict[str, Any], origin: str) -> None:
    """Name a misspelt section (``[sourc]``) before its absence is reported as something else."""
    fields = RunConfig.model_fields
    sections = sorted(f"[{name}]" for name, info in fields.items() if name in ("source", "target", "engine"))
    for key, value in tree.items():
        if key in fields:
            continue
        if isinstance(value, dict):
            raise ConfigError(f"{origin}: unknown section [{key}]; the sections are {', '.join(sections)}")
        raise ConfigError(f"{origin}: {key}: unknown setting; check the spelling against `ingest run --help`")


def _target_flags(tree: dict[str, Any], args: argparse.Namespace) -> None:
    """Fill ``[target]`` from --target, --endpoint, the chosen target's own flags and its secret env."""
    given_by_flag: dict[str, tuple[str, Any]] = {}
    for spec in target_specs():
        for opt in spec.cli_options:
            value = getattr(args, "target_" + opt.field, None)
            if value is not None:
                given_by_flag[opt.flag] = (opt.field, value)
    target = tree.get("target")
    if args.target is None and target is None:
        if given_by_flag or args.endpoint:
            names = ", ".join(([" --endpoint"] if args.endpoint else []) + list(given_by_flag)).strip()
            raise ConfigError(f"{names} given without --target; add --target (or drop them for the local emulator)")
        return
    target = dict(target or {})
    if args.target is not None:
        target["type"] = args.target
    if "type" not in target:
        known = ", ".join(spec.name for spec in target_specs())
        raise ConfigError(f"[target] needs a type ({known}); set it in the config file or pass --target")
    kind = str(target["type"])
    spec = get_spec(kind)
    own = {opt.flag for opt in spec.cli_options}
    foreign = [flag for flag in given_by_flag if flag not in own]
    if foreign:
        raise ConfigError(f"{', '.join(foreign)} does not apply to --target {kind}; see `ingest run --help`")
    if args.endpoint:
        target["endpoint"] = args.endpoint
    target.update(dict(given_by_flag.values()))
    for key, env in spec.secret_env.items():
        if key not in target and os.environ.get(env):
            target[key] = os.environ[env]
        if key not in target:
            flag = next((o.flag for o in spec.cli_options if o.field == key), None)
            hint = f" (or {flag})" if flag else ""
            raise ConfigError(f"target {kind} needs its {key.replace('_', ' ')}: set {env}{hint}")
    tree["target"] = target


def add_scale_flags(p: argparse.ArgumentParser) -> None:
    """One job shared by many processes or machines through the manifest (docs/scale.md)."""
    g = p.add_argument_group("scale-out (one job shared through the manifest; see docs/scale.md)")
    g.add_argument("--job", metavar="NAME", help="the job's name in a postgresql:// manifest (or ?job=NAME)")
    g.add_argument("--processes", type=int, metavar="N", help="N engine processes on this machine, one summary")
    g.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run --workers N worker actors on a Ray cluster (a local one without ADDRESS); pip install 'ingest[ray]'",
    )
    g.add_argument("--workers", type=int, metavar="N", help="worker actors for --ray (default 2)")
    g.add_argument(
        "--shared",
        action="store_true",
        default=None,
        help="work a job other processes share (claims and leases); implied by a postgresql:// manifest. "
        "Start the same command on N machines to run one job on all of them",
    )
    g.add_argument(
        "--lease", type=float, metavar="SECONDS", help="how long a claim outlives a silent worker (default 30)"
    )
