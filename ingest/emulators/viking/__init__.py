"""A strict local emulator of the VikingDB knowledge-base document API; ``app`` says what it emulates."""

from __future__ import annotations

from ingest.emulators.viking.app import add_viking_arguments, build_viking_app, create_viking_app
from ingest.emulators.viking.config import FAILED_MESSAGES, VikingEmulatorConfig
from ingest.emulators.viking.state import VIKING_STATE, VikingState

__all__ = [
    "FAILED_MESSAGES",
    "VIKING_STATE",
    "VikingEmulatorConfig",
    "VikingState",
    "add_viking_arguments",
    "build_viking_app",
    "create_viking_app",
]
