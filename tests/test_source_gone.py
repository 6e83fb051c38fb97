"""What converging to the source may act on: only a file the source says for certain is not there.

``--delete`` deletes the documents of files gone from the source, and a full run drops the failures
of files gone from it (issue 13, item 8). A bucket that cannot be reached, or that refuses a lookup,
says nothing about its objects: they are kept as they are, never taken for gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ingest.engine.converge import classify_paths
from ingest.sources.bucket import BucketSettings, BucketSource
from ingest.sources.local import WalkOptions
from tests.bucket_harness import s3_client
from tests.harness import MOTO
from tests.test_bucket_source import AUTH_SERVER

pytestmark = pytest.mark.anyio


async def test_a_missing_key_is_gone(tmp_path: object) -> None:
    s3 = s3_client()
    s3.put_object(Bucket=MOTO.bucket, Key="gone-test/here.txt", Body=b"1")
    settings = BucketSettings(
        bucket=MOTO.bucket, prefix="gone-test/", endpoint=MOTO.url(), region=MOTO.region, path_style=True,
        access_key="x", secret_key="x",
    )  # fmt: skip
    async with BucketSource(settings, WalkOptions()) as source:
        missing = await source.lookup("not-here.txt")
        assert await classify_paths(source, ["here.txt", "not-here.txt"]) == ["present", "gone"]
    assert getattr(missing, "gone", False) is True


@pytest.fixture
def private_moto() -> Iterator[subprocess.Popen[str]]:
    """A moto server of this test's own (the shared one must outlive every test), killed at the end."""
    env = {k: v for k, v in os.environ.items() if "AUTH" not in k}
    proc = subprocess.Popen(
        [sys.executable, "-c", AUTH_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


async def test_an_unreachable_store_is_not_taken_for_gone(private_moto: subprocess.Popen[str]) -> None:
    """The store went away after the listing: every lookup fails, and no file is called gone."""
    import boto3

    assert private_moto.stdout is not None
    url = private_moto.stdout.readline().strip()
    s3 = boto3.client("s3", endpoint_url=url, region_name=MOTO.region, aws_access_key_id="x",
                      aws_secret_access_key="x")  # fmt: skip
    s3.create_bucket(Bucket="gone-bucket", CreateBucketConfiguration={"LocationConstraint": MOTO.region})
    s3.put_object(Bucket="gone-bucket", Key="a.txt", Body=b"1")
    settings = BucketSettings(
        bucket="gone-bucket", prefix="", endpoint=url, region=MOTO.region, path_style=True, access_key="x",
        secret_key="x",
    )  # fmt: skip
    async with BucketSource(settings, WalkOptions()) as source:
        private_moto.kill()
        private_moto.wait()
        found = await source.lookup("a.txt")
        assert await classify_paths(source, ["a.txt"]) == ["present"]
    assert getattr(found, "gone", None) is False
    assert "cannot look it up" in getattr(found, "reason", "")
