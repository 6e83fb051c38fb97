"""Crash points for the crash-safety tests, in the manner of FoundationDB's and TiKV's failpoints.

``INGEST_FAILPOINT=name:N`` makes the N-th pass through ``failpoint(name)`` kill this process with
SIGKILL: no cleanup, no flush, exactly like a power cut of the process. A name ending in ``-stop``
(``after-intent-stop:3``) stops the process with SIGSTOP at ``name`` instead (a paused worker, for the
lease tests), once. Unset (always, outside the
tests), ``failpoint`` is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal

__all__ = ["failpoint"]


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count or "1")


_ARMED = _parse(os.environ.get("INGEST_FAILPOINT"))
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Die (or stop) here if the environment armed this point and this is the chosen pass."""
    if _ARMED is None or _ARMED[0] not in (name, name + "-stop"):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _ARMED[0].endswith("-stop"):
        if _hits[name] == _ARMED[1]:
            os.kill(os.getpid(), signal.SIGSTOP)
    elif _hits[name] >= _ARMED[1]:
        os.kill(os.getpid(), signal.SIGKILL)
