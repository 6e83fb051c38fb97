"""``ingest verify``: does the platform hold what the manifest says it should?"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ingest.cli import output
from ingest.cli.exits import EXIT_FAILED, EXIT_OK
from ingest.cli.options import add_command, add_json_flag, add_platform_options, positive_float
from ingest.errors import ConfigError
from ingest.platforms.registry import target_specs

if TYPE_CHECKING:
    from ingest.config import RunConfig
    from ingest.platforms.base import TargetContext

__all__ = ["add_parser", "command"]

EPILOG = """\
examples:
  MOI_KEY=… ingest verify --manifest ./run.db           one line per difference, then a summary
  ingest verify --manifest ./run.db --json --report diff.json
  ingest verify --manifest ./run.db --fix               re-send missing files, delete stale versions

codes: - missing on the platform, + extra (a document for a managed path that is not its current one),
       ~ stale earlier version, * size/md5 differ, ! failed on the platform
exit codes: 0 platform and manifest agree, 1 differences found (after --fix: left), 2 usage/config error
"""


def add_parser(commands: Any) -> None:
    p = add_command(
        commands,
        "verify",
        help="compare what the platform holds with the manifest",
        description="List the destination a manifest was loaded into and compare it with the manifest: missing, "
        "extra, stale and differing documents, and documents the platform failed. Documents this manifest did "
        "not create (and not named like a file it manages) are never reported or touched. Secrets come from the "
        "environment (" + ", ".join(env for spec in target_specs() for env in spec.secret_env.values()) + ").",
        epilog=EPILOG,
    )
    p.add_argument("--manifest", type=Path, required=True, metavar="PATH", help="the manifest of the load")
    p.add_argument("--report", type=Path, metavar="FILE.json", help="write every difference as JSON")
    p.add_argument("--fix", action="store_true", help="re-send missing files and delete stale and extra documents")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    p.add_argument(
        "--max-rps",
        type=positive_float,
        metavar="N",
        help="send at most N requests per second to the platform (listing, deletes, re-sends); "
        "default: the --max-rps of the run that wrote the manifest, if any",
    )
    add_json_flag(p)
    secrets = p.add_argument_group("secrets (never stored in the manifest: give them again)")
    add_platform_options(
        secrets,
        [(spec.name, opt) for spec in target_specs() for opt in spec.cli_options if opt.field in spec.secret_env],
    )
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    from ingest.cli.retry import _secrets
    from ingest.engine.run import retry_failed, saved_config
    from ingest.engine.verify import Difference, verify
    from ingest.manifest import open_manifest
    from ingest.manifest.lock import hold
    from ingest.platforms.registry import build_target

    config = saved_config(args.manifest, _secrets(args))
    if config.target is None:
        raise ConfigError(f"manifest {args.manifest} was loaded into the embedded emulator; nothing to verify")
    if args.max_rps is not None:
        config = config.model_copy(update={"engine": config.engine.model_copy(update={"max_rps": args.max_rps})})
    diffs: list[dict[str, Any]] = []

    def on_difference(diff: Difference) -> None:
        diffs.append(diff.to_json())
        if not args.json and not args.quiet:
            output.say(diff.line())

    async def resend(paths: list[str]) -> Any:
        cfg = config.model_copy(update={"quiet": True})
        return await retry_failed(cfg)

    async def main() -> Any:
        target = build_target(config.target, _context(config))  # type: ignore[arg-type]
        try:
            await target.open()
            manifest = open_manifest(args.manifest)
            try:
                return await verify(
                    target, manifest, on_difference=on_difference, fix=args.fix, resend=resend if args.fix else None
                )
            finally:
                manifest.close()
        finally:
            await target.aclose()

    if args.fix:
        with hold(args.manifest):
            result = anyio.run(main)
    else:
        result = anyio.run(main)
    if args.report is not None:
        try:
            args.report.write_text(json.dumps(diffs, ensure_ascii=False, indent=1))
        except OSError as exc:
            raise ConfigError(f"cannot write report {args.report}: {exc.strerror or exc}") from None
    if args.json:
        output.print_json({**result.to_json(), "differences": diffs})
    else:
        output.say(result.summary_line())
        if result.fixed:
            output.say(f"fixed: {result.fixed.get('deleted', 0)} deleted, {result.fixed.get('resent', 0)} re-sent")
    if args.fix:
        return EXIT_OK if _converged(args.manifest, config) else EXIT_FAILED
    return EXIT_OK if result.agree else EXIT_FAILED


def _converged(manifest_path: Path, config: Any) -> bool:
    """After ``--fix``: verify again, quietly."""
    from ingest.engine.verify import verify
    from ingest.manifest import open_manifest
    from ingest.platforms.registry import build_target

    async def again() -> bool:
        target = build_target(config.target, _context(config))
        try:
            await target.open()
            with open_manifest(manifest_path) as manifest:
                result = await verify(target, manifest, on_difference=lambda _d: None)
            return result.agree
        finally:
            await target.aclose()

    return anyio.run(again)


def _context(config: RunConfig) -> TargetContext:
    """The target's context: the request budget (``--max-rps``) if one is set. The re-sends of ``--fix``
    come after the listing and the deletes, as a run of their own with the same budget."""
    from ingest.platforms.base import TargetContext
    from ingest.ratelimit import RequestBudget

    rate = config.engine.max_rps
    return TargetContext(budget=RequestBudget(rate) if rate else None)
