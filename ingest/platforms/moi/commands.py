"""``ingest moi connectors …``, ``ingest moi tasks …`` and ``ingest migrate``: MOI's connectors and load tasks
from the command line, added by the MOI ``TargetSpec.add_commands``.

Every command prints through ``ingest.cli.output``: a table for people, or JSON with ``--json`` for
scripts. The API key comes from ``MOI_KEY`` (or ``--api-key``); connector secrets
(``access_key_secret``, ``password``, DIFY ``api_key``) come from ``MOI_CONNECTOR_SECRET`` or a
``--config`` TOML file, never from the command line, and are masked whenever they are printed.
Handlers raise ``IngestError``s; ``ingest.cli.main`` turns them into exit codes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import SecretStr, ValidationError

from ingest.cli import output
from ingest.cli.exits import EXIT_FAILED, EXIT_OK
from ingest.cli.options import add_command, add_json_flag, add_paging_flags, add_subcommands, number_or_name
from ingest.cli.options import positive_int as _positive
from ingest.config import load_toml, validation_message
from ingest.errors import ConfigError
from ingest.platforms.moi.filetypes import FileType
from ingest.platforms.moi.wire import (
    BLOCK_FOR,
    CONFIG_MODELS,
    SECRET_FIELDS,
    Connector,
    ConnectorCreate,
    ConnectorQuery,
    ConnectorUpdate,
    FileStatus,
    IntervalType,
    SourceType,
    Task,
    TaskCreate,
    TaskQuery,
    TaskStatus,
    TaskUpdate,
)

if TYPE_CHECKING:  # the client (and aiohttp) is imported when a command runs, not when the CLI is built
    from ingest.platforms.moi.client import MoiClient

__all__ = ["add_moi_commands"]

SECRET_ENV = "MOI_CONNECTOR_SECRET"
ENDPOINT_ENV = "MOI_ENDPOINT"
SCHEDULE_CHOICES = ("once", "day", "hour", "minute")
EPILOG = """\
examples:
  export MOI_ENDPOINT=https://moi.example.com MOI_KEY=…
  MOI_CONNECTOR_SECRET=… ingest moi connectors create --name docs --type s3 --set bucket_name=docs …
  ingest moi connectors list --all --json
  ingest moi connectors files 7 --file-types pdf,docx     the uris a load task can name
  ingest moi tasks create --connector 7 --volume-id 1001 --uris-file uris.txt --schedule day
  ingest moi tasks files TASK --status failed   then: ingest moi tasks retry TASK
