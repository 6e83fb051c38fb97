"""Fixtures for the MOI connector, load-task, migration and SDK tests: a real moto S3 server on loopback,
buckets filled with objects, and the MOI emulator on a free port.

moto is started once per test module (``ThreadedMotoServer`` on 127.0.0.1, port 0); every test gets its
own bucket, so tests do not see each other's objects.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from pydantic import SecretStr

from ingest.emulators.kit.server import serve_in_background
from ingest.emulators.moi import MOI_STATE, MoiEmulatorConfig, MoiState, create_moi_app
from ingest.platforms.moi.client import MoiClient
from ingest.platforms.moi.wire import OssConfig, S3Config

KEY = "test-key"
VOLUME = "1001"
ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "s3cr3t-Example-Key"
_bucket_names = itertools.count(1)


@dataclass
class Bucket:
    """A bucket on the moto server, and how a connector reaches it."""

    endpoint: str
    name: str
    s3: Any

    def put(self, key: str, data: bytes) -> str:
        self.s3.put_object(Bucket=self.name, Key=key, Body=data)
        return hashlib.md5(data).hexdigest()

    def fill(self, count: int, prefix: str = "docs/") -> dict[str, str]:
        """``count`` small objects (txt, md, pdf names, some nested); ``{key: md5}``."""
        made = {}
        for i in range(count):
            ext = ("txt", "md", "pdf")[i % 3]
            key = f"{prefix}{'sub/' if i % 4 == 0 else ''}f{i:04d}.{ext}"
            made[key] = self.put(key, f"object {i}\n".encode() * (i % 7 + 1))
        return made

    def s3_config(self, *, path_style: bool = True, endpoint: str | None = None) -> S3Config:
        return S3Config(
            endpoint=endpoint or self.endpoint,
            access_key_id=ACCESS_KEY,
            access_key_secret=SecretStr(SECRET),
            bucket_name=self.name,
            region="us-east-1",
            path_style=path_style,
        )

    def oss_config(self) -> OssConfig:
        return OssConfig(
            endpoint=self.endpoint, access_key_id=ACCESS_KEY, access_key_secret=SecretStr(SECRET), bucket_name=self.name
        )

    def s3_block(self, **changes: Any) -> dict[str, Any]:
        block = {
            "endpoint": self.endpoint,
            "access_key_id": ACCESS_KEY,
            "access_key_secret": SECRET,
            "bucket_name": self.name,
            "region": "us-east-1",
            "path_style": True,
        }
        block.update(changes)
        return block


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A real S3 API (moto) on 127.0.0.1 with a free port, for the whole module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_endpoint: str) -> Bucket:
    """A fresh, empty bucket."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    name = f"bucket-{next(_bucket_names)}"
    s3.create_bucket(Bucket=name)
    return Bucket(moto_endpoint, name, s3)


@dataclass
class Moi:
    """A running MOI emulator seen from a test."""

    url: str
    app: Any
    data_dir: Path

    @property
    def state(self) -> MoiState:
        return self.app[MOI_STATE]  # type: ignore[no-any-return]

    def client(self, key: str = KEY) -> MoiClient:
        return MoiClient(self.url, key)

    async def stored(self, volume: str = VOLUME) -> dict[str, dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/_emulator/files") as r:
            return {f["path"]: f for f in await r.json() if str(f["volume_id"]) == volume}


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait (10 s at most) until ``check()`` is true: the platform works in the background, clients poll it."""
    with anyio.fail_after(10):
        while True:
            if await check():
                return
            await anyio.sleep(0.02)


@asynccontextmanager
async def running_moi(data_dir: Path, **options: Any) -> AsyncIterator[Moi]:
    settings: dict[str, Any] = {"task_delay_ms": 0, "clock_speed": 1.0, **options}
    app = create_moi_app(MoiEmulatorConfig(data_dir=data_dir, api_key=KEY, volumes=(VOLUME,), **settings))
    async with serve_in_background(app) as url:
        yield Moi(url, app, data_dir)


@pytest.fixture
async def moi(tmp_path: Path) -> AsyncIterator[Moi]:
    """The MOI emulator with volume 1001 and key 'test-key'; load files take no extra time."""
    async with running_moi(tmp_path / "moi") as emulator:
        yield emulator
