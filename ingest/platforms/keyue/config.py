"""Settings of the Baidu Keyue target, and the ``taskExtend`` document training options they make.

Every option is checked here, before anything is sent: a value outside Keyue's documented range is a
configuration error (exit 2) whose message gives the allowed range.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from ingest.platforms.base import TargetConfigBase

__all__ = ["API_BASES", "CHUNK_SIZE_RANGE", "OVERLAP_RANGE", "KeyueTargetConfig"]

#: The API path of each documented generation: the 2025 doc's, and the 2026 doc's under ``/csp-service``.
API_BASES = {"open": "/open/v1/api/v2", "csp-service": "/csp-service/open/v1/api/v2"}
#: ``taskExtend.chunk_size``: maximum characters per chunk (seed 002).
CHUNK_SIZE_RANGE = (200, 800)
#: ``taskExtend.overlap_proportion``: overlap between chunks, in percent (seed 002).
OVERLAP_RANGE = (0, 20)


def _header_safe(value: str, name: str) -> str:
    """Keyue takes ``uid``/``username`` as HTTP headers: they must be printable ASCII on one line."""
    value = value.strip()
    if not value:
        raise ValueError(f"{name} is empty; copy it from the Keyue console (准备工作)")
    if not (value.isascii() and value.isprintable()):
        raise ValueError(f"{name} must be printable ASCII: it is sent as an HTTP header")
    return value


def _whole_number_in(value: Any, bounds: tuple[int, int], flag: str) -> Any:
    low, high = bounds
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    if number is None or not low <= number <= high:
        raise ValueError(f"must be a whole number from {low} to {high} (Keyue's allowed range; {flag}), got {value!r}")
    return number


class KeyueTargetConfig(TargetConfigBase):
    """Baidu Keyue (客悦): documents into a knowledge directory through ``llm_document_import``."""

    type: Literal["keyue"] = "keyue"
    #: The robot's API key, sent as the ``token`` header.
    token: SecretStr
    uid: str
    username: str
    #: The destination directory; ``0`` is the default directory.
    dir_id: str = Field(default="0", min_length=1)
    #: Create the local folder tree as Keyue directories under ``dir_id`` and import each file into
    #: its folder's directory; otherwise every file goes straight into ``dir_id``.
    mirror_dirs: bool = False
    # taskExtend: all unset means automatic chunking and cleaning ("{}").
    split_by: Literal["punc", "wrap"] | None = None
    chunk_size: int | None = None
    overlap_proportion: int | None = None
    pre_handle_text: bool | None = None
    pre_handle_directory: bool | None = None
    #: ``learnStatus`` 2 (knowledge enhancement running) counts as done: the document is learned and
    #: searchable, only the enhancement is still running.
    treat_enhancing_as_done: bool = False
    #: Which documented path the API lives under: ``open`` (``/open/v1/api/v2``) or ``csp-service``.
    api_prefix: Literal["open", "csp-service"] = "open"

    @field_validator("uid", "username")
    @classmethod
    def _headers(cls, value: str, info: Any) -> str:
        return _header_safe(value, info.field_name)

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value().strip()
        if not secret:
            raise ValueError("token is empty; set KEYUE_TOKEN to the robot's API key")
        if not (secret.isascii() and secret.isprintable()):
            # Never echo the value: only say what is wrong with it.
            raise ValueError("token must be printable ASCII (it is sent as an HTTP header); check KEYUE_TOKEN")
        return SecretStr(secret)

    @field_validator("dir_id")
    @classmethod
    def _dir_id(cls, value: str) -> str:
        return _header_safe(value, "dir_id")

    @field_validator("chunk_size", mode="before")
    @classmethod
    def _chunk_size(cls, value: Any) -> Any:
        return _whole_number_in(value, CHUNK_SIZE_RANGE, "--chunk-size")

    @field_validator("overlap_proportion", mode="before")
    @classmethod
    def _overlap(cls, value: Any) -> Any:
        return _whole_number_in(value, OVERLAP_RANGE, "--overlap, in percent")

    @property
    def api_base(self) -> str:
        return API_BASES[self.api_prefix]

    def task_extend(self) -> str:
        """The ``taskExtend`` form field: the options that are set, or ``"{}"`` (automatic)."""
        options = {
            "split_by": self.split_by,
            "chunk_size": self.chunk_size,
            "overlap_proportion": self.overlap_proportion,
            "pre_handle_text": self.pre_handle_text,
            "pre_handle_directory": self.pre_handle_directory,
        }
        return json.dumps({k: v for k, v in options.items() if v is not None}, separators=(",", ":"))
