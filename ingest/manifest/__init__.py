"""The manifest: the contract (``base``), the resume rule (``base.decide``), the shared-job contract
(``jobs``) and the backends.

``open_manifest(location)`` opens the backend a ``--manifest`` value names: a file path is SQLite (the
embedded default); ``postgresql://…?job=NAME`` is one named job in a PostgreSQL database.
"""

from __future__ import annotations

from pathlib import Path

from ingest.errors import ConfigError
from ingest.manifest.base import Decision, FileRecord, Manifest, Owner, decide
from ingest.manifest.jobs import Claim, JobStore
from ingest.manifest.location import PostgresLocation, parse_location
from ingest.manifest.sqlite import SqliteManifest

__all__ = [
    "Claim",
    "Decision",
    "FileRecord",
    "JobStore",
    "Manifest",
    "Owner",
    "PostgresLocation",
    "SqliteManifest",
    "decide",
    "open_manifest",
    "parse_location",
]


def open_manifest(location: Path | PostgresLocation, job: str | None = None) -> JobStore:
    """Open (creating if needed) the manifest at ``location``; ``job`` names the job in a PostgreSQL
    database (required there, unless the location names it)."""
    if isinstance(location, PostgresLocation):
        name = job or location.job
        if name is None:
            raise ConfigError(f"--manifest {location.redacted} names no job; add ?job=NAME or pass --job NAME")
        try:
            from ingest.manifest.postgres import PostgresManifest
        except ImportError:
            raise ConfigError(
                "a postgresql:// manifest needs the PostgreSQL driver: pip install 'ingest[postgres]'"
            ) from None
        return PostgresManifest(location, name)
    return SqliteManifest(location, job)
