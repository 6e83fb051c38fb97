"""The command line: argument parsing only. It builds a ``RunConfig`` and calls ``ingest.engine.run``.

Exit codes (a contract scripts rely on): 0 every file done, 1 some files failed (listed),
2 usage or configuration error, 130 interrupted (the manifest is consistent; rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio
from pydantic import ValidationError

from ingest import __version__
from ingest.cli.jobstatus import job_lines, job_status
from ingest.config import RunConfig, load_toml, parse_size, validation_message
from ingest.errors import ConfigError, IngestError, InterruptedRun
from ingest.manifest import open_manifest, parse_location
from ingest.models import FileState
from ingest.platforms.registry import CliOption, get_spec, target_specs
from ingest.report import RunSummary

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """\
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

exit codes: 0 all files done, 1 some failed, 2 usage/config error, 130 interrupted (rerun resumes)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"ingest: error: {message} (see `{self.prog} --help`)\n")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(*, with_emulators: bool = True) -> argparse.ArgumentParser:
    """The whole command line. ``with_emulators=False`` leaves ``serve``'s platforms out, which spares
    every other command the import of the emulators and aiohttp's server (a noticeable start-up cost)."""
    parser = _Parser(
        prog="ingest",
        description="Bulk-ingest directory trees into knowledge-base platforms, resumably.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ingest {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_run(sub)
    _add_retry(sub)
    _add_status(sub)
    _add_serve(sub, with_emulators)
    for spec in target_specs():
        if spec.add_commands is not None:
            spec.add_commands(sub)
    return parser


def _add_target_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("destination (omit all of these to use the embedded local emulator)")
    g.add_argument("--target", choices=[s.name for s in target_specs()], help="the platform to send to")
    g.add_argument("--endpoint", metavar="URL", help="the platform's API base URL, e.g. http://127.0.0.1:8080")
    _add_options(g, [(spec.name, opt) for spec in target_specs() for opt in spec.cli_options])


def _add_options(group: Any, options: Sequence[tuple[str, CliOption]]) -> None:
    """Add platforms' flags to ``group``; a flag two platforms share must name the same setting."""
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


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sending")
    g.add_argument("--concurrency", type=int, metavar="N", help="uploads in parallel (default 16)")
    g.add_argument(
        "--batch-files",
        type=int,
        metavar="N",
        help="small files per upload request where the platform allows it (MOI: up to 20, the default); "
        "1 = no batching",
    )
    g.add_argument("--batch-bytes", type=_size, metavar="SIZE", help="bytes per batched request (default 32MiB)")
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
        "--read-chunk-size", dest="chunk_size", type=_size, metavar="SIZE", help="file read/stream chunk (default 1MiB)"
    )


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
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
    g.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")
    g.add_argument("-v", "--verbose", action="count", default=0, help="log retries and decisions (-vv: debug)")


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="send a folder's files to a platform",
        description="Send every file under SOURCE to the destination, resumably: files already done and "
        "unchanged are skipped without any network call; files caught mid-upload by a crash are re-sent "
        "with the platform's dedup option; changed files are sent again.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", nargs="?", type=Path, help="the folder to ingest (or source.path in --config)")
    p.add_argument("--config", type=Path, metavar="FILE.toml", help="settings file; flags override it")
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
    g.add_argument("--max-size", type=_size, metavar="SIZE", help="leave out files larger than SIZE (e.g. 200MiB)")
    _add_target_flags(p)
    _add_engine_flags(p)
    _add_output_flags(p)
    _add_scale_flags(p)


def _add_scale_flags(p: argparse.ArgumentParser) -> None:
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


def _add_retry(sub: Any) -> None:
    p = sub.add_parser(
        "retry-failed",
        help="re-send only the files a run recorded as failed",
        description="Re-send the files the manifest records as failed, with the source and destination of "
        "the run that wrote it. Secrets are never stored: provide them again, from the environment ("
        + ", ".join(env for spec in target_specs() for env in spec.secret_env.values())
        + ") or a flag.",
    )
    p.add_argument("--manifest", type=Path, required=True, metavar="PATH", help="the manifest of the earlier run")
    p.set_defaults(job=None)
    secrets = p.add_argument_group("secrets (never stored in the manifest: give them again)")
    _add_options(
        secrets,
        [(spec.name, opt) for spec in target_specs() for opt in spec.cli_options if opt.field in spec.secret_env],
    )
    _add_engine_flags(p)
    g = p.add_argument_group("output")
    g.add_argument("--report", type=Path, metavar="FILE.json", help="write one JSON record per file at the end")
    g.add_argument("-q", "--quiet", action="store_true", default=None, help="print only errors")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars")
    g.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")
    g.add_argument("-v", "--verbose", action="count", default=0, help="log retries and decisions")


