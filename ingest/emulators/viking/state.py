"""The running VikingDB emulator's mutable state, at ``app[VIKING_STATE]``."""

from __future__ import annotations

import random
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from ingest.emulators.kit.app import EmulatorState
from ingest.emulators.viking.config import FAILED_MESSAGES, VikingEmulatorConfig
from ingest.emulators.viking.fetch import TosReader
from ingest.emulators.viking.store import DocFate, VikingStore

__all__ = ["VIKING_STATE", "VikingState", "state_of"]


@dataclass
class VikingState(EmulatorState[VikingEmulatorConfig, VikingStore]):
    """The running emulator's mutable state, at ``app[VIKING_STATE]``.

    Tests may change ``process_delay_ms``, ``fail_rate``, ``max_docs`` and ``faults.settings`` on a
    running app.
    """

    process_delay_ms: int
    fail_rate: float
    max_docs: int
    tos: TosReader | None = None
    http: aiohttp.ClientSession | None = None
    _rng: random.Random = field(default_factory=random.Random)
    _rng_lock: threading.Lock = field(default_factory=threading.Lock)

    def open_store(self) -> VikingStore:
        store = VikingStore(self.config.data_dir)
        try:
            store.purge()
            for name in self.config.collections:
                store.ensure_collection(self.config.project, name)
        except BaseException:
            store.close()
            raise
        return store

    @asynccontextmanager
    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """The HTTP client ``url`` adds download with, and the reader of ``--tos-endpoint``."""
        config = self.config
        timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_read=120)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                self.http = http
                if config.tos_endpoint is None:
                    yield
                    return
                reader = TosReader(
                    config.tos_endpoint,
                    access_key=config.tos_access_key or config.access_key,
                    secret_key=config.tos_secret_key or config.secret_key,
                    region=config.tos_region or config.region or "cn-beijing",
                )
                async with reader:
                    self.tos = reader
                    yield
        finally:
            self.tos = self.http = None

    def fate(self) -> DocFate:
        """How a newly added document's processing ends (seeded, so sequential runs repeat)."""
        with self._rng_lock:
            if self.fail_rate > 0 and self._rng.random() < self.fail_rate:
                code = self._rng.choice(self.config.fail_codes)
                return DocFate(self.process_delay_ms, code, f"{FAILED_MESSAGES[code]} (injected fault)")
        return DocFate(self.process_delay_ms)


VIKING_STATE: web.AppKey[VikingState] = web.AppKey("viking_state", VikingState)


def state_of(request: web.Request) -> VikingState:
    return request.app[VIKING_STATE]
