"""The manifest: the contract (``base``), the resume rule (``base.decide``) and the backends.

``open_manifest(path)`` opens the backend a ``--manifest`` value names: a file path is SQLite (the
embedded default).
"""

from __future__ import annotations

from pathlib import Path

from ingest.manifest.base import Decision, FileRecord, Manifest, decide
from ingest.manifest.sqlite import SqliteManifest

__all__ = ["Decision", "FileRecord", "Manifest", "SqliteManifest", "decide", "open_manifest"]


def open_manifest(location: Path) -> SqliteManifest:
    """Open (creating if needed) the manifest at ``location``."""
    return SqliteManifest(location)
