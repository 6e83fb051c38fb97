"""What a ``--manifest`` value names: a SQLite file, or a job in a PostgreSQL database.

``postgresql://user:password@host:5432/db?job=NAME`` (or ``postgres://``); every other query parameter
is passed to the driver (``sslmode``, ``connect_timeout``, …). The password never leaves this module
in text meant for people: ``redacted`` replaces it, and that is what logs, errors and reports show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ingest.errors import ConfigError

__all__ = ["JOB_NAME", "PostgresLocation", "parse_location", "scrub"]

#: Job names: short, printable, usable in a URL and a log line without quoting.
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True, slots=True)
class PostgresLocation:
    #: The URL given to the driver (with the password, without ``job``): never print it.
    conninfo: str
    #: The URL with the password replaced: for people.
    redacted: str
    password: str | None
    job: str | None

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"PostgresLocation({self.redacted!r})"


def parse_location(value: str | Path, job: str | None = None) -> Path | PostgresLocation:
    """A path for SQLite, or the PostgreSQL location; ``job`` (``--job``) overrides ``?job=``."""
    text = str(value)
    if not re.match(r"^postgres(ql)?://", text):
        if job is not None:
            raise ConfigError("--job names a job in a postgresql:// manifest; a SQLite manifest file is one job")
        return Path(value)
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
        bad_port = True
    else:
        bad_port = False
    password = parts.password
    shown_netloc = parts.netloc
    if password is not None:
        shown_netloc = shown_netloc.replace(f":{password}@", ":***@", 1)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given_job = next((v for k, v in query if k == "job"), None)
    rest = [(k, v) for k, v in query if k != "job"]
    redacted = urlunsplit(("postgresql", shown_netloc, parts.path, parts.query, ""))
    if bad_port:
        raise ConfigError(f"--manifest {redacted}: the port is not a number; write e.g. postgresql://host:5432/db")
    if not parts.path.strip("/"):
        raise ConfigError(f"--manifest {redacted} names no database; write postgresql://host:5432/DBNAME?job=NAME")
    name = job if job is not None else given_job
    if name is not None and not JOB_NAME.match(name):
        raise ConfigError(
            f"job name {name!r} is not valid; use letters, digits, '.', '_' and '-' (up to 100), e.g. ?job=docs-2024"
        )
    del port
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
    return PostgresLocation(conninfo=conninfo, redacted=redacted, password=password, job=name)


def scrub(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` (a password) replaced, for messages built from a driver's errors."""
    return text.replace(secret, "***") if secret else text
