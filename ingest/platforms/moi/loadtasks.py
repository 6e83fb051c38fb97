"""Bucket-to-volume migrations on MOI: ``ingest migrate``, one engine job.

The platform does the copying; the engine drives it resumably, as it drives ``ingest run``: the source
is the connector's file listing (``ConnectorSource``), the target creates MOI load tasks for batches of
``uris_per_task`` uris and follows them (``LoadTaskTarget``), and the manifest records every file (its
uri is its manifest path) through the engine's states, so the migration has the engine's batching,
progress, report, signal handling and crash safety. How no task is ever created twice after a crash
is told in ``ingest.platforms.moi.loadtask_target``.

With ``schedule`` the tasks are periodic (``load_interval_type`` 1 day, 2 hour, 3 minute): a file is
done when the task's first run loaded it, and the platform keeps loading on schedule afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from ingest.config import EngineConfig, validation_message
from ingest.engine.run import Job, run_job
from ingest.errors import ConfigError
from ingest.platforms.moi.client import MoiClient
from ingest.platforms.moi.connector_source import ConnectorSource, connector_identity
from ingest.platforms.moi.loadtask_target import LoadTaskTarget, LoadTaskTargetConfig, MigrateSummary
from ingest.retry import RetryPolicy

__all__ = ["MigrateConfig", "MigrateSummary", "migrate"]


class MigrateConfig(BaseModel):
    """Everything one ``ingest migrate`` needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str = Field(pattern=r"^https?://[^/\s]+")
    api_key: SecretStr
    connector_id: int = Field(ge=0)
    volume_id: str = Field(min_length=1)
    manifest: Path
    report: Path | None = None
    #: Only these ``/connectors/files/list`` types (empty: every file). Folders (type 10) are never loaded.
    file_types: tuple[int, ...] = ()
    uris_per_task: int = Field(default=100, ge=1, le=10_000)
    schedule: Literal["day", "hour", "minute"] | None = None
    #: Units of ``schedule`` between runs (MOI's ``interval``; 0 or unset means 1).
    interval: int | None = Field(default=None, ge=0)
    #: Loads of one file per run, counting MOI's retries of failed files.
    max_attempts: int = Field(default=3, ge=1, le=100)
    #: Seconds a task may keep files unfinished before they are recorded as failed.
    task_timeout: float = Field(default=3600.0, gt=0)
    #: Load tasks being created at once.
    max_tasks: int = Field(default=16, ge=1, le=1000)
    request_retries: int = Field(default=8, ge=0, le=100)
    poll_initial: float = Field(default=0.2, gt=0)
    poll_max: float = Field(default=2.0, gt=0)
    file_status_table: Literal["seed", "v5"] = "seed"
    auth_header: Literal["moi-key", "x-api-key"] = "moi-key"
    workspace_id: str | None = None
    quiet: bool = False
    progress: bool | None = None

    @classmethod
    def build(cls, **values: object) -> MigrateConfig:
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, "ingest migrate")) from None

    def source(self) -> str:
        return connector_identity(self.endpoint, self.connector_id)

    def target(self) -> LoadTaskTargetConfig:
        """The load-task target's settings: the fields of the same names."""
        names = set(LoadTaskTargetConfig.model_fields) - {"type"}
        return LoadTaskTargetConfig(**{name: getattr(self, name) for name in names})

    def engine(self) -> EngineConfig:
        """The engine's settings: one worker per load task being created, batches of ``uris_per_task``
        (the target's), the rest by the same names."""
        same = {"max_attempts", "request_retries", "task_timeout", "poll_initial", "poll_max"}
        return EngineConfig(concurrency=self.max_tasks, **{name: getattr(self, name) for name in same})

    def public_dump(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude={"api_key"})


async def migrate(config: MigrateConfig, *, handle_signals: bool = False, only_failed: bool = False) -> MigrateSummary:
    """Load every source file of the connector into the volume through MOI load tasks, resumably.

    ``only_failed`` loads again only the files the manifest records as failed. Raises ``ConfigError``
    for what the user must fix and ``InterruptedRun`` after SIGINT/SIGTERM (with ``handle_signals``);
    the manifest is consistent in both cases.
    """
    retries = RetryPolicy(attempts=config.request_retries + 1, max_delay=5.0)
    async with MoiClient(
        config.endpoint,
        config.api_key,
        auth_header=config.auth_header,
        workspace_id=config.workspace_id,
        retries=retries,
    ) as client:
        job = Job(
            source=ConnectorSource(client, config.connector_id, config.file_types),
            target=config.target(),
            engine=config.engine(),
            manifest=config.manifest,
            report=config.report,
            quiet=config.quiet,
            progress=config.progress,
            settings=config.public_dump(),
            summary_factory=MigrateSummary,
            target_factory=LoadTaskTarget,
        )
        summary = await run_job(job, command="migrate", handle_signals=handle_signals, only_failed=only_failed)
    assert isinstance(summary, MigrateSummary)  # built by summary_factory
    return summary