"""
_SCHEDULE = {
    "once": IntervalType.ONCE,
    "day": IntervalType.DAY,
    "hour": IntervalType.HOUR,
    "minute": IntervalType.MINUTE,
}


# ----- argument types ------------------------------------------------------------------------------------


def _source_type(text: str) -> SourceType:
    key = text.strip().upper()
    if key.isdigit() and int(key) in {t.value for t in SourceType}:
        return SourceType(int(key))
    if key in SourceType.__members__:
        return SourceType[key]
    raise argparse.ArgumentTypeError(f"source type must be s3, oss, dify, hdfs, mo or 1-5, got {text!r}")


def _file_types(text: str) -> list[int]:
    found = []
    for part in text.split(","):
        key = part.strip().upper().lstrip(".")
        if not key:
            continue
        if key.isdigit() and int(key) in {t.value for t in FileType}:
            found.append(int(key))
        elif key in FileType.__members__:
            found.append(int(FileType[key]))
        else:
            names = ", ".join(t.name.lower() for t in FileType)
            raise argparse.ArgumentTypeError(f"unknown file type {part!r}; use a number 0-23 or one of: {names}")
    return found


_file_status = number_or_name(FileStatus, "file status")
_task_status = number_or_name(TaskStatus, "task status")


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


# ----- shared flags --------------------------------------------------------------------------------------


def _connection_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("MOI connection")
    g.add_argument("--endpoint", metavar="URL", help=f"the MOI API base URL (default: ${ENDPOINT_ENV})")
    g.add_argument(
        "--api-key", metavar="KEY", help="API key (prefer the MOI_KEY environment variable: others can see flags)"
    )
    g.add_argument("--workspace-id", metavar="ID", help="MOI 5.0: workspace id, sent as X-Workspace-ID")
    g.add_argument(
        "--auth-header",
        choices=("moi-key", "x-api-key"),
        default="moi-key",
        help="how the key is sent (default moi-key)",
    )
    add_json_flag(g, "print JSON for scripts instead of a table")
    return p


def _config_flags(p: argparse.ArgumentParser, *, type_required: bool) -> None:
    g = p.add_argument_group("connector settings")
    g.add_argument(
        "--type",
        dest="source_type",
        type=_source_type,
        required=type_required,
        metavar="TYPE",
        help="s3, oss, dify, hdfs or mo (or 1-5)",
    )
    g.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help="the connection settings: keys of the type's block at the top level or under [s3], [oss], …",
    )
    g.add_argument(
        "--set",
        dest="settings",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"one non-secret setting, e.g. --set bucket_name=docs --set path_style=true (secrets: ${SECRET_ENV})",
    )


def _client(args: argparse.Namespace) -> MoiClient:
    endpoint = args.endpoint or os.environ.get(ENDPOINT_ENV)
    if not endpoint:
        raise ConfigError(f"no MOI endpoint: pass --endpoint URL or set {ENDPOINT_ENV}")
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"--endpoint {endpoint!r} is not an http(s) URL; write e.g. http://127.0.0.1:8080")
    key = args.api_key or os.environ.get("MOI_KEY")
    if not key:
        raise ConfigError("no MOI API key: set MOI_KEY (or pass --api-key)")
    from ingest.platforms.moi.client import MoiClient

    return MoiClient(endpoint, SecretStr(key), auth_header=args.auth_header, workspace_id=args.workspace_id)


def _run(args: argparse.Namespace, action: Callable[[MoiClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with _client(args) as client:
            return await action(client)

    return anyio.run(main)


# ----- connector settings from file, flags and environment -------------------------------------------------


def _connector_config(args: argparse.Namespace, kind: SourceType, base: dict[str, Any] | None = None) -> Any:
    """The type's config model from ``base`` (current settings) < --config file < --set < the secret env."""
    block = BLOCK_FOR[kind]
    model = CONFIG_MODELS[kind]
    values: dict[str, Any] = {
        k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in (base or {}).items()
    }
    origin = "connector settings"
    if args.config is not None:
        data = load_toml(args.config)
        values.update(data.get(block, data) if isinstance(data.get(block), dict) else data)
        origin = f"config file {args.config}"
    for key, value in args.settings:
        if key in SECRET_FIELDS:
            raise ConfigError(
                f"--set {key}=… would show a secret to everyone who can list processes; "
                f"put it in ${SECRET_ENV} or in the --config file"
            )
        values[key] = value
    secret_field = next((name for name in model.model_fields if name in SECRET_FIELDS), None)
    if secret_field and os.environ.get(SECRET_ENV):
        values[secret_field] = os.environ[SECRET_ENV]
    unknown = sorted(set(values) - set(model.model_fields))
    if unknown:
        allowed = ", ".join(model.model_fields)
        raise ConfigError(f"{origin}: {unknown[0]!r} is not a {kind.name} setting; allowed: {allowed}")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        message = validation_message(exc, origin)
        if secret_field and secret_field in message and "required" in message:
            message += f" (set {SECRET_ENV} or put it in --config)"
        raise ConfigError(message) from None


# ----- output --------------------------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    output.print_json(value, secret_keys=SECRET_FIELDS)


def _config_text(connector: Connector) -> str:
    shown = output.plain(connector.config, SECRET_FIELDS)
    return " ".join(f"{k}={v}" for k, v in shown.items())


def _schedule_name(kind: int) -> str:
    try:
        return IntervalType(kind).name.lower()
    except ValueError:
        return str(kind)


def _status_name(code: int) -> str:
    try:
        return FileStatus(code).name.lower()
    except ValueError:
        return str(code)


def _paging(args: argparse.Namespace) -> dict[str, Any]:
    """The paging and sorting flags (``add_paging_flags(sorting=True)``) as fields of MOI's list queries."""
    return {
        "order_by": args.order_by,
        "is_desc": True if args.desc else None,
        "page": args.page,
        "page_size": args.page_size,
    }


