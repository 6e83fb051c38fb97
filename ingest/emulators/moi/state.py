"""The running MOI emulator's mutable state, at ``app[MOI_STATE]``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import anyio
from aiohttp import web

from ingest.emulators.kit.app import EmulatorState
from ingest.emulators.moi.config import MoiEmulatorConfig
from ingest.emulators.moi.loadtasks import LOADS
from ingest.emulators.moi.store import MoiStore

__all__ = ["MOI_STATE", "MoiState", "state_of"]


@dataclass
class MoiState(EmulatorState[MoiEmulatorConfig, MoiStore]):
    """The running emulator's mutable state, at ``app[MOI_STATE]``.

    Tests may change ``task_delay_ms``, ``task_fail_rate`` and ``faults.settings`` on a running app.
    """

    task_delay_ms: int
    task_fail_rate: float

    def open_store(self) -> MoiStore:
        return MoiStore(self.config.data_dir, self.config.seed)

    @asynccontextmanager
    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """The start-up volumes, and the load-task worker for as long as the app runs."""
        await anyio.to_thread.run_sync(self.store.ensure_volumes, self.config.volumes)
        # aiohttp's cleanup context is an async generator, which an anyio task group must not span, so the
        # worker is a plain asyncio task, cancelled and awaited below.
        worker = asyncio.get_running_loop().create_task(app[LOADS].run())
        try:
            yield
        finally:
            worker.cancel()
            with anyio.CancelScope(shield=True), suppress(asyncio.CancelledError):
                await worker


MOI_STATE: web.AppKey[MoiState] = web.AppKey("moi_state", MoiState)


def state_of(request: web.Request) -> MoiState:
    return request.app[MOI_STATE]
