"""The embedded default: with no ``--target``, ``ingest run DIR`` sends to a local MOI emulator started
in this process on a free loopback port, storing files under ``./.ingest/local``.

So a fresh machine with no account anywhere can run the whole pipeline, and a rerun resumes against
the same stored state (the emulator persists it in its data dir). The runner sees only the neutral
``EmbeddedDestination`` this yields.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pydantic import SecretStr

from ingest.platforms.moi.target import MoiTargetConfig
from ingest.platforms.registry import EmbeddedDestination

__all__ = ["EMBEDDED_VOLUME", "embedded_moi"]

EMBEDDED_VOLUME = "1"


@asynccontextmanager
async def embedded_moi(data_dir: Path) -> AsyncIterator[EmbeddedDestination]:
    """Run the MOI emulator for the duration of the block; yield where it is and how to reach it."""
    # The emulator is imported here, not at the top: only a run without --target needs it.
    from ingest.emulators.kit.server import serve_in_background
    from ingest.emulators.moi.app import MoiEmulatorConfig, create_moi_app

    data_dir = data_dir.resolve()  # noqa: ASYNC240 - once per run, before any work starts
    data_dir.mkdir(parents=True, exist_ok=True)
    # A key derived from the data dir: stable, local, and not a secret anyone else holds.
    key = hashlib.sha256(str(data_dir).encode()).hexdigest()[:32]
    app = create_moi_app(
        MoiEmulatorConfig(data_dir=data_dir, api_key=key, volumes=(EMBEDDED_VOLUME,), task_delay_ms=20)
    )
    async with serve_in_background(app) as base_url:
        yield EmbeddedDestination(
            config=MoiTargetConfig(endpoint=base_url, api_key=SecretStr(key), volume_id=EMBEDDED_VOLUME),
            description="the embedded local MOI emulator",
            identity=f"embedded-moi:{data_dir}",
            stored_at=data_dir / EMBEDDED_VOLUME,
        )