def _add_status(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show what a manifest records",
        description="Counts of files per state, the source and destination, and the last runs.",
    )
    p.add_argument("--manifest", required=True, metavar="PATH|URL", help="a SQLite file or postgresql://…?job=NAME")
    p.add_argument("--job", metavar="NAME", help="the job's name in a postgresql:// manifest")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--failed", action="store_true", help="list every failed file with its error")


def _add_serve(sub: Any, with_emulators: bool) -> None:
    p = sub.add_parser(
        "serve",
        help="run a local emulator of a platform's API",
        description="Serve a faithful local emulator of a platform's API, for tests, benchmarks and trying "
        "ingest without an account. Stop it with Ctrl-C.",
    )
    platforms = p.add_subparsers(dest="platform", metavar="PLATFORM", parser_class=_Parser)
    platforms.required = True
    if not with_emulators:
        return
    from ingest.emulators import emulator_specs

    for name, spec in emulator_specs().items():
        sp = platforms.add_parser(name, help=spec.help, description=spec.help)
        sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        sp.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
        spec.add_arguments(sp)


# ----- building the config ---------------------------------------------------------------------------


def _set(tree: dict[str, Any], section: str | None, key: str, value: Any) -> None:
    if value is None:
        return
    node = tree if section is None else tree.setdefault(section, {})
    node[key] = value


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults < --config file < environment secrets < flags."""
    tree: dict[str, Any] = load_toml(args.config) if args.config else {}
    origin = f"config file {args.config}" if args.config else "settings"
    if args.source is not None:
        _set(tree, "source", "path", str(args.source))
    for key in ("include", "exclude"):
        values = getattr(args, key)
        if values:
            tree.setdefault("source", {})[key] = [*tree.get("source", {}).get(key, []), *values]
    for key in ("hidden", "follow_symlinks", "max_size"):
        _set(tree, "source", key, getattr(args, key))
    _engine_flags(tree, args)
    _target_flags(tree, args)
    for key in ("manifest", "report"):
        value = getattr(args, key)
        _set(tree, None, key, str(value) if value is not None else None)
    for key in ("job", "shared", "lease"):
        _set(tree, None, key, getattr(args, key, None))
    _set(tree, None, "quiet", args.quiet)
    _set(tree, None, "progress", args.progress)
    if "source" not in tree or "path" not in tree["source"]:
        raise ConfigError("no source folder: pass it as `ingest run DIR` or set source.path in --config")
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, origin)) from None


def _engine_flags(tree: dict[str, Any], args: argparse.Namespace) -> None:
    for key in (
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
    ):
        _set(tree, "engine", key, getattr(args, key, None))


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


# ----- commands --------------------------------------------------------------------------------------


def _print_summary(summary: RunSummary, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(summary.to_json(), ensure_ascii=False, indent=2))
        return
    if args.quiet:
        for path, reason in summary.failures:
            print(f"failed: {path}: {reason}", file=sys.stderr)
        return
    for line in summary.lines():
        print(line)


def _cmd_run(args: argparse.Namespace) -> int:
    from ingest.engine.run import run

    config = config_from_args(args)
    fan_out = (args.processes or 1) > 1 or args.ray is not None
    if config.target is None and not config.quiet and not args.json and not fan_out:
        print("no --target given: sending to the embedded local MOI emulator (files under ./.ingest/local)")
    if fan_out:
        from ingest.cli import fanout

        argv = sys.argv[1:] if args.argv is None else args.argv
        manifest = str(config.manifest) if config.manifest is not None else None
        if args.ray is not None:
            summary = fanout.run_on_ray(argv, args.workers or 2, args.ray or None, manifest=manifest)
        else:
            show = not config.quiet and not args.json
            summary = fanout.run_processes(argv, args.processes, manifest=manifest, job=config.job, show=show)
        _print_summary(summary, args)
        return summary.exit_code
    summary = anyio.run(lambda: run(config, handle_signals=True))
    _print_summary(summary, args)
    return summary.exit_code


def _cmd_retry(args: argparse.Namespace) -> int:
    from ingest.engine.run import retry_failed, saved_config

    config = saved_config(args.manifest, _saved_secrets(args))
    overrides: dict[str, Any] = {}
    _engine_flags(overrides, args)
    updates: dict[str, Any] = {"report": args.report, "quiet": args.quiet, "progress": args.progress}
    try:
        engine = config.engine.model_validate({**config.engine.model_dump(), **overrides.get("engine", {})})
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "flags")) from None
    config = config.model_copy(update={"engine": engine, **{k: v for k, v in updates.items() if v is not None}})
    summary = anyio.run(lambda: retry_failed(config, handle_signals=True))
    _print_summary(summary, args)
    return summary.exit_code


def _saved_secrets(args: argparse.Namespace) -> dict[str, dict[str, str | None]]:
    """Secrets for whichever target the manifest names: each platform's flags, else its environment."""
    secrets: dict[str, dict[str, str | None]] = {}
    for spec in target_specs():
        secrets[spec.name] = {
            key: getattr(args, "target_" + key, None) or os.environ.get(env) for key, env in spec.secret_env.items()
        }
    return secrets


