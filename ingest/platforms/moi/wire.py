"""Pydantic models of the MOI data-ingestion API: connectors, load tasks, task files, volumes, uploads.

Requests are built from these models and sent in the seed document's form. Responses are parsed
leniently (``extra="allow"``: MOI 5.0 adds fields) and accept both forms where the seed and the SDK or
MOI 5.0 differ (API-NOTES section 4): ids as JSON numbers or strings, ``/task/get`` with or without
its ``task`` wrapper, task ``status`` as a number or a numeric string, a validation ``reason`` also
called ``message``. Secrets (``access_key_secret``, ``password``, DIFY ``api_key``) are ``SecretStr``:
they print as ``**********`` and are revealed only when a request body is built.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator

from ingest.models import RemoteState

__all__ = [
    "BLOCK_FOR",
    "CONFIG_MODELS",
    "FILE_STATUS_TABLES",
    "SECRET_FIELDS",
    "CatalogFile",
    "CatalogFilePage",
    "CommonFileTaskConfig",
    "Connector",
    "ConnectorConfig",
    "ConnectorCreate",
    "ConnectorPage",
    "ConnectorQuery",
    "ConnectorSummary",
    "ConnectorUpdate",
    "DedupConfig",
    "DifyConfig",
    "FileStatus",
    "HdfsConfig",
    "IntervalType",
    "LoadModeConfig",
    "MoConfig",
    "OssConfig",
    "S3Config",
    "SourceConfig",
    "SourceFile",
    "SourceType",
    "Task",
    "TaskCreate",
    "TaskFile",
    "TaskFileState",
    "TaskFileStatePage",
    "TaskFilesPage",
    "TaskPage",
    "TaskQuery",
    "TaskState",
    "TaskStatus",
    "TaskUpdate",
    "UploadFileResult",
    "UploadResult",
    "ValidateResult",
    "Volume",
    "wire",
]


class SourceType(enum.IntEnum):
    """``source_type`` of a connector."""

    DIFY = 1
    HDFS = 2
    MO = 3
    OSS = 4
    S3 = 5


class IntervalType(enum.IntEnum):
    """``load_interval_type`` of a load task: how often it loads its uris."""

    UNKNOWN = 0
    DAY = 1
    HOUR = 2
    MINUTE = 3
    ONCE = 4


class TaskStatus(enum.IntEnum):
    UNKNOWN = 0
    RUNNING = 1
    PAUSING = 2
    PAUSED = 3
    FINISHED = 4


class FileStatus(enum.IntEnum):
    """``/task/files`` file status in the seed's table (MOI 5.0 numbers differ: see ``FILE_STATUS_TABLES``)."""

    UNKNOWN = 0
    WAITING = 1
    UPLOADING = 2
    PAUSED = 3
    FAILED = 4
    SUCCESS = 5
    RETRYING = 6


#: ``/task/files`` status codes -> what a caller acts on; codes not listed are still pending.
FILE_STATUS_TABLES: dict[str, dict[int, RemoteState]] = {
    # seed: 1 waiting, 2 uploading, 3 paused, 4 failed, 5 success, 6 retrying
    "seed": {4: RemoteState.FAILED, 5: RemoteState.DONE},
    # MOI 5.0: 1 waiting, 2 uploading, 3 failed, 4 success
    "v5": {3: RemoteState.FAILED, 4: RemoteState.DONE},
}