def _list(
    args: argparse.Namespace,
    key: str,
    every: Callable[[MoiClient], AsyncIterator[Any]],
    page: Callable[[MoiClient], Awaitable[Any]],
    headers: tuple[str, ...],
    row: Callable[[Any], tuple[Any, ...]],
) -> int:
    """A listing command: one page (``page(client).<key>`` and its total) or, with ``--all``, ``every``."""

    async def action(client: MoiClient) -> tuple[list[Any], int | None]:
        if args.all:
            return [item async for item in every(client)], None
        found = await page(client)
        return list(getattr(found, key)), found.total

    items, total = _run(args, action)
    output.print_listing(key, items, total, as_json=args.json, headers=headers, row=row, secret_keys=SECRET_FIELDS)
    return EXIT_OK


# ----- connectors ----------------------------------------------------------------------------------------


def _cmd_connector_create(args: argparse.Namespace) -> int:
    kind: SourceType = args.source_type
    spec = ConnectorCreate(
        name=args.name, source_type=kind, config=_connector_config(args, kind), usage_type=args.usage_type or None
    )
    connector: Connector = _run(args, lambda c: c.create_connector(spec))
    message = f"created {connector.type_name} connector {connector.id} ({connector.name})"
    output.result(connector, message, as_json=args.json, secret_keys=SECRET_FIELDS)
    return EXIT_OK


def _cmd_connector_validate(args: argparse.Namespace) -> int:
    async def action(client: MoiClient) -> Any:
        if args.connector is not None:
            kind = args.source_type
            if kind is None:
                kind = SourceType((await client.get_connector(args.connector)).source_type)
            config = _connector_config(args, kind) if args.config or args.settings else None
            return await client.validate_connector(kind, config, connector_id=args.connector)
        if args.source_type is None:
            raise ConfigError("give --connector ID, or --type with the settings to validate")
        return await client.validate_connector(args.source_type, _connector_config(args, args.source_type))

    result = _run(args, action)
    message = "valid" if result.valid else f"not valid: {result.reason or 'no reason given'}"
    output.result(result, message, as_json=args.json, secret_keys=SECRET_FIELDS)
    return EXIT_OK if result.valid else EXIT_FAILED  # a connector that cannot connect is a failed check, not an error


def _cmd_connector_list(args: argparse.Namespace) -> int:
    query = ConnectorQuery(
        keyword=args.keyword,
        source_type_list=[int(t) for t in args.source_types] or None,
        status_list=args.statuses or None,
        usage_type=args.usage_type or None,
        **_paging(args),
    )
    return _list(
        args,
        "connectors",
        lambda c: c.iter_connectors(query),
        lambda c: c.list_connectors(query),
        ("id", "name", "type", "status", "tasks", "settings"),
        lambda c: (c.id, c.name, c.type_name, c.status, len(c.related_task_ids), _config_text(c)),
    )


def _cmd_connector_update(args: argparse.Namespace) -> int:
    async def action(client: MoiClient) -> None:
        config = None
        kind = None
        if args.config or args.settings:
            current = await client.get_connector(args.id)
            kind = SourceType(current.source_type)
            config = _connector_config(args, kind, base=current.config)  # a partial change keeps the rest
        update = ConnectorUpdate(name=args.name, source_type=kind, config=config, usage_type=args.usage_type or None)
        if update.to_wire() == {}:
            raise ConfigError("nothing to update: give --name, --set, --config or --usage-type")
        await client.update_connector(args.id, update)

    _run(args, action)
    output.ok(args.json, f"updated connector {args.id}", id=args.id)
    return EXIT_OK


def _cmd_connector_delete(args: argparse.Namespace) -> int:
    _run(args, lambda c: c.delete_connector(args.id))
    output.ok(args.json, f"deleted connector {args.id}", id=args.id)
    return EXIT_OK


def _cmd_connector_files(args: argparse.Namespace) -> int:
    types = [t for group in args.file_types for t in group]
    files = _run(args, lambda c: c.connector_files(args.id, types))
    if args.json:
        _print_json({"files": files})
        return EXIT_OK
    names = {int(t): t.name.lower() for t in FileType}
    output.table(("uri", "size", "type"), [(f.uri, f.size, names.get(f.type, f.type)) for f in files])
    output.say(f"({len(files)} file(s))")
    return EXIT_OK


def _cmd_connector_summary(args: argparse.Namespace) -> int:
    summary = _run(args, lambda c: c.connector_summary())
    if args.json:
        _print_json(summary)
        return EXIT_OK
    for key, value in output.plain(summary, SECRET_FIELDS).items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            output.say(f"{key}:")
            for entry in value:
                output.say("  " + ", ".join(f"{k}={v}" for k, v in entry.items()))
        else:
            output.say(f"{key}: {value}")
    return EXIT_OK


