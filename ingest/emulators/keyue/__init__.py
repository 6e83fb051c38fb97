"""A strict local emulator of the Baidu Keyue (客悦) knowledge APIs; ``app`` says what it emulates."""

from __future__ import annotations

from ingest.emulators.keyue.app import MESSAGES, add_keyue_arguments, build_keyue_app, create_keyue_app
from ingest.emulators.keyue.config import KeyueEmulatorConfig
from ingest.emulators.keyue.state import KEYUE_STATE, KeyueState

__all__ = [
    "KEYUE_STATE",
    "MESSAGES",
    "KeyueEmulatorConfig",
    "KeyueState",
    "add_keyue_arguments",
    "build_keyue_app",
    "create_keyue_app",
]
