"""The command line: argument parsing and output only (see ``ingest.cli.main``)."""

from __future__ import annotations

from ingest.cli.main import entry, main

__all__ = ["entry", "main"]