def _cmd_status(args: argparse.Namespace) -> int:
    location = parse_location(args.manifest, args.job)
    if isinstance(location, Path) and not location.exists():
        raise ConfigError(f"manifest {args.manifest} does not exist")
    manifest = open_manifest(location, args.job)
    try:
        job = job_status(manifest)
        counts = manifest.counts()
        runs = manifest.runs()
        info: dict[str, Any] = {
            "manifest": str(location),
            "source": manifest.get_meta("source"),
            "destination": manifest.get_meta("target"),
            "files": counts,
            "total": sum(counts.values()),
            "last_run": runs[-1] if runs else None,
            "runs": len(runs),
        }
        failed = (
            [{"path": r.path, "error": r.last_error} for r in manifest.iter_files(states=(FileState.FAILED,))]
            if args.failed
            else None
        )
    finally:
        manifest.close()
    info.update(job)
    if args.json:
        if failed is not None:
            info["failed_files"] = failed
        print(json.dumps(info, ensure_ascii=False, indent=2))
    else:
        print(f"manifest:    {info['manifest']}")
        print(f"source:      {info['source']}")
        print(f"destination: {info['destination']}")
        for state in FileState:
            print(f"  {state.value:<11} {counts[state.value]:>10}")
        print(f"  {'total':<11} {info['total']:>10}")
        last = info["last_run"]
        if last:
            print(f"last run:    #{last['id']} {last['command']} {last['status']}")
        for line in job_lines(job):
            print(line)
        for entry in failed or []:
            print(f"failed: {entry['path']}: {entry['error']}")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from ingest.emulators import emulator_specs
    from ingest.emulators.kit.server import serve_forever

    spec = emulator_specs()[args.platform]
    app = spec.build_app(args)

    def ready(url: str) -> None:
        print(f"{spec.name} emulator listening on {url} (Ctrl-C to stop)", flush=True)

    async def serve_until_signalled() -> None:
        # SIGINT and SIGTERM both stop the server cleanly (its state store is closed on the way out),
        # also when a non-interactive shell started it in the background with SIGINT ignored.
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve_forever(app, args.host, args.port, on_ready=ready))
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

    try:
        anyio.run(serve_until_signalled)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return EXIT_OK


COMMANDS = {"run": _cmd_run, "retry-failed": _cmd_retry, "status": _cmd_status, "serve": _cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(with_emulators="serve" in argv).parse_args(argv)
    verbose = getattr(args, "verbose", 0)
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    args.argv = argv
    handler = getattr(args, "handler", None) or COMMANDS[args.command]
    try:
        return int(handler(args))
    except InterruptedRun as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("ingest: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except IngestError as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        if verbose:
            raise
        print(
            f"ingest: unexpected error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(rerun with -v for details, and please report it)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
