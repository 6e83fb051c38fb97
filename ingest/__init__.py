"""``ingest``: async bulk ingestion of directory trees into knowledge-base platforms.

From async code::

    import ingest
    summary = await ingest.run(ingest.RunConfig(source=ingest.SourceConfig(path="docs")))

The CLI (``ingest run``) is a thin layer over the same call.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ingest.config import EngineConfig, RunConfig, SourceConfig
from ingest.engine.run import retry_failed, run
from ingest.errors import (
    AuthError,
    CapacityError,
    ConfigError,
    IngestError,
    InterruptedRun,
    PermanentError,
    PermissionDenied,
    RateLimitedError,
    RemoteError,
    SourceFileError,
    TransientError,
    VersionConflict,
)
from ingest.platforms.base import TargetConfigBase
from ingest.platforms.keyue.config import KeyueTargetConfig
from ingest.platforms.moi.target import MoiTargetConfig
from ingest.platforms.viking.config import VikingTargetConfig
from ingest.report import RunSummary

__all__ = [
    "AuthError",
    "CapacityError",
    "ConfigError",
    "EngineConfig",
    "IngestError",
    "InterruptedRun",
    "KeyueTargetConfig",
    "MoiTargetConfig",
    "PermanentError",
    "PermissionDenied",
    "RateLimitedError",
    "RemoteError",
    "RunConfig",
    "RunSummary",
    "SourceConfig",
    "SourceFileError",
    "TargetConfigBase",
    "TransientError",
    "VersionConflict",
    "VikingTargetConfig",
    "__version__",
    "retry_failed",
    "run",
]
