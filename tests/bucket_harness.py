"""The bucket source kind of every ``ingest run`` harness: the test's local tree is mirrored into a bucket
of the shared moto server (``MOTO``) before each run, and the run reads ``s3://bucket/`` instead of the
folder. Everything else (the emulator, the checks) is the wrapped harness's, so the conformance and
crash suites run unchanged over both source kinds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import HARNESSES, MOTO, Faults

__all__ = ["BUCKET_ENV", "BUCKET_HARNESSES", "BucketSourced", "new_bucket", "s3_client", "sync_tree"]

#: The source keys a bucket run uses (moto takes any).
BUCKET_ENV = {"AWS_ACCESS_KEY_ID": "source-key-id", "AWS_SECRET_ACCESS_KEY": "source-secret-key"}

_count = iter(range(1, 1 << 30))


def s3_client() -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=MOTO.url(), region_name=MOTO.region, aws_access_key_id="x", aws_secret_access_key="x"
    )


def new_bucket(kind: str = "src") -> str:
    """A new empty bucket on ``MOTO``."""
    name = f"{kind}-{os.getpid()}-{next(_count)}"
    s3_client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": MOTO.region})
    return name


def sync_tree(bucket: str, root: Path) -> None:
    """Make ``bucket`` hold exactly the files under ``root`` (key = relative path), writing only the
    objects whose content changed: an unchanged file keeps its ETag and LastModified, as in a real sync."""
    s3 = s3_client()
    have: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        have.update({o["Key"]: o["ETag"].strip('"') for o in page.get("Contents", [])})
    want = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    for gone in set(have) - set(want):
        s3.delete_object(Bucket=bucket, Key=gone)
    for key, path in want.items():
        data = path.read_bytes()
        if have.get(key) != hashlib.md5(data).hexdigest():
            s3.put_object(Bucket=bucket, Key=key, Body=data)


def source_flags(bucket: str) -> list[str]:
    return [f"s3://{bucket}/", "--source-endpoint", MOTO.url(), "--source-region", MOTO.region, "--source-path-style"]


@dataclass
class BucketDeployment:
    """The wrapped deployment, with runs reading the test's tree from a bucket."""

    inner: Any
    bucket: str

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _config(self, config: Any) -> Any:
        source = config.source.model_copy(
            update={"path": f"s3://{self.bucket}/", "endpoint": MOTO.url(), "region": MOTO.region, "path_style": True}
        )
        return config.model_copy(update={"source": source})

    async def run(self, config: Any) -> Any:
        import anyio

        await anyio.to_thread.run_sync(sync_tree, self.bucket, Path(config.source.path))
        with _source_keys():
            return await self.inner.run(self._config(config))

    async def retry_failed(self, config: Any) -> Any:
        import anyio

        await anyio.to_thread.run_sync(sync_tree, self.bucket, Path(config.source.path))
        with _source_keys():
            return await self.inner.retry_failed(self._config(config))


class _source_keys:
    """The source keys in the environment for the duration of an in-process run."""

    def __enter__(self) -> None:
        self._saved = {k: os.environ.get(k) for k in BUCKET_ENV}
        os.environ.update(BUCKET_ENV)

    def __exit__(self, *exc: object) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class BucketSourced:
    """``harness`` with a bucket source (see the module docstring)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = f"{inner.name}+bucket"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @asynccontextmanager
    async def start(self, data_dir: Path, faults: Faults | None = None, *, seed: int | None = 7) -> AsyncIterator[Any]:
        import anyio

        bucket = await anyio.to_thread.run_sync(new_bucket)
        async with self.inner.start(data_dir, faults or Faults(), seed=seed) as dep:
            yield BucketDeployment(dep, bucket)

    def command(self, url: str, source: Path) -> tuple[list[str], dict[str, str]]:
        """``ingest run s3://…`` of ``source`` mirrored into a new bucket, with the target's flags."""
        args, env = self.inner.command(url, source)
        assert args[0] == "run", args
        bucket = new_bucket()
        sync_tree(bucket, source)
        return ["run", *source_flags(bucket), *args[2:]], {**env, **BUCKET_ENV}

    def run_args(
        self, url: str, cwd: Path, source: str, manifest: str, **kwargs: Any
    ) -> tuple[list[str], dict[str, str]]:
        # The wrapped harness's spelling, with this harness's ``command``.
        return type(self.inner).run_args(self, url, cwd, source, manifest, **kwargs)  # type: ignore[arg-type]


#: Every ``ingest run`` target, reading a bucket.
BUCKET_HARNESSES: list[Any] = [BucketSourced(h) for h in HARNESSES]
