"""The running Keyue emulator's mutable state, at ``app[KEYUE_STATE]``."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ingest.emulators.keyue.config import KeyueEmulatorConfig
from ingest.emulators.keyue.store import KeyueStore, Timing
from ingest.emulators.kit.app import EmulatorState

__all__ = ["KEYUE_STATE", "KeyueState", "state_of"]


@dataclass
class KeyueState(EmulatorState[KeyueEmulatorConfig, KeyueStore]):
    """The running emulator's mutable state, at ``app[KEYUE_STATE]``.

    Tests may change ``learn_delay_ms``, ``enhance_delay_ms``, ``fail_rate`` and ``faults.settings``.
    """

    learn_delay_ms: int
    enhance_delay_ms: int
    fail_rate: float

    def open_store(self) -> KeyueStore:
        return KeyueStore(self.config.data_dir, self.config.seed)

    def timing(self) -> Timing:
        return Timing(self.learn_delay_ms, self.enhance_delay_ms, self.fail_rate)


KEYUE_STATE: web.AppKey[KeyueState] = web.AppKey("keyue_state", KeyueState)


def state_of(request: web.Request) -> KeyueState:
    return request.app[KEYUE_STATE]