def wire(model: BaseModel) -> dict[str, Any]:
    """A request body: the model's fields without ``None``, secrets revealed (only ever sent, never logged)."""

    def reveal(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, BaseModel):
            return {k: reveal(v) for k, v in _fields(value).items() if v is not None}
        if isinstance(value, dict):
            return {k: reveal(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [reveal(v) for v in value]
        if isinstance(value, enum.Enum):
            return value.value
        return value

    return {k: reveal(v) for k, v in _fields(model).items() if v is not None}


def _fields(model: BaseModel) -> dict[str, Any]:
    # ``__dict__`` rather than the declared fields: a ``model_construct``-ed model may lack some.
    values = {name: value for name, value in model.__dict__.items() if name in type(model).model_fields}
    values.update(model.model_extra or {})
    return values


# Every model here is ``defer_build``: its validator is built when it is first used, not when this module is
# imported. A run imports the module with the MOI target, and a run that sends nothing (a no-op rerun) uses
# none of its 36 models: building them all was a tenth of its start-up (benchmarks/README.md, Issue 11 item 18).


class _Reply(BaseModel):
    """A response object: unknown fields are kept (newer MOI versions add some)."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True)


class _Body(BaseModel):
    """A request object we build: unknown fields are a bug."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _to_str(value: Any) -> Any:
    # Ids arrive as JSON numbers (Go int64, the seed's related_task_ids) or strings.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _to_int(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


# --- connectors -------------------------------------------------------------------------------------------


class _ConnectorConfig(BaseModel):
    """A connector's connection settings. Lenient on reading (``extra`` kept), so the CLI checks its input."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True)


class OssConfig(_ConnectorConfig):
    endpoint: str
    access_key_id: str
    access_key_secret: SecretStr
    bucket_name: str


class S3Config(_ConnectorConfig):
    endpoint: str
    access_key_id: str
    access_key_secret: SecretStr
    bucket_name: str
    region: str
    #: ``True``: path-style addressing; ``False``: virtual-hosted style.
    path_style: bool | None = None


class DifyConfig(_ConnectorConfig):
    api_key: SecretStr
    api_url: str


class HdfsConfig(_ConnectorConfig):
    address: str
    auth_type: int
    username: str
    file_path: str


class MoConfig(_ConnectorConfig):
    host: str
    port: int
    username: str
    password: SecretStr


ConnectorConfig = OssConfig | S3Config | DifyConfig | HdfsConfig | MoConfig

#: Config fields that hold secrets, in every source type.
SECRET_FIELDS = frozenset({"access_key_secret", "password", "api_key"})
#: source_type -> the name of its config block in requests and replies.
BLOCK_FOR: dict[SourceType, str] = {
    SourceType.DIFY: "dify",
    SourceType.HDFS: "hdfs",
    SourceType.MO: "mo",
    SourceType.OSS: "oss",
    SourceType.S3: "s3",
}
CONFIG_MODELS: dict[SourceType, type[_ConnectorConfig]] = {
    SourceType.DIFY: DifyConfig,
    SourceType.HDFS: HdfsConfig,
    SourceType.MO: MoConfig,
    SourceType.OSS: OssConfig,
    SourceType.S3: S3Config,
}


class ConnectorCreate(_Body):
    """``POST /connectors``."""

    name: str = Field(min_length=1)
    source_type: SourceType
    config: ConnectorConfig
    usage_type: list[int | str] | None = None

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "source_type": int(self.source_type),
            BLOCK_FOR[self.source_type]: wire(self.config),
        }
        if self.usage_type is not None:
            body["usage_type"] = self.usage_type
        return body


class ConnectorUpdate(_Body):
    """``PUT /connectors/{id}``: only what is given changes; ``config`` replaces the whole block."""

    name: str | None = None
    source_type: SourceType | None = None  # which block ``config`` goes in; not sent on its own
    config: ConnectorConfig | None = None
    usage_type: list[int | str] | None = None

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.name is not None:
            body["name"] = self.name
        if self.config is not None:
            if self.source_type is None:
                raise ValueError("ConnectorUpdate.config needs source_type to know its block")
            body[BLOCK_FOR[self.source_type]] = wire(self.config)
        if self.usage_type is not None:
            body["usage_type"] = self.usage_type
        return body


class Connector(_Reply):
    """One connector, as ``GET /connectors/list`` describes it."""

    id: int
    source_type: int
    name: str = ""
    status: str = ""
    created_at: int = 0
    updated_at: int = 0
    username: str = ""
    related_task_ids: list[str] = Field(default_factory=list)
    usage_type: list[Any] = Field(default_factory=list)
    # The blocks as the platform sent them (it may leave fields out), with secret fields as SecretStr.
    oss: dict[str, Any] | None = None
    s3: dict[str, Any] | None = None
    dify: dict[str, Any] | None = None
    hdfs: dict[str, Any] | None = None
    mo: dict[str, Any] | None = None

    _ids = field_validator("id", "source_type", "created_at", "updated_at", mode="before")(_to_int)

    @field_validator("oss", "s3", "dify", "hdfs", "mo", mode="after")
    @classmethod
    def _hide_secrets(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        return {k: SecretStr(str(v)) if k in SECRET_FIELDS and isinstance(v, str) else v for k, v in value.items()}

    @field_validator("related_task_ids", mode="before")
    @classmethod
    def _related(cls, value: Any) -> Any:
        return [_to_str(v) for v in value] if isinstance(value, list) else ([] if value is None else value)

    @property
    def config(self) -> dict[str, Any]:
        """The config block of this connector's type (secrets as ``SecretStr``); empty if none was sent."""
        try:
            block = BLOCK_FOR[SourceType(self.source_type)]
        except ValueError:
            return {}
        return dict(getattr(self, block) or {})

    def typed_config(self) -> ConnectorConfig:
        """The config block as its model; ``ValueError`` when the platform left required fields out."""
        model = CONFIG_MODELS[SourceType(self.source_type)]
        return model.model_validate(self.config)  # type: ignore[return-value]

    @property
    def type_name(self) -> str:
        try:
            return SourceType(self.source_type).name
        except ValueError:
            return str(self.source_type)


class ConnectorPage(_Reply):
    connectors: list[Connector] = Field(default_factory=list)
    total: int = 0


class ConnectorQuery(_Body):
    """``GET /connectors/list`` filters and paging (all optional)."""

    is_desc: bool | None = None
    keyword: str | None = None
    order_by: str | None = None
    page: int | None = Field(default=None, ge=1)
    page_size: int | None = Field(default=None, ge=1)
    source_type: int | None = None
    source_type_list: list[int] | None = None
    status: str | None = None
    status_list: list[str] | None = None
    usage_type: list[int | str] | None = None


class ValidateResult(_Reply):
    valid: bool
    reason: str = Field(default="", validation_alias=AliasChoices("reason", "message", "msg"))


class SourceFile(_Reply):
    """One entry of ``/connectors/files/list``: ``type`` 10 is a folder."""

    uri: str
    filename: str = ""
    size: int = 0
    type: int = 0


class ConnectorSummary(_Reply):
    """``/connectors/summary``: the seed does not document it; whatever the platform says is kept."""

    total: int | None = None


# --- load tasks -------------------------------------------------------------------------------------------


class LoadModeConfig(_Reply):
    load_interval_type: int
    interval: int | None = None


class CommonFileTaskConfig(_Reply):
    load_mode_config: LoadModeConfig | None = None
    uris: list[str] = Field(default_factory=list)


class SourceConfig(_Reply):
    common_file_task_config: CommonFileTaskConfig | None = None


class TaskCreate(_Body):
    """``POST /task``: load ``uris`` of a connector into a volume, once or periodically."""

    source_connector_id: int
    volume_id: str = Field(min_length=1)
    uris: list[str] = Field(min_length=1)
    load_interval_type: IntervalType = IntervalType.ONCE
    interval: int | None = Field(default=None, ge=0)
    config_type: int = 1

    def to_wire(self) -> dict[str, Any]:
        mode: dict[str, Any] = {"load_interval_type": int(self.load_interval_type)}
        if self.interval is not None:
            mode["interval"] = self.interval
        return {
            "source_connector_id": self.source_connector_id,
            "volume_id": self.volume_id,
            "source_config": {"common_file_task_config": {"load_mode_config": mode, "uris": list(self.uris)}},
            "config_type": self.config_type,
        }


class TaskUpdate(_Body):
    """``POST /task/update``."""

    task_id: str
    load_interval_type: IntervalType | None = None
    interval: int | None = Field(default=None, ge=0)
    uris: list[str] | None = None

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"task_id": self.task_id}
        if self.load_interval_type is not None:
            body["load_mode_config"] = {"load_interval_type": int(self.load_interval_type)}
            if self.interval is not None:
                body["load_mode_config"]["interval"] = self.interval
        if self.uris is not None:
            body["uris"] = list(self.uris)
        return body


class Task(_Reply):
    """A task (a connector load task or the task of a local upload), from ``/task/get`` or ``/task/list``."""

    id: str
    source_connector_id: int = 0
    source_connector_type: int = 0
    volume_id: str = ""
    volume_name: str = ""
    name: str = ""
    status: int = 0
    creator: str = ""
    source_config: SourceConfig | None = None
    start_at: int = 0
    end_at: int = 0
    created_at: int = 0
    updated_at: int = 0
    #: MOI 5.0 (API-NOTES, "Tasks"); ``None`` when the platform answers in the seed's form, without them.
    success_file_count: int | None = None
    failed_file_count: int | None = None

    _ids = field_validator("id", "volume_id", mode="before")(_to_str)
    _ints = field_validator(
        "status", "source_connector_id", "source_connector_type", "start_at", "end_at", "created_at", "updated_at",
        "success_file_count", "failed_file_count", mode="before",
    )(_to_int)  # fmt: skip

    @property
    def uris(self) -> list[str]:
        common = self.source_config.common_file_task_config if self.source_config else None
        return list(common.uris) if common else []

    @property
    def interval_type(self) -> int:
        common = self.source_config.common_file_task_config if self.source_config else None
        mode = common.load_mode_config if common else None
        return mode.load_interval_type if mode else 0

    @property
    def status_name(self) -> str:
        try:
            return TaskStatus(self.status).name.lower()
        except ValueError:
            return str(self.status)


class TaskPage(_Reply):
    tasks: list[Task] = Field(default_factory=list)
    total: int = 0


class _Polled(BaseModel):
    """A reply read on every poll round, for the few fields polling needs: other fields are dropped, not
    kept and validated (a ``Task`` costs ~10 µs each, and a ``/task/list`` page holds 100 of them)."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)


class TaskState(_Polled):
    """What a poll reads of a listed task: its status and, from MOI 5.0, its file counts."""

    id: str
    status: int = 0
    success_file_count: int | None = None
    failed_file_count: int | None = None

    _ids = field_validator("id", mode="before")(_to_str)
    _ints = field_validator("status", "success_file_count", "failed_file_count", mode="before")(_to_int)


class TaskFileState(_Polled):
    """What a poll reads of a ``/task/files`` row: the file's id, status code and failure reason."""

    id: str
    status: int = 0
    reason: str = ""

    _ids = field_validator("id", mode="before")(_to_str)


class TaskFileStatePage(_Polled):
    total: int = 0
    files: list[TaskFileState] = Field(default_factory=list)


class TaskQuery(_Body):
    """``GET /task/list`` filters and paging."""

    is_desc: bool | None = None
    load_interval_types: list[int] | None = None
    order_by: str | None = None
    page: int | None = Field(default=None, ge=1)
    page_size: int | None = Field(default=None, ge=1)
    status: int | None = None


class TaskFile(_Reply):
    id: str
    name: str = ""
    type: int = 0
    status: int = 0
    size: int = 0
    update_time: int = 0
    other_metadata: str = ""
    reason: str = ""
    user: str = ""
    start_time: int = 0
    end_time: int = 0
    path: str = ""

    _ids = field_validator("id", mode="before")(_to_str)


class TaskFilesPage(_Reply):
    total: int = 0
    total_success: int = 0
    total_failed: int = 0
    files: list[TaskFile] = Field(default_factory=list)


# --- uploads and volumes ----------------------------------------------------------------------------------


def _name_and_md5() -> list[Literal["name", "md5"]]:
    return ["name", "md5"]


class DedupConfig(_Body):
    """``dedup`` of an upload: skip (or replace) files the volume already holds, matched by name and/or md5."""

    by: list[Literal["name", "md5"]] = Field(default_factory=_name_and_md5, min_length=1)
    strategy: Literal["skip", "replace", "overwrite"] = "skip"


class UploadFileResult(_Reply):
    success: bool = False
    file_id: str | None = None
    message: str = ""

    _ids = field_validator("file_id", mode="before")(_to_str)


class UploadResult(_Reply):
    """``POST /connectors/upload``: success means the task was created, not that processing finished."""

    success: bool = True
    file_id: str | None = None
    task_id: str | None = None
    message: str = ""
    results: list[UploadFileResult] = Field(default_factory=list)

    _ids = field_validator("file_id", "task_id", mode="before")(_to_str)


class Volume(_Reply):
    id: str
    name: str = ""
    description: str = ""
    ref: bool | None = None
    created_at: str | int | None = None
    updated_at: str | int | None = None

    _ids = field_validator("id", mode="before")(_to_str)


# --- the volume catalog -----------------------------------------------------------------------------------


class CatalogFile(_Reply):
    """One entry of ``/catalog/file/list`` (moi-go-sdk ``VolumeChildrenResponse``)."""

    id: str
    name: str = ""
    #: ``"file"`` or ``"folder"``.
    file_type: str = "file"
    file_ext: str = ""
    size: int = 0
    parent_id: str = ""
    volume_id: str = ""
    volume_name: str = ""
    #: The path in the volume, where the platform gives it.
    show_path: str = ""
    created_at: str | int | None = None
    updated_at: str | int | None = None

    _ids = field_validator("id", "parent_id", "volume_id", mode="before")(_to_str)
    _ints = field_validator("size", mode="before")(_to_int)


class CatalogFilePage(_Reply):
    total: int = 0
    #: ``list`` on the wire.
    files: list[CatalogFile] = Field(default_factory=list, validation_alias="list")
