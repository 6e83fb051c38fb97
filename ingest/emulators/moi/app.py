"""The MOI emulator's public names; the code is being split out of ``store.py`` (issue 8)."""

from __future__ import annotations

from ingest.emulators.moi.store import (
    MOI_STATE,
    FileStatus,
    MoiEmulatorConfig,
    MoiState,
    TaskStatus,
    add_moi_arguments,
    build_moi_app,
    create_moi_app,
)

__all__ = [
    "MOI_STATE",
    "FileStatus",
    "MoiEmulatorConfig",
    "MoiState",
    "TaskStatus",
    "add_moi_arguments",
    "build_moi_app",
    "create_moi_app",
]
