"""``ingest``: async bulk ingestion of directory trees into knowledge-base platforms.

From async code::

    import ingest
    summary = await ingest.run(ingest.RunConfig(source=ingest.SourceConfig(path="docs")))

The CLI (``ingest run``) is a thin layer over the same call.
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from ingest.platforms.moi.config import MoiTargetConfig
    from ingest.platforms.viking.config import VikingTargetConfig
    from ingest.report import RunSummary

#: Where each public name lives. Imported on first use (PEP 562): ``python -m ingest`` and every import of a
#: submodule run this file first, and importing all of it up front (the engine, every platform's settings)
#: cost a command that needs a few of them a large part of its start-up (benchmarks/README.md, Issue 11).
_HOMES = {
    **dict.fromkeys(("EngineConfig", "RunConfig", "SourceConfig"), "ingest.config"),
    **dict.fromkeys(("retry_failed", "run"), "ingest.engine.run"),
    **dict.fromkeys(
        (
            "AuthError",
            "CapacityError",
            "ConfigError",
            "IngestError",
            "InterruptedRun",
            "PermanentError",
            "PermissionDenied",
            "RateLimitedError",
            "RemoteError",
            "SourceFileError",
            "TransientError",
            "VersionConflict",
        ),
        "ingest.errors",
    ),
    "TargetConfigBase": "ingest.platforms.base",
    "KeyueTargetConfig": "ingest.platforms.keyue.config",
    "MoiTargetConfig": "ingest.platforms.moi.config",
    "VikingTargetConfig": "ingest.platforms.viking.config",
    "RunSummary": "ingest.report",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ingest' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
