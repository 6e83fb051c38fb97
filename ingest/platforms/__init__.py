"""Destination platforms. Each module registers its ``Target`` subclass on import."""

from __future__ import annotations

import importlib

_BUILTIN = ("ingest.platforms.moi.target", "ingest.platforms.keyue.target", "ingest.platforms.viking.target")


def load_builtin_targets() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)
