"""Settings of the VikingDB knowledge-base target: the knowledge base, its credentials, the staging store
local files go through, and the ``meta`` fields attached to every document.

In a config file the staging store is its own table::

    [target]
    type = "viking"
    region = "cn-beijing"
    collection_name = "kb1"
    [target.staging]
    bucket = "my-bucket"
    prefix = "ingest/"
    [target.meta]
    source = "nightly import"
    folder = "{top_folder}"

Flags fill the same settings: ``--staging-bucket`` is ``staging.bucket``; ``--meta folder={top_folder}``
adds a ``meta`` entry (``--meta public:bool=true`` gives a type).
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ingest.config import parse_size
from ingest.platforms.base import TargetConfigBase

__all__ = [
    "DEFAULT_ENDPOINT",
    "META_PLACEHOLDERS",
    "MetaValue",
    "StagingConfig",
    "VikingTargetConfig",
    "parse_meta_flag",
]

DEFAULT_ENDPOINT = "https://api-knowledgebase.mlp.cn-beijing.volces.com"
#: Where the staging settings' secrets come from when neither the config nor a flag gives them.
STAGING_SECRET_ENV = {"access_key": "VOLC_STAGING_ACCESSKEY", "secret_key": "VOLC_STAGING_SECRETKEY"}
#: What a string ``meta`` value may derive from the file's relative path, e.g. ``"{top_folder}"``.
META_PLACEHOLDERS = {
    "path": "the relative path, e.g. reports/2024/q1.pdf",
    "top_folder": "the first folder of the path (reports), empty for files at the top",
    "folder": "the folder of the file (reports/2024), empty for files at the top",
    "name": "the file name (q1.pdf)",
    "stem": "the file name without its extension (q1)",
    "ext": "the extension without the dot (pdf)",
}
_META_TYPES = {"string", "bool", "int64", "float32"}
_MIN_PART = 5 * 1024 * 1024
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_DOC_ID_PREFIX_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")

MetaValue = str | bool | int | float


class StagingConfig(BaseModel):
    """The S3-compatible store (TOS on Volcengine) files are staged in before ``doc/add``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Required unless ``by_reference`` (which stages nothing): ``VikingTargetConfig`` checks it.
    bucket: str | None = None
    #: Default: TOS's S3-compatible endpoint of the target's region, ``https://tos-s3-<region>.volces.com``.
    endpoint: str | None = None
    #: Key prefix of staged objects; each file goes to ``<prefix><doc_id>/<size>-<mtime>/<file name>``.
    prefix: str = "ingest/"
    #: Default: the target's region.
    region: str | None = None
    #: Default: the target's access key pair (as TOS shares it on Volcengine), or the environment
    #: variables ``VOLC_STAGING_ACCESSKEY`` / ``VOLC_STAGING_SECRETKEY``.
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    #: Path-style URLs (``endpoint/bucket/key``); default: only for IP addresses and localhost.
    path_style: bool | None = None
    #: Files up to this size go up in one PUT, larger ones in parts of this size (S3's minimum is 5 MiB).
    #: One part is held in memory per upload in flight.
    part_size: int = Field(default=8 * 1024 * 1024, ge=_MIN_PART, le=5 * 1024**3)

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_env(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, env in STAGING_SECRET_ENV.items():
                if value.get(key) is None and os.environ.get(env):
                    value = {**value, key: os.environ[env]}
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        if value is not None and not _BUCKET_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a bucket name (3-63 lowercase letters, digits, '.' or '-')")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError(f"{value!r} is not an http(s) URL without a path; write e.g. http://127.0.0.1:9000")
        return None if value is None else value.rstrip("/")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.lstrip("/")
        if len(value.encode()) > 512 or any(ord(c) < 32 for c in value):
            raise ValueError("must be at most 512 bytes of printable text")
        return value if not value or value.endswith("/") else value + "/"

    @field_validator("part_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    def endpoint_for(self, region: str) -> str:
        return self.endpoint or f"https://tos-s3-{self.region or region}.volces.com"

    def uses_path_style(self, region: str) -> bool:
        if self.path_style is not None:
            return self.path_style
        host = urlsplit(self.endpoint_for(region)).hostname or ""
        if host == "localhost":
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True


def parse_meta_flag(text: str) -> tuple[str, MetaValue]:
    """``KEY=VALUE`` or ``KEY:TYPE=VALUE`` (TYPE: string, bool, int64, float32) from ``--meta``."""
    head, sep, raw = text.partition("=")
    if not sep or not head.strip():
        raise ValueError(f"--meta {text!r}: write KEY=VALUE or KEY:TYPE=VALUE, e.g. folder={{top_folder}}")
    name, _, kind = head.partition(":")
    kind = kind.strip() or "string"
    if kind not in _META_TYPES:
        raise ValueError(f"--meta {text!r}: type must be one of {', '.join(sorted(_META_TYPES))}")
    value: MetaValue = raw
    try:
        if kind == "bool":
            if raw.lower() not in ("true", "false"):
                raise ValueError
            value = raw.lower() == "true"
        elif kind == "int64":
            value = int(raw)
        elif kind == "float32":
            value = float(raw)
    except ValueError:
        raise ValueError(f"--meta {text!r}: {raw!r} is not a {kind} value") from None
    return name.strip(), value


def _check_template(name: str, value: str) -> None:
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        raise ValueError(f"meta {name!r}: {exc}; write {{{{ and }}}} for literal braces") from None
    for field in fields:
        if field not in META_PLACEHOLDERS:
            known = ", ".join("{" + k + "}" for k in META_PLACEHOLDERS)
            raise ValueError(f"meta {name!r}: unknown placeholder {{{field}}}; use one of {known}")


class VikingTargetConfig(TargetConfigBase):
    """Volcengine VikingDB knowledge base: files are staged in TOS (S3) and added with ``doc/add``."""

    type: Literal["viking"] = "viking"
    endpoint: str = DEFAULT_ENDPOINT
    region: str = Field(default="cn-beijing", pattern=r"^[a-z0-9-]{2,32}$")
    access_key: SecretStr
    secret_key: SecretStr
    #: The knowledge base: ``resource_id``, or ``collection_name`` in ``project``.
    resource_id: str | None = None
    collection_name: str | None = None
    project: str = "default"
    #: Where files are staged; by reference only its endpoint counts (the TOS VikingDB reads).
    staging: StagingConfig = Field(default_factory=StagingConfig)
    #: ``tos``: doc/add reads the staged object by ``tos_path``; ``url``: by a presigned GET URL.
    add_type: Literal["tos", "url"] = "tos"
    #: A bucket source (``s3://…``) in the TOS VikingDB reads (the staging endpoint): add each object by
    #: its own ``tos_path``, with no staging copy. Any other source is refused at its first file.
    by_reference: bool = False
    #: Seconds a presigned URL stays valid (``add_type = "url"``); the platform downloads within it.
    url_expires: int = Field(default=24 * 3600, ge=60, le=7 * 24 * 3600)
    #: ``meta`` fields for every document; strings may use ``{top_folder}`` and the other placeholders.
    meta: dict[str, MetaValue] = Field(default_factory=dict)
    #: Prepended to every doc_id (and part of its hash): keeps trees with equal paths apart in one KB.
    doc_id_prefix: str = ""

    @model_validator(mode="before")
    @classmethod
    def _fold_flags(cls, value: Any) -> Any:
        """Gather ``staging_*`` keys (from flags) into ``staging``, and ``--meta`` strings into ``meta``."""
        if not isinstance(value, dict):
            return value
        value = dict(value)
        flat = {k.removeprefix("staging_"): value.pop(k) for k in list(value) if k.startswith("staging_")}
        if flat:
            nested = value.get("staging")
            value["staging"] = {**(nested if isinstance(nested, dict) else {}), **flat}
        meta = value.get("meta")
        if isinstance(meta, list) and all(isinstance(m, str) for m in meta):
            value["meta"] = dict(parse_meta_flag(m) for m in meta)
        return value

    @field_validator("collection_name")
    @classmethod
    def _collection(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", value):
            raise ValueError(f"{value!r} is not a knowledge base name (a letter, then letters, digits or '_')")
        return value

    @field_validator("meta")
    @classmethod
    def _meta(cls, value: dict[str, MetaValue]) -> dict[str, MetaValue]:
        for name, item in value.items():
            if not name.strip() or len(name) > 128:
                raise ValueError(f"meta field name {name!r} must be 1-128 characters")
            if isinstance(item, str):
                _check_template(name, item)
        return value

    @field_validator("doc_id_prefix")
    @classmethod
    def _doc_id_prefix(cls, value: str) -> str:
        if value and not _DOC_ID_PREFIX_RE.fullmatch(value):
            raise ValueError("must be up to 32 letters, digits or '_', starting with a letter or '_'")
        return value

    @model_validator(mode="after")
    def _knowledge_base(self) -> VikingTargetConfig:
        if not self.resource_id and not self.collection_name:
            raise ValueError("name the knowledge base: collection_name (--collection) or resource_id (--resource-id)")
        if self.staging.bucket is None and not self.by_reference:
            raise ValueError(
                "name the bucket files are staged in: --staging-bucket BUCKET (staging.bucket); only"
                " --by-reference, which adds the objects of an s3:// source themselves, needs none"
            )
        return self

    def public_dump(self) -> dict[str, Any]:
        data = super().public_dump()
        staging = data.get("staging")
        if isinstance(staging, dict):
            for key in ("access_key", "secret_key"):
                staging.pop(key, None)
        return data

    def knowledge_base(self) -> str:
        """The knowledge base for messages: ``kb1 (project default)`` or ``resource kb-…``."""
        if self.collection_name:
            return f"{self.collection_name} (project {self.project})"
        return f"resource {self.resource_id}"