# ----- tasks ---------------------------------------------------------------------------------------------


def _uris(args: argparse.Namespace) -> list[str]:
    uris = list(args.uris or [])
    if args.uris_file is not None:
        try:
            text = Path(args.uris_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--uris-file {args.uris_file}: {exc.strerror or exc}") from None
        uris.extend(line.strip() for line in text.splitlines() if line.strip())
    return uris


def _cmd_task_create(args: argparse.Namespace) -> int:
    uris = _uris(args)
    if not uris:
        raise ConfigError("no uris: pass --uri (repeatable) or --uris-file (see `ingest moi connectors files`)")
    try:
        spec = TaskCreate(
            source_connector_id=args.connector,
            volume_id=args.volume_id,
            uris=uris,
            load_interval_type=_SCHEDULE[args.schedule],
            interval=args.interval,
        )
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "task")) from None
    task = _run(args, lambda c: c.create_task(spec))
    if task is None:
        output.ok(args.json, "MOI accepted the task; see `ingest moi tasks list`", id=None)
        return EXIT_OK
    message = f"created load task {task.id} ({len(task.uris)} uri(s), {_schedule_name(task.interval_type)})"
    output.result(task, message, as_json=args.json, secret_keys=SECRET_FIELDS)
    return EXIT_OK


def _cmd_task_list(args: argparse.Namespace) -> int:
    query = TaskQuery(
        status=args.status,
        load_interval_types=[int(_SCHEDULE[s]) for s in args.schedules] or None,
        **_paging(args),
    )
    return _list(
        args,
        "tasks",
        lambda c: c.iter_tasks(query),
        lambda c: c.list_tasks(query),
        ("id", "status", "schedule", "connector", "volume", "uris", "created_at"),
        lambda t: (
            t.id,
            t.status_name,
            _schedule_name(t.interval_type),
            t.source_connector_id or "-",
            t.volume_id,
            len(t.uris),
            t.created_at,
        ),
    )


def _cmd_task_get(args: argparse.Namespace) -> int:
    task: Task = _run(args, lambda c: c.get_task(args.id))
    if args.json:
        _print_json(task)
        return EXIT_OK
    for key, value in (
        ("id", task.id),
        ("status", task.status_name),
        ("schedule", _schedule_name(task.interval_type)),
        ("connector", task.source_connector_id or "-"),
        ("volume", f"{task.volume_id} ({task.volume_name})" if task.volume_name else task.volume_id),
        ("uris", len(task.uris)),
        ("created_at", task.created_at),
        ("start_at", task.start_at),
        ("end_at", task.end_at),
    ):
        output.say(f"{key + ':':<12}{value}")
    return EXIT_OK


def _cmd_task_files(args: argparse.Namespace) -> int:
    async def action(client: MoiClient) -> tuple[list[Any], int, int, int]:
        if args.all:
            first = await client.task_files(args.id, status=args.status, page=1, page_size=1)
            files = [f async for f in client.iter_task_files(args.id, status=args.status)]
            return files, first.total, first.total_success, first.total_failed
        page = await client.task_files(args.id, status=args.status, page=args.page or 1, page_size=args.page_size)
        return page.files, page.total, page.total_success, page.total_failed

    files, total, success, failed = _run(args, action)
    if args.json:
        _print_json({"total": total, "total_success": success, "total_failed": failed, "files": files})
        return EXIT_OK
    output.table(
        ("id", "status", "size", "name", "reason"),
        [(f.id, _status_name(f.status), f.size, f.name, f.reason) for f in files],
    )
    output.say(f"({len(files)} shown of {total}; {success} succeeded, {failed} failed)")
    return EXIT_OK


def _cmd_task_update(args: argparse.Namespace) -> int:
    uris = _uris(args) or None
    if uris is None and args.schedule is None:
        raise ConfigError("nothing to update: give --uri/--uris-file and/or --schedule")
    update = TaskUpdate(
        task_id=args.id,
        uris=uris,
        load_interval_type=_SCHEDULE[args.schedule] if args.schedule else None,
        interval=args.interval,
    )
    _run(args, lambda c: c.update_task(update))
    output.ok(args.json, f"updated task {args.id}", id=args.id)
    return EXIT_OK


