"""API clients for the platforms, usable on their own (the targets and ``ingest migrate`` build on them)."""

from __future__ import annotations

from ingest.clients.moi import MoiClient, check_envelope

__all__ = ["MoiClient", "check_envelope"]
