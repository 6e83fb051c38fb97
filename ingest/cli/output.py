"""Everything the command line writes to the user: run summaries, JSON, tables, one-line messages.

Every command, the platforms' own included, prints through these functions, so that ``--json`` means
the same everywhere (indented, UTF-8, secrets masked), tables look alike, and errors are one line on
stderr starting ``ingest:``. Secrets are masked on the way out: every ``SecretStr``, and the values of
the dictionary keys a caller names as secret.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from ingest.report import RunSummary

__all__ = [
    "error",
    "mask",
    "ok",
    "plain",
    "print_json",
    "print_listing",
    "print_status",
    "print_summary",
    "result",
    "say",
    "table",
]


def mask(value: str) -> str:
    """A secret as it may be shown: never in full, the last two characters only when it is long."""
    return "****" + value[-2:] if len(value) >= 12 else "****"


def plain(value: Any, secret_keys: Collection[str] = ()) -> Any:
    """JSON-ready data with every secret masked: ``SecretStr`` values and string values of ``secret_keys``."""
    if isinstance(value, SecretStr):
        return mask(value.get_secret_value())
    if isinstance(value, BaseModel):
        data = {name: getattr(value, name, None) for name in type(value).model_fields}
        data.update(value.model_extra or {})
        return {k: plain(v, secret_keys) for k, v in data.items()}
    if isinstance(value, dict):
        return {
            k: mask(v) if k in secret_keys and isinstance(v, str) else plain(v, secret_keys) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [plain(v, secret_keys) for v in value]
    return value


def print_json(value: Any, *, secret_keys: Collection[str] = ()) -> None:
    """``value`` as indented JSON on stdout, secrets masked (models, enums and dates included)."""
    print(json.dumps(plain(value, secret_keys), ensure_ascii=False, indent=2, default=str), flush=True)


def say(message: str) -> None:
    """One line for people on stdout."""
    print(message, flush=True)


def error(message: str) -> None:
    """One line on stderr, ``ingest: …``: the only shape errors take."""
    print(f"ingest: {message}", file=sys.stderr, flush=True)


def result(value: Any, message: str, *, as_json: bool, secret_keys: Collection[str] = ()) -> None:
    """What an action produced: ``message`` for people, or ``value`` as JSON with ``--json``."""
    if as_json:
        print_json(value, secret_keys=secret_keys)
    else:
        say(message)


def ok(as_json: bool, message: str, **data: Any) -> None:
    """A finished action: ``message`` for people, or ``{"ok": true, **data}`` with ``--json``."""
    result({"ok": True, **data}, message, as_json=as_json)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Columns padded to their widest cell, headers in capitals, no trailing blanks."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    sys.stdout.flush()


def print_listing(
    key: str,
    items: Sequence[Any],
    total: int | None,
    *,
    as_json: bool,
    headers: Sequence[str],
    row: Callable[[Any], Sequence[Any]],
    secret_keys: Collection[str] = (),
) -> None:
    """One page of a listing (``total`` is ``None`` when every page was fetched): ``{key: [...], "total": N}``
    with ``--json``, else a table and, when there is more, how to see it (the paging flags of
    ``ingest.cli.options.add_paging_flags``)."""
    if as_json:
        print_json({key: list(items), "total": total if total is not None else len(items)}, secret_keys=secret_keys)
        return
    table(headers, [row(item) for item in items])
    if total is not None and total > len(items):
        say(f"({len(items)} of {total}; see --page/--page-size or --all)")


def print_summary(summary: RunSummary, *, as_json: bool, quiet: bool | None) -> None:
    """The end of a run: JSON on stdout, only the failures on stderr (``--quiet``), or the summary lines."""
    if as_json:
        print_json(summary.to_json())
        return
    if quiet:
        for path, reason in summary.failures:
            print(f"failed: {path}: {reason}", file=sys.stderr)
        return
    for line in summary.lines():
        print(line)
    sys.stdout.flush()


def print_status(info: dict[str, Any], *, as_json: bool, extra: Sequence[str] = ()) -> None:
    """What a manifest records (``ingest status``): counts per state, source, destination, the last run and,
    when asked for, the failed files."""
    if as_json:
        print_json(info)
        return
    say(f"manifest:    {info['manifest']}")
    say(f"source:      {info['source']}")
    say(f"destination: {info['destination']}")
    for state, count in info["files"].items():
        say(f"  {state:<11} {count:>10}")
    say(f"  {'total':<11} {info['total']:>10}")
    last = info["last_run"]
    if last:
        say(f"last run:    #{last['id']} {last['command']} {last['status']}")
    for line in extra:
        say(line)
    for entry in info.get("failed_files") or []:
        say(f"failed: {entry['path']}: {entry['error']}")