def _cmd_task_action(verb: str, method: str) -> Callable[[argparse.Namespace], int]:
    """``method``: the name of the ``MoiClient`` call taking the task id (the client is imported only when a
    command runs)."""

    def handler(args: argparse.Namespace) -> int:
        _run(args, lambda c: getattr(c, method)(args.id))
        output.ok(args.json, f"{verb} task {args.id}", id=args.id)
        return EXIT_OK

    return handler


def _cmd_task_retry(args: argparse.Namespace) -> int:
    async def action(client: MoiClient) -> list[str]:
        ids = list(args.file_ids or [])
        if not ids:
            failed = int(FileStatus.FAILED) if args.failed_status is None else args.failed_status
            ids = [f.id async for f in client.iter_task_files(args.id, status=failed)]
        if ids:
            await client.retry_task(args.id, ids)
        return ids

    ids = _run(args, action)
    message = f"retrying {len(ids)} file(s) of task {args.id}" if ids else f"task {args.id} has no failed files"
    output.ok(args.json, message, id=args.id, retried=ids)
    return EXIT_OK


# ----- ingest migrate ------------------------------------------------------------------------------------


def _cmd_migrate(args: argparse.Namespace) -> int:
    from ingest.platforms.moi.loadtasks import MigrateConfig, migrate

    endpoint = args.endpoint or os.environ.get(ENDPOINT_ENV)
    if not endpoint:
        raise ConfigError(f"no MOI endpoint: pass --endpoint URL or set {ENDPOINT_ENV}")
    key = args.api_key or os.environ.get("MOI_KEY")
    if not key:
        raise ConfigError("no MOI API key: set MOI_KEY (or pass --api-key)")
    settings: dict[str, Any] = {
        "endpoint": endpoint,
        "api_key": key,
        "connector_id": args.connector,
        "volume_id": args.volume_id,
        "manifest": args.manifest,
        "report": args.report,
        "file_types": tuple(t for group in args.file_types for t in group),
        "uris_per_task": args.uris_per_task,
        "schedule": args.schedule,
        "interval": args.interval,
        "max_attempts": args.max_attempts,
        "task_timeout": args.task_timeout,
        "max_tasks": args.max_tasks,
        "request_retries": args.request_retries,
        "file_status_table": args.file_status_table,
        "auth_header": args.auth_header,
        "workspace_id": args.workspace_id,
        "quiet": args.quiet,
        "progress": args.progress,
    }
    config = MigrateConfig.build(**{k: v for k, v in settings.items() if v is not None})
    summary = anyio.run(lambda: migrate(config, handle_signals=True))
    if args.json:
        print(json.dumps(summary.to_json(), ensure_ascii=False, indent=2))
    elif args.quiet:
        for path, reason in summary.failures:
            print(f"failed: {path}: {reason}", file=sys.stderr)
    else:
        for line in summary.lines():
            print(line)
    return summary.exit_code


# ----- wiring --------------------------------------------------------------------------------------------


