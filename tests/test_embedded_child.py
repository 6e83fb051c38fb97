"""The embedded default's emulator child: how it is started."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from ingest.platforms.moi.embedded import CHILD_MALLOC_ENV, embedded_moi


@pytest.mark.anyio
async def test_the_emulator_child_returns_freed_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child runs with glibc's allocator settings that give freed memory back to the system (without
    them it grew about 50 B a stored file for ever); a setting the user exported wins over ours."""
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    async with embedded_moi(tmp_path / "local") as destination:
        assert destination.start is not None
        await destination.start()
        # Only ours: the session's other servers (moto) may be this process's children too.
        (child,) = [c for c in psutil.Process().children() if "ingest.emulators.moi.child" in c.cmdline()]
        environ = child.environ()
    assert environ["MALLOC_ARENA_MAX"] == "4"
    for name, value in CHILD_MALLOC_ENV.items():
        if name != "MALLOC_ARENA_MAX":
            assert environ[name] == value
