"""Logs for unattended runs: ``--log-file PATH`` and ``--log-format text|json``.

Events go through the ``ingest.events`` logger (``event(kind, **fields)``): ``run-start``, ``run-end``
(with the summary), ``file-failed``, ``delete``, ``schedule-wait``. The log file also receives the engine's
retries (``ingest.retry``, kind ``retry``) and every warning. With ``json`` each line is one JSON object:
``{"time", "level", "event", "message", ...fields}``, so a scheduler's logs are searchable.

Secrets never appear: the settings logged are ``public_dump`` (no secret fields), and every line is
scrubbed of the secret values the run was given (``configure(secrets=...)``) as a second guard.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from ingest.errors import ConfigError

__all__ = ["configure", "event", "secrets_of"]

_events = logging.getLogger("ingest.events")


def event(kind: str, message: str | None = None, /, **fields: Any) -> None:
    """One event for the log file (a no-op when no log file is configured)."""
    if _events.isEnabledFor(logging.INFO):
        _events.info(message or kind, extra={"event": kind, "fields": fields})


class _Scrub(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 3]

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class _Formatter(logging.Formatter):
    def __init__(self, fmt: Literal["text", "json"], scrub: _Scrub) -> None:
        super().__init__()
        self.fmt = fmt
        self.scrubber = scrub

    def format(self, record: logging.LogRecord) -> str:
        kind = getattr(record, "event", None) or ("retry" if record.name == "ingest.retry" else "log")
        fields: dict[str, Any] = dict(getattr(record, "fields", {}) or {})
        message = record.getMessage()
        if self.fmt == "json":
            data = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(),
                "event": kind,
                "message": message,
                **fields,
            }
            return self.scrubber.scrub(json.dumps(data, ensure_ascii=False, default=str))
        extra = " ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in fields.items())
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return self.scrubber.scrub(f"{stamp} {record.levelname} {kind}: {message}" + (f" {extra}" if extra else ""))


class _Wanted(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return hasattr(record, "event") or record.name == "ingest.retry" or record.levelno >= logging.WARNING


def configure(path: Path | None, fmt: Literal["text", "json"] = "text", *, secrets: Iterable[str] = ()) -> None:
    """Send events (and retries, warnings) to ``path``, appended. Console output is unchanged."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write log file {path}: {exc.strerror or exc}") from None
    root = logging.getLogger()
    for h in root.handlers:  # keep the console at the level it had before the ingest logger opens up
        if h.level == logging.NOTSET:
            h.setLevel(root.getEffectiveLevel())
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_Wanted())
    handler.setFormatter(_Formatter(fmt, _Scrub(secrets)))
    base = logging.getLogger("ingest")
    base.addHandler(handler)
    base.setLevel(min(base.getEffectiveLevel(), logging.DEBUG))


def secrets_of(config: Any) -> list[str]:
    """The secret values in a target config (``SecretStr`` fields), for scrubbing."""
    from pydantic import SecretStr

    target = getattr(config, "target", None)
    if target is None:
        return []
    return [v.get_secret_value() for v in vars(target).values() if isinstance(v, SecretStr)]