def _add_connectors(moi: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(
        moi,
        "connectors",
        help="data connectors: S3/OSS buckets, HDFS, MO, DIFY",
        description="Manage MOI data connectors (the sources load tasks copy files from).",
        epilog=EPILOG,
    )
    sub = add_subcommands(p, "connectors_command", "ACTION")

    c = sub.add_parser(
        "create",
        parents=[common],
        help="create a connector",
        description="Create a connector. "
        f"Secrets come from ${SECRET_ENV} or --config, e.g. MOI_CONNECTOR_SECRET=… ingest moi "
        "connectors create --name docs --type s3 --set endpoint=https://s3.example.com "
        "--set access_key_id=AK… --set bucket_name=docs --set region=us-east-1 --set path_style=true",
    )
    c.add_argument("--name", required=True, help="connector name (unique)")
    _config_flags(c, type_required=True)
    c.add_argument("--usage-type", action="append", type=int, metavar="N", help="usage type (repeatable)")
    c.set_defaults(handler=_cmd_connector_create)

    v = sub.add_parser(
        "validate",
        parents=[common],
        help="check that MOI can reach a source",
        description="Ask MOI to connect to a source: a stored connector (--connector) or settings "
        "(--type with --config/--set). Exit 0 when valid, 1 when not (the reason is printed).",
    )
    v.add_argument("--connector", type=int, metavar="ID", help="a stored connector")
    _config_flags(v, type_required=False)
    v.set_defaults(handler=_cmd_connector_validate)

    ls = sub.add_parser("list", parents=[common], help="list connectors", description="List connectors.")
    ls.add_argument("--keyword", help="only names containing this")
    ls.add_argument(
        "--type",
        dest="source_types",
        type=_source_type,
        action="append",
        default=[],
        metavar="TYPE",
        help="only this source type (repeatable)",
    )
    ls.add_argument("--status", dest="statuses", action="append", default=[], help="only this status (repeatable)")
    ls.add_argument("--usage-type", action="append", metavar="N", help="only this usage type (repeatable)")
    add_paging_flags(ls, default_size="MOI's, 10", sorting=True)
    ls.set_defaults(handler=_cmd_connector_list)

    u = sub.add_parser(
        "update",
        parents=[common],
        help="change a connector",
        description="Change a connector's name, settings (--set/--config: only the given settings "
        "change) or usage types.",
    )
    u.add_argument("id", type=int, help="connector id")
    u.add_argument("--name", help="new name")
    _config_flags(u, type_required=False)
    u.add_argument("--usage-type", action="append", type=int, metavar="N", help="usage types (repeatable)")
    u.set_defaults(handler=_cmd_connector_update)

    d = sub.add_parser("delete", parents=[common], help="delete a connector", description="Delete a connector.")
    d.add_argument("id", type=int, help="connector id")
    d.set_defaults(handler=_cmd_connector_delete)

    f = sub.add_parser(
        "files",
        parents=[common],
        help="list a connector's source files",
        description="List the files in a connector's source, as load tasks name them (uri).",
    )
    f.add_argument("id", type=int, help="connector id")
    f.add_argument(
        "--file-types",
        type=_file_types,
        action="append",
        default=[],
        metavar="TYPES",
        help="only these types: numbers or names, comma-separated (pdf,markdown or 2,6)",
    )
    f.set_defaults(handler=_cmd_connector_files)

    s = sub.add_parser("summary", parents=[common], help="connector counts", description="Connector counts.")
    s.set_defaults(handler=_cmd_connector_summary)


def _add_tasks(moi: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(
        moi,
        "tasks",
        help="load tasks: connector files into volumes",
        description="Manage MOI load tasks (and the tasks of local uploads).",
        epilog=EPILOG,
    )
    sub = add_subcommands(p, "tasks_command", "ACTION")

    def uri_flags(q: argparse.ArgumentParser) -> None:
        q.add_argument("--uri", dest="uris", action="append", metavar="URI", help="a source file uri (repeatable)")
        q.add_argument("--uris-file", type=Path, metavar="FILE", help="a file with one uri per line")
        q.add_argument("--schedule", choices=SCHEDULE_CHOICES, help="load once, or every day/hour/minute")
        q.add_argument("--interval", type=int, metavar="N", help="units of --schedule between runs (default 1)")

    c = sub.add_parser(
        "create",
        parents=[common],
        help="create a load task",
        description="Load files of a connector into a volume, once or on a schedule.",
    )
    c.add_argument("--connector", type=int, required=True, metavar="ID", help="source connector id")
    c.add_argument("--volume-id", required=True, metavar="ID", help="destination volume id")
    uri_flags(c)
    c.set_defaults(handler=_cmd_task_create, schedule="once")

    ls = sub.add_parser("list", parents=[common], help="list tasks", description="List tasks.")
    ls.add_argument("--status", type=_task_status, help="only this status (running, pausing, paused, finished or 0-4)")
    ls.add_argument(
        "--schedule",
        dest="schedules",
        action="append",
        choices=SCHEDULE_CHOICES,
        default=[],
        help="only tasks with this schedule (repeatable)",
    )
    add_paging_flags(ls, default_size="MOI's, 10", sorting=True)
    ls.set_defaults(handler=_cmd_task_list)

    g = sub.add_parser("get", parents=[common], help="show a task", description="Show a task.")
    g.add_argument("id", help="task id")
    g.set_defaults(handler=_cmd_task_get)

    f = sub.add_parser(
        "files",
        parents=[common],
        help="a task's files and their status",
        description="List a task's files with their load status and failure reason.",
    )
    f.add_argument("id", help="task id")
    f.add_argument(
        "--status",
        type=_file_status,
        help="only this status (waiting, uploading, paused, failed, success, retrying or a number)",
    )
    add_paging_flags(f, page_size=100)
    f.set_defaults(handler=_cmd_task_files)

    u = sub.add_parser(
        "update",
        parents=[common],
        help="change a task's uris or schedule",
        description="Replace a task's uris and/or change its schedule.",
    )
    u.add_argument("id", help="task id")
    uri_flags(u)
    u.set_defaults(handler=_cmd_task_update)

    for verb, past, call in (
        ("pause", "paused", "pause_task"),
        ("resume", "resumed", "resume_task"),
        ("delete", "deleted", "delete_task"),
    ):
        a = sub.add_parser(verb, parents=[common], help=f"{verb} a task", description=f"{verb.capitalize()} a task.")
        a.add_argument("id", help="task id")
        a.set_defaults(handler=_cmd_task_action(past, call))

    r = sub.add_parser(
        "retry",
        parents=[common],
        help="re-run a task's failed files",
        description="Re-run failed files of a task: the given --file-id ones, or every failed one.",
    )
    r.add_argument("id", help="task id")
    r.add_argument("--file-id", dest="file_ids", action="append", metavar="ID", help="a failed file id (repeatable)")
    r.add_argument("--failed-status", type=int, metavar="N", help="the failed status code (default 4; MOI 5.0: 3)")
    r.set_defaults(handler=_cmd_task_retry)


def _add_migrate(commands: Any, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "migrate",
        parents=[common],
        help="load a connector's whole source (a bucket) into a MOI volume, resumably",
        description="Load every file of a connector's source into a volume through MOI load tasks: list the "
        "files, create tasks for chunks of uris, follow them to the end, retry failed files, and record each "
        "file in the manifest, so that running the same command again after an interruption resumes without "
        "creating a task twice for any file. With --schedule the tasks keep loading on MOI periodically.",
        epilog="example: MOI_KEY=… ingest migrate --endpoint https://moi.example.com --connector 100004 "
        "--volume-id 1889578498228068352 --file-types pdf,docx --manifest bucket.db\n"
        "exit codes: 0 all files loaded, 1 some failed, 2 usage/config error, 130 interrupted (rerun resumes)",
    )
    p.add_argument("--connector", type=int, required=True, metavar="ID", help="the source connector id")
    p.add_argument("--volume-id", required=True, metavar="ID", help="the destination volume id")
    p.add_argument("--manifest", type=Path, required=True, metavar="PATH", help="the resumable record of the migration")
    p.add_argument("--report", type=Path, metavar="PATH", help="write one JSON record per file here at the end")
    p.add_argument(
        "--file-types",
        type=_file_types,
        action="append",
        default=[],
        metavar="TYPES",
        help="only these file types: numbers or names, comma-separated (pdf,docx or 2,11)",
    )
    p.add_argument("--uris-per-task", type=_positive, metavar="N", help="uris per load task (default 100)")
    p.add_argument("--schedule", choices=("day", "hour", "minute"), help="create periodic tasks instead of one-shot")
    p.add_argument("--interval", type=int, metavar="N", help="units of --schedule between runs (default 1)")
    p.add_argument("--max-attempts", type=_positive, metavar="N", help="loads per file, counting retries (default 3)")
    p.add_argument("--max-tasks", type=_positive, metavar="N", help="load tasks in flight at once (default 16)")
    p.add_argument("--task-timeout", type=float, metavar="SECONDS", help="how long a task may run (default 3600)")
    p.add_argument("--request-retries", type=int, metavar="N", help="repeats of a failed request (default 8)")
    p.add_argument("--file-status-table", choices=("seed", "v5"), help="status codes of /task/files (default seed)")
    p.add_argument("-q", "--quiet", action="store_true", default=None, help="print only errors")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log retries and decisions")
    p.set_defaults(handler=_cmd_migrate)


def add_moi_commands(commands: Any) -> None:
    """Add ``moi`` (connectors, tasks) and ``migrate`` to the CLI's subcommands."""
    common = _connection_flags()
    moi = add_command(
        commands,
        "moi",
        help="MOI connectors and load tasks",
        description="MOI data connectors and load tasks. Connection: --endpoint (or $MOI_ENDPOINT) and $MOI_KEY.",
        epilog=EPILOG,
    )
    sub = add_subcommands(moi, "moi_command", "GROUP")
    _add_connectors(sub, common)
    _add_tasks(sub, common)
    _add_migrate(commands, common)
