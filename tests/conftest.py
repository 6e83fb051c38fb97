"""Fixtures shared by the suite: the anyio backend, source trees, and emulators on real loopback ports."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests must never touch a real platform or the user's own ingest state.
SECRET_ENV = (
    "MOI_KEY",
    "KEYUE_TOKEN",
    "VOLC_ACCESSKEY",
    "VOLC_SECRETKEY",
    "VOLC_STAGING_ACCESSKEY",
    "VOLC_STAGING_SECRETKEY",
)
for _secret in SECRET_ENV:
    os.environ.pop(_secret, None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def make_tree(root: Path, count: int = 30, *, size: int = 100, nested: bool = True) -> dict[str, str]:
    """Create ``count`` small files (some in subfolders, one empty, one with a non-ASCII name);
    return ``{relative path: md5}``."""
    files: dict[str, str] = {}
    for i in range(count):
        rel = f"d{i % 3}/f{i:04d}.txt" if nested and i % 2 else f"f{i:04d}.txt"
        if i == 0:
            rel = "empty.txt"
        if i == 1:
            rel = "文档/红楼梦 第1回.md"
        data = b"" if i == 0 else (f"file {i}\n".encode() * (size // 8 + 1))[:size]
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[rel] = hashlib.md5(data).hexdigest()
    return files


@pytest.fixture
async def moi_emulator(tmp_path: Path) -> AsyncIterator[object]:
    """A MOI emulator on 127.0.0.1 with a free port, volume 1001, key 'test-key'."""
    from tests.harness import MOI

    async with MOI.start(tmp_path / "moi-data") as deployment:
        yield deployment


@pytest.fixture(scope="session")
def pg() -> Iterator[object]:
    """One private PostgreSQL server for the whole session (tests use their own job names)."""
    from tests.pg import pg_server

    with pg_server() as server:
        yield server


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One local Ray cluster (2 CPUs) for every ``ray`` test of the session; its address, for
    ``ingest run --ray ADDRESS`` in a subprocess. The driver here is this test process."""
    ray = pytest.importorskip("ray")
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield str(context.address_info["address"])
    finally:
        ray.shutdown()


class ManifestUnderTest:
    """The manifest a parametrized test runs on: a SQLite file, or a job of its own on the session's
    private PostgreSQL server. ``flags`` go to ``ingest run``; ``location`` is what a ``RunConfig`` takes."""

    def __init__(self, backend: str, location: str, flags: list[str]) -> None:
        self.backend = backend
        self.location = location
        self.flags = flags

    def open(self) -> Any:
        from ingest.manifest import open_manifest, parse_location

        return open_manifest(parse_location(self.location))

    def states(self) -> dict[str, str]:
        """``{path: state}``; empty while nothing (not even the manifest) exists yet."""
        if self.backend == "sqlite" and not Path(self.location).exists():
            return {}
        with self.open() as m:
            return {r.path: r.state.value for r in m.iter_files()}

    def last_run_status(self) -> str:
        with self.open() as m:
            return str(m.runs()[-1]["status"])


def manifest_under_test(backend: str, request: pytest.FixtureRequest, tmp_path: Path, *, lease: str = "2") -> Any:
    """``sqlite``: ``m.db`` in the test's folder (the CLI runs there). ``postgres``: a unique job on the
    session's server, with a short ``--lease`` so a rerun after a SIGKILL takes the dead run's claims
    over in seconds (the default lease is 30 s)."""
    if backend == "sqlite":
        return ManifestUnderTest(backend, str(tmp_path / "m.db"), ["--manifest", "m.db"])
    server = request.getfixturevalue("pg")
    url = server.url(f"test-{uuid.uuid4().hex[:12]}")
    return ManifestUnderTest(backend, url, ["--manifest", url, "--lease", lease])
