"""Configuration: frozen pydantic models, loaded from a TOML file, environment variables and flags.

Precedence, lowest first: built-in defaults < ``--config FILE.toml`` < environment (secrets only) <
command-line flags. Secrets are ``SecretStr``: they print as ``**********`` and are excluded from
everything persisted (the manifest keeps ``RunConfig.public_dump()``, which drops them).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, SerializeAsAny, ValidationError, field_validator

from ingest.errors import ConfigError
from ingest.platforms.base import TargetConfigBase
from ingest.platforms.registry import get_spec, target_specs

__all__ = [
    "EngineConfig",
    "RunConfig",
    "SourceConfig",
    "SyncConfig",
    "load_toml",
    "parse_size",
    "validation_message",
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(text: str | int) -> int:
    """``"10MB"`` → 10_000_000, ``"64MiB"`` → 67_108_864, ``"4k"`` → 4000, ``123`` → 123."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size; write e.g. 500KB, 64MiB or 2GB")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    binary = "i" in unit
    unit = unit.replace("i", "").replace("b", "")
    factor = 1024 ** ("kmgt".index(unit) + 1) if binary and unit else _UNITS[unit]
    return int(number * factor)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceConfig(_Model):
    """Which files to send: a folder, or ``s3://bucket/prefix`` (``ingest.sources.bucket``)."""

    path: Path | str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    hidden: bool = False
    follow_symlinks: bool = False
    max_size: int | None = Field(default=None, ge=0)
    #: A bucket source's store: an S3-compatible endpoint (default: AWS S3), its region, path-style
    #: addressing, and keys (default: the standard AWS environment variables and profiles).
    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None

    @field_validator("max_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        """``s3://…`` stays a URL (a ``Path`` would fold its ``//``); anything else is a folder."""
        if isinstance(value, str) and value.startswith("s3://"):
            return value
        return Path(value) if isinstance(value, str) else value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError(f"{value!r} is not an http(s) URL without a path; write e.g. https://s3.example.com")
        return None if value is None else value.rstrip("/")

    @property
    def is_bucket(self) -> bool:
        return isinstance(self.path, str)


class EngineConfig(_Model):
    """How hard and how patiently to send."""

    concurrency: int = Field(default=16, ge=1, le=1024)
    #: Files per upload request when the target allows batching; ``None`` = the target's default.
    batch_files: int | None = Field(default=None, ge=1, le=1000)
    batch_bytes: int | None = Field(default=None, ge=1)
    #: Sends of one file per run, counting the platform's failures and retries.
    max_attempts: int = Field(default=3, ge=1, le=100)
    #: Repeats of one request after connection errors, 5xx and 429.
    request_retries: int = Field(default=8, ge=0, le=100)
    #: Seconds a file may stay processing on the platform before it is recorded as failed.
    task_timeout: float = Field(default=3600.0, gt=0)
    poll_initial: float = Field(default=0.1, gt=0)
    poll_max: float = Field(default=5.0, gt=0)
    chunk_size: int = Field(default=1024 * 1024, ge=4096, le=64 * 1024 * 1024)
    #: When to ask the platform to skip files it already holds: only for files a crash left
    #: mid-upload (``resume``), for every file (``always``), or never.
    dedup: Literal["resume", "always", "never"] = "resume"
    #: Seconds to wait for a connection, and for the next bytes of an answer, before a request times out.
    request_timeout: float = Field(default=120.0, gt=0)
    #: Seconds the platform may stay unreachable (no answer at all) before the run stops sending.
    unreachable_after: float = Field(default=300.0, gt=0)
    #: Files accepted by the platform but not yet finished, at most; bounds memory for huge trees.
    max_in_flight: int = Field(default=20_000, ge=1)
    #: Requests per second to the platform, at most, every kind and every retry counted (``--max-rps``,
    #: ``ingest.ratelimit``); ``None``: no budget, only backing off after 429s. A job fanned out over
    #: several processes gives each its share.
    max_rps: float | None = Field(default=None, gt=0)

    @field_validator("batch_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value


class SyncConfig(_Model):
    """How a rerun converges the destination on the source (``ingest.engine.converge``)."""

    #: ``replace``: a changed file's previous document is deleted once the new one is done; ``keep``: it
    #: stays. ``None`` (not chosen): replace where the target can delete, keep (with a warning) elsewhere.
    on_change: Literal["replace", "keep"] | None = None
    #: Delete the documents of files that left the source.
    delete: bool = False
    #: Most deletions of removed files one run may make: ``N`` or ``P%`` of the files in the manifest.
    max_delete: str = "50%"

    @field_validator("max_delete", mode="before")
    @classmethod
    def _max_delete(cls, value: Any) -> Any:
        text = str(value).strip()
        if not re.fullmatch(r"\d+(\.\d+)?%|\d+", text):
            raise ValueError(f"{value!r} is not a count or a percentage; write e.g. 100 or 10%")
        return text


class RunConfig(_Model):
    """Everything one ``ingest run`` needs. ``target=None`` means the embedded local emulator."""

    source: SourceConfig
    target: SerializeAsAny[TargetConfigBase] | None = None
    engine: EngineConfig = EngineConfig()
    #: A SQLite file, or ``postgresql://…?job=NAME`` (``ingest.manifest.location``; the password is
    #: never stored or shown).
    manifest: Path | str | None = None
    #: The job's name in a PostgreSQL manifest (overrides ``?job=``).
    job: str | None = None
    #: Share the job with other processes (claims and leases): implied by a PostgreSQL manifest.
    shared: bool = False
    #: Seconds a claim lasts without a heartbeat, in a shared job.
    lease: float = Field(default=30.0, gt=0)
    report: Path | None = None
    quiet: bool = False
    progress: bool | None = None  # None: bars when stderr is a terminal and not quiet
    sync: SyncConfig = SyncConfig()

    @field_validator("target", mode="before")
    @classmethod
    def _target_by_type(cls, value: Any) -> Any:
        """Validate ``[target]`` with the settings model of the target its ``type`` names."""
        if not isinstance(value, dict):
            return value
        kind = value.get("type")
        known = [spec.name for spec in target_specs()]
        if kind not in known:
            raise ValueError(f"type must be one of {', '.join(known)}, got {kind!r}")
        return get_spec(str(kind)).config_model.model_validate(value)

    def public_dump(self) -> dict[str, Any]:
        """The config without secrets, for the manifest and reports."""
        data = self.model_dump(mode="json")
        for key in ("access_key", "secret_key"):
            data["source"].pop(key, None)
        if self.target is not None:
            data["target"] = self.target.public_dump()
        if self.manifest is not None:
            from ingest.manifest.location import parse_location

            data["manifest"] = str(parse_location(self.manifest))  # a URL's password is replaced
        return data


def validation_message(exc: ValidationError, origin: str) -> str:
    """A one-line message for the first problem pydantic found, naming the field."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown setting; check the spelling against `ingest run --help`"
    elif err["type"] == "missing":
        msg = "required but not set"
    return f"{origin}: {field}: {msg}"


def load_toml(path: Path) -> dict[str, Any]:
    """Read a config file into plain data; errors name the file and line."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
