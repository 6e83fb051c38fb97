"""Bucket sources (``ingest run s3://bucket/prefix``) against a real moto S3 server on 127.0.0.1.

The conformance and crash suites run over bucket sources too (``tests/bucket_harness.py``); this file
covers what only a bucket has: keys that are no file names, objects changing between listing and
reading, the store's own failures, a large object streamed through at flat memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import ingest
from ingest.config import EngineConfig, RunConfig, SourceConfig
from ingest.engine.run import Job, run_job
from ingest.errors import ConfigError, SourceFileError
from ingest.http import FileBody
from ingest.manifest import SqliteManifest
from ingest.models import FileItem
from ingest.sources.base import Rejected
from ingest.sources.bucket import BucketObject, BucketSettings, BucketSource, change_token, parse_bucket_url, path_of
from ingest.sources.local import WalkOptions
from ingest.sources.reader import open_body
from tests.bucket_harness import BUCKET_ENV, new_bucket, s3_client
from tests.harness import MOI, MOTO, ServerProcess, run_cli

MiB = 1024 * 1024


def settings(bucket: str, prefix: str = "") -> BucketSettings:
    return BucketSettings(
        bucket=bucket, prefix=prefix, endpoint=MOTO.url(), region=MOTO.region, path_style=True,
        access_key="x", secret_key="x",
    )  # fmt: skip


def put_all(bucket: str, objects: dict[str, bytes]) -> None:
    s3 = s3_client()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))


def source_config(bucket: str, prefix: str = "", **filters: Any) -> SourceConfig:
    return SourceConfig(
        path=f"s3://{bucket}/{prefix}", endpoint=MOTO.url(), region=MOTO.region, path_style=True, **filters
    )


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def source_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in BUCKET_ENV.items():
        monkeypatch.setenv(k, v)


# ----- URLs and tokens -------------------------------------------------------------------------------


def test_bucket_urls() -> None:
    assert parse_bucket_url("s3://b-1/docs") == ("b-1", "docs/")
    assert parse_bucket_url("s3://b-1/docs/") == ("b-1", "docs/")
    assert parse_bucket_url("s3://b-1") == ("b-1", "")
    assert parse_bucket_url("s3://b-1/") == ("b-1", "")
    with pytest.raises(ConfigError, match="not a bucket URL"):
        parse_bucket_url("s3://")


def test_change_token_moves_with_the_etag_and_the_time() -> None:
    import datetime as dt

    t = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    a = change_token(t, '"aaaa"')
    assert a // 10**9 == int(t.timestamp())  # still a modification time, to the second
    assert change_token(t, "aaaa") == a  # quoted or not
    assert change_token(t, '"bbbb"') != a
    assert change_token(t + dt.timedelta(seconds=1), '"aaaa"') != a


# ----- listing ---------------------------------------------------------------------------------------


def many_objects(n: int) -> dict[str, bytes]:
    """``n`` objects in nested prefixes: non-ASCII keys, empty objects, keys with ``//``."""
    objects: dict[str, bytes] = {}
    for i in range(n):
        depth = i % 4
        folder = "/".join(f"d{(i >> k) % 5}" for k in range(depth))
        name = ["f", "é文", "ñame", "空"][i % 4] + f"{i:05d}.txt"
        key = f"{folder}/{name}" if folder else name
        if i % 97 == 0:
            key = key.replace("/", "//", 1) if "/" in key else "x//" + key
        objects[key] = b"" if i % 50 == 0 else f"object {i} ".encode() * (i % 7 + 1)
    return objects


@pytest.mark.anyio
async def test_two_thousand_objects_arrive_once_and_markers_are_counted(tmp_path: Path, source_keys: None) -> None:
    """2,000 objects in nested prefixes (non-ASCII keys, 0-byte objects, ``//`` keys) plus folder markers:
    every object arrives once with its md5; the markers are skipped and counted, never sent."""
    bucket = new_bucket()
    objects = many_objects(2000)
    markers = {"d0/": b"", "d1/d2/": b"", "empty-folder/": b""}
    put_all(bucket, {**objects, **markers})
    expected = {path_of(k): md5(v) for k, v in objects.items()}
    assert len(expected) == 2000
    async with MOI.start(tmp_path / "data") as dep:
        config = RunConfig(
            source=source_config(bucket),
            target=dep.target_config,
            engine=EngineConfig(concurrency=16, poll_initial=0.02, poll_max=0.2),
            manifest=tmp_path / "m.db",
            quiet=True,
        )
        summary = await ingest.run(config)
        stored = await dep.stored()
        again = await ingest.run(config)
    assert (summary.done, summary.failed) == (2000, 0), summary.failures[:3]
    assert summary.passed_over["folder markers (keys ending in /)"] == 3
    assert {p: f.md5 for p, f in stored.items()} == expected
    assert all(f.uploads == 1 for f in stored.values())
    assert (again.skipped, again.sent_files) == (2000, 0)
    with SqliteManifest(tmp_path / "m.db") as manifest:
        assert manifest.counts()["done"] == 2000
        assert manifest.get_meta("run_config") is not None
        assert "x" not in json.loads(manifest.get_meta("run_config") or "{}")["source"].get("secret_key", "")


@pytest.mark.anyio
async def test_filters_apply_to_keys_and_listing_is_paged(tmp_path: Path) -> None:
    """include/exclude/max-size/hidden act on keys as on paths; pages of 7 keys list the same sequence."""
    bucket = new_bucket()
    put_all(
        bucket,
        {
            "p/a.md": b"a",
            "p/b.pdf": b"b",
            "p/big.md": b"x" * 5000,
            "p/skip/c.md": b"c",
            "p/.git/config": b"g",
            "p/sub/d.md": b"d",
            "other/e.md": b"e",
        },
    )
    options = WalkOptions(include=("*.md",), exclude=("skip",), max_size=1000)
    async with BucketSource(settings(bucket, "p/"), options, page_size=2) as source:
        items = [e async for e in source.entries()]
        passed = dict(source.passed_over())
    assert [e.rel_path for e in items] == ["a.md", "sub/d.md"]
    assert passed["excluded by --include/--exclude"] == 2
    assert passed["larger than --max-size"] == 1
    assert passed["hidden (use --hidden)"] == 1


def test_paths_write_empty_segments_so_that_they_lead_back_to_their_key() -> None:
    """An empty segment is written ``%2F`` (platforms refuse empty folder names); every other key is
    its own path. The path leads back to the key, so nothing needs remembering."""
    from ingest.sources.bucket import key_of

    cases = {
        "a/b.txt": "a/b.txt",
        "a//b.txt": "a/%2F/b.txt",
        "/lead.txt": "%2F/lead.txt",
        "x///y/z.md": "x/%2F/%2F/y/z.md",
        "é文//空.txt": "é文/%2F/空.txt",
        "100%2F.txt": "100%2F.txt",  # only a whole segment is the escape
    }
    for key, path in cases.items():
        assert path_of(key) == path
        assert key_of(path) == key


@pytest.mark.anyio
async def test_a_key_whose_path_would_lead_back_to_another_key_fails_alone(tmp_path: Path) -> None:
    """``a//b.txt`` and ``a/b.txt`` are two objects and both are sent; a key with a literal ``%2F``
    segment would read back as ``a//b.txt``: it fails alone, saying what to do."""
    bucket = new_bucket()
    put_all(bucket, {"a//b.txt": b"1", "a/b.txt": b"2", "a/%2F/b.txt": b"3", "c//d.txt": b"4"})
    async with BucketSource(settings(bucket), WalkOptions()) as source:
        entries = [e async for e in source.entries()]
    paths = [(type(e).__name__, e.rel_path) for e in entries]
    assert paths == [
        ("Rejected", "a/%2F/b.txt"),
        ("FileItem", "a/%2F/b.txt"),
        ("FileItem", "a/b.txt"),
        ("FileItem", "c/%2F/d.txt"),
    ]
    reason = entries[0].reason  # type: ignore[union-attr]
    assert "'a//b.txt'" in reason
    assert "rename it" in reason
    assert [e.origin.key for e in entries[1:] if isinstance(e, FileItem) and isinstance(e.origin, BucketObject)] == [
        "a//b.txt",
        "a/b.txt",
        "c//d.txt",
    ]


@pytest.mark.anyio
async def test_lookup_finds_every_listed_object_by_its_path(tmp_path: Path) -> None:
    """What ``retry-failed`` and shared-job workers do with a manifest path: ``lookup`` yields the item
    the listing yielded (same key, size, change token) for ``//`` keys, leading ``/``, non-ASCII keys,
    under a prefix; folder markers are never listed, so never looked up."""
    bucket = new_bucket()
    keys = ["p/a//b.txt", "p//lead.txt", "p/x///y/z.md", "p/é文//空.txt", "p/ñ/plain.txt", "p/d/", "p/d//"]
    put_all(bucket, {k: k.encode() for k in keys})
    async with BucketSource(settings(bucket, "p/"), WalkOptions()) as source:
        listed = [e async for e in source.entries()]
        found = [await source.lookup(e.rel_path) for e in listed]
        markers = source.passed_over()["folder markers (keys ending in /)"]
        missing = await source.lookup("a/b.txt")  # the folded path names no key
    assert all(isinstance(e, FileItem) for e in listed + found)
    assert markers == 2
    assert sorted(e.origin.key for e in listed if isinstance(e.origin, BucketObject)) == sorted(keys[:5])
    for item, again in zip(listed, found, strict=True):
        assert isinstance(item, FileItem)
        assert isinstance(again, FileItem)
        assert (again.rel_path, again.size, again.mtime_ns) == (item.rel_path, item.size, item.mtime_ns)
        assert isinstance(again.origin, BucketObject)
        assert isinstance(item.origin, BucketObject)
        assert again.origin.key == item.origin.key
    assert isinstance(missing, Rejected)


@pytest.mark.anyio
async def test_retry_failed_sends_a_double_slash_key_once(tmp_path: Path) -> None:
    """The platform fails every file of the first run (``//`` keys among them); ``ingest retry-failed``
    finds each again from its manifest path and sends it once, with the right md5."""
    import anyio

    from tests.bucket_harness import source_flags
    from tests.harness import Faults

    bucket = new_bucket()
    objects = {"a//b.txt": b"double slash", "//lead.txt": b"leading slash", "é文/空.txt": b"non-ascii"}
    put_all(bucket, objects)
    async with MOI.start(tmp_path / "data", Faults(task_fail_rate=1.0)) as dep:
        flags, env = MOI.cli(dep.url)
        env = {**env, **BUCKET_ENV}
        args = ["run", *source_flags(bucket), *flags, "--manifest", "m.db", "--max-attempts", "1", "--json", "-q"]
        first = await anyio.to_thread.run_sync(lambda: run_cli(args, env=env, cwd=tmp_path))
        assert first.returncode == 1, first.stderr
        with SqliteManifest(tmp_path / "m.db") as manifest:
            assert manifest.counts()["failed"] == 3
        dep.set_faults(task_fail_rate=0.0)
        retry = ["retry-failed", "--manifest", "m.db", "--json"]
        retried = await anyio.to_thread.run_sync(lambda: run_cli(retry, env=env, cwd=tmp_path))
        stored = await dep.stored()
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["done"] == 3
    # Two uploads each: the first run's (its task failed) and exactly one by retry-failed.
    assert {p: (f.md5, f.uploads) for p, f in stored.items()} == {path_of(k): (md5(v), 2) for k, v in objects.items()}


# ----- bodies ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_bodies_stream_with_md5_and_reopen_on_the_listed_version(tmp_path: Path) -> None:
    """A body is read in exact chunks, hashed as it goes; an overwritten or deleted object fails with a
    clear reason at (re)opening, never sending another version under the listed token."""
    bucket = new_bucket()
    data = os.urandom(3 * MiB + 17)
    put_all(bucket, {"big.bin": data, "gone.txt": b"soon gone", "changed.txt": b"version 1"})
    async with BucketSource(settings(bucket), WalkOptions()) as source:
        items = {e.rel_path: e async for e in source.entries() if isinstance(e, FileItem)}
        stream = await open_body(items["big.bin"])
        digest = hashlib.md5()
        chunks = []
        while chunk := await stream.read(MiB, (digest,)):
            chunks.append(chunk)
        await stream.aclose()
        assert [len(c) for c in chunks] == [MiB, MiB, MiB, 17]
        assert digest.hexdigest() == md5(data)

        s3 = s3_client()
        s3.delete_object(Bucket=bucket, Key="gone.txt")
        s3.put_object(Bucket=bucket, Key="changed.txt", Body=b"version 2!")
        with pytest.raises(SourceFileError, match="deleted after it was listed"):
            await open_body(items["gone.txt"])
        with pytest.raises(SourceFileError, match="overwritten after it was listed"):
            await open_body(items["changed.txt"])
        # FileBody opens lazily: the failure surfaces when the body is read, recorded on the body.
        body = FileBody(items["changed.txt"])
        with pytest.raises(SourceFileError):
            async for _ in body._chunks():
                pass
        assert isinstance(body.failure, SourceFileError)
        found = await source.lookup("changed.txt")
        assert isinstance(found, FileItem)
        assert found.size == len(b"version 2!")
        assert found.mtime_ns != items["changed.txt"].mtime_ns  # a changed file for decide()


class ChangingBucket(BucketSource):
    """Deletes or overwrites objects just before they are sent: the store changing under a run."""

    def __init__(self, *args: Any, delete: str, overwrite: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delete, self.overwrite = delete, overwrite

    async def refresh(self, item: FileItem) -> FileItem | str:
        s3 = s3_client()
        if item.rel_path == self.delete:
            s3.delete_object(Bucket=self.settings.bucket, Key=item.rel_path)
        if item.rel_path == self.overwrite:
            s3.put_object(Bucket=self.settings.bucket, Key=item.rel_path, Body=b"a newer version")
        return await super().refresh(item)


@pytest.mark.anyio
@pytest.mark.parametrize("batch_files", [1, 10])
async def test_objects_changed_between_listing_and_reading_fail_alone(tmp_path: Path, batch_files: int) -> None:
    """An object deleted and one overwritten after the listing fail with their reason; the others
    (batched with them or not) are done; a rerun sends the new version."""
    bucket = new_bucket()
    put_all(bucket, {f"f{i:02d}.txt": f"file {i}".encode() for i in range(12)})
    async with MOI.start(tmp_path / "data") as dep:
        engine = EngineConfig(concurrency=2, poll_initial=0.02, poll_max=0.2, batch_files=batch_files)
        source = ChangingBucket(settings(bucket), WalkOptions(), delete="f03.txt", overwrite="f07.txt")
        async with source:
            summary = await run_job(
                Job(source=source, target=dep.target_config, engine=engine, manifest=tmp_path / "m.db", quiet=True),
                command="run",
            )
        failures = dict(summary.failures)
        stored = await dep.stored()
        async with BucketSource(settings(bucket), WalkOptions()) as plain:
            rerun = await run_job(
                Job(source=plain, target=dep.target_config, engine=engine, manifest=tmp_path / "m.db", quiet=True),
                command="run",
            )
        stored_after = await dep.stored()
    assert (summary.done, summary.failed) == (10, 2)
    assert "deleted after it was listed" in failures["f03.txt"]
    assert "overwritten after it was listed" in failures["f07.txt"]
    assert set(stored) == {f"f{i:02d}.txt" for i in range(12)} - {"f03.txt", "f07.txt"}
    assert (rerun.done, rerun.skipped) == (1, 10)  # f03 is gone; f07's new version is sent
    assert stored_after["f07.txt"].md5 == md5(b"a newer version")


# ----- the store's failures: one line, exit 2, nothing recorded ---------------------------------------

AUTH_SERVER = (
    "import sys\n"
    "from moto.server import ThreadedMotoServer\n"
    "s = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
    "s.start()\n"
    "print('http://%s:%d' % s.get_host_and_port(), flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture(scope="module")
def checking_moto() -> Any:
    """A moto server that checks keys (it knows none, so every key is wrong)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", AUTH_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
    )
    assert proc.stdout is not None
    yield proc.stdout.readline().strip()
    proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def test_store_problems_are_one_line_exit_2_nothing_recorded(tmp_path: Path, checking_moto: str) -> None:
    """A bucket that does not exist, a wrong key, an unreachable endpoint: exit 2, one line naming the
    problem and no secret, no manifest written."""
    cases = {
        "does not exist": ["s3://no-such-bucket-here/", "--source-endpoint", MOTO.url()],
        "refused the credentials": ["s3://any-bucket/", "--source-endpoint", checking_moto],
        "cannot reach": ["s3://any-bucket/", "--source-endpoint", "http://127.0.0.1:9"],
    }
    for expected, source in cases.items():
        manifest = tmp_path / f"{expected.replace(' ', '-')}.db"
        result = run_cli(
            ["run", *source, "--source-region", MOTO.region, "--source-path-style", "--manifest", str(manifest)],
            env={"AWS_ACCESS_KEY_ID": "AKIAWRONGKEY", "AWS_SECRET_ACCESS_KEY": "very-secret-value"},
            cwd=tmp_path,
        )
        assert result.returncode == 2, (expected, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (expected, result.stderr)
        assert expected in lines[0], (expected, result.stderr)
        assert "very-secret-value" not in result.stderr + result.stdout
        assert not manifest.exists()
        assert not (tmp_path / ".ingest" / "manifests").exists()


# ----- the command line ------------------------------------------------------------------------------


def test_cli_runs_a_bucket_prefix_into_moi(tmp_path: Path) -> None:
    """``ingest run s3://bucket/prefix`` with the keys in the environment; the plan mentions ``ingest
    migrate``; keys never reach the output or the manifest."""
    bucket = new_bucket()
    put_all(bucket, {"kb/a.txt": b"alpha", "kb/b/c.txt": b"gamma", "elsewhere.txt": b"no"})
    server = ServerProcess(MOI.serve_command(tmp_path / "data"))
    try:
        args = [
            "run", f"s3://{bucket}/kb", "--source-endpoint", MOTO.url(), "--source-region", MOTO.region,
            "--source-path-style", "--target", "moi", "--endpoint", server.url, "--volume-id", MOI.volume_id,
            "--manifest", "m.db",
        ]  # fmt: skip
        env = {"MOI_KEY": MOI.api_key, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}
        result = run_cli(args, env=env, cwd=tmp_path)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert "ingest migrate" in result.stderr + result.stdout
    assert "s3cr3t-value" not in result.stderr + result.stdout
    assert "s3cr3t-value" not in (tmp_path / "m.db").read_bytes().decode("latin-1")
    assert MOI.stored_bodies(tmp_path / "data") == {"a.txt": b"alpha", "b/c.txt": b"gamma"}


# ----- flat memory -----------------------------------------------------------------------------------

CLIENT = """
import json, sys
import anyio, ingest
from pydantic import SecretStr

config = ingest.RunConfig(
    source=ingest.SourceConfig(path=sys.argv[1], endpoint=sys.argv[2], region=sys.argv[3], path_style=True),
    target=ingest.MoiTargetConfig(endpoint=sys.argv[4], api_key=SecretStr(sys.argv[5]), volume_id=sys.argv[6]),
    manifest=sys.argv[7],
    quiet=True,
)
# VmHWM, not ru_maxrss: ru_maxrss starts at the forking test process's peak (Linux carries it across
# exec), which would hide any growth below it.
def peak_kib():
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
before = peak_kib()
summary = anyio.run(ingest.run, config)
after = peak_kib()
print(json.dumps({"before_kib": before, "after_kib": after, "done": summary.done, "failed": summary.failed}))
"""


def test_256_mib_object_streams_from_the_bucket_in_constant_memory(tmp_path: Path) -> None:
    """A 256 MiB object goes from the bucket into MOI's upload with client peak RSS growth < 64 MiB."""
    size = 256 * MiB
    bucket = new_bucket()
    s3 = s3_client()
    block = bytes(range(256)) * 4096 * 8  # 8 MiB of varied bytes
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big.bin")
    parts = []
    digest = hashlib.md5()
    for number in range(1, size // len(block) + 1):
        reply = s3.upload_part(Bucket=bucket, Key="big.bin", UploadId=upload["UploadId"], PartNumber=number, Body=block)
        parts.append({"ETag": reply["ETag"], "PartNumber": number})
        digest.update(block)
    s3.complete_multipart_upload(
        Bucket=bucket, Key="big.bin", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    server = ServerProcess(MOI.serve_command(tmp_path / "data"))
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                CLIENT,
                f"s3://{bucket}/",
                MOTO.url(),
                MOTO.region,
                server.url,
                MOI.api_key,
                MOI.volume_id,
                str(tmp_path / "m.db"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, **BUCKET_ENV},
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    numbers = json.loads(result.stdout)
    assert (numbers["done"], numbers["failed"]) == (1, 0)
    growth = (numbers["after_kib"] - numbers["before_kib"]) / 1024
    assert growth < 64, f"client peak RSS grew by {growth:.1f} MiB"
    stored = tmp_path / "data" / MOI.volume_id / "big.bin"
    assert stored.stat().st_size == size
    with open(stored, "rb") as f:
        got = hashlib.md5()
        while chunk := f.read(MiB):
            got.update(chunk)
    assert got.hexdigest() == digest.hexdigest()


# ----- by reference ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_viking_by_reference_adds_the_objects_themselves(tmp_path: Path, source_keys: None) -> None:
    """``--by-reference`` with a source in the TOS VikingDB reads: each object is added by its own
    tos_path; nothing is staged, no byte goes through the client; a local source is refused."""
    from tests.harness import VIKING

    bucket = new_bucket()
    objects = {"kb/a.txt": b"alpha", "kb/deep/b.md": b"# beta", "kb/c.txt": b""}
    put_all(bucket, objects)
    s3 = s3_client()
    staged_before = s3.list_objects_v2(Bucket=MOTO.bucket).get("KeyCount", 0)
    async with VIKING.start(tmp_path / "data") as dep:
        target = dep.target_config.model_copy(update={"by_reference": True})
        engine = EngineConfig(poll_initial=0.02, poll_max=0.2)
        config = RunConfig(
            source=source_config(bucket, "kb"), target=target, engine=engine, manifest=tmp_path / "m.db", quiet=True
        )
        summary = await ingest.run(config)
        docs = await dep._get("/_emulator/files")
        (tmp_path / "local").mkdir()
        (tmp_path / "local" / "x.txt").write_bytes(b"x")
        local = config.model_copy(
            update={"source": SourceConfig(path=tmp_path / "local"), "manifest": tmp_path / "l.db"}
        )
        with pytest.raises(ConfigError, match="by-reference"):
            await ingest.run(local)
    assert (summary.done, summary.failed) == (3, 0), summary.failures
    assert summary.sent_bytes == 0
    assert s3.list_objects_v2(Bucket=MOTO.bucket).get("KeyCount", 0) == staged_before  # no staging copy
    by_md5 = sorted(d["md5"] for d in docs if d["collection"] == VIKING.collection)
    assert by_md5 == sorted(md5(v) for v in objects.values())


@pytest.mark.anyio
async def test_viking_by_reference_needs_no_staging_bucket(tmp_path: Path) -> None:
    """``ingest run s3://b/p --target viking --by-reference`` without ``--staging-bucket`` adds every
    object by its own tos_path; without ``--by-reference`` the staging bucket is still required, in one
    line, exit 2."""
    import anyio

    from tests.bucket_harness import source_flags
    from tests.harness import VIKING

    bucket = new_bucket()
    objects = {"kb/a.txt": b"alpha", "kb/deep//b.md": b"# beta"}
    put_all(bucket, objects)
    async with VIKING.start(tmp_path / "data") as dep:
        flags, env = VIKING.cli(dep.url)
        at = flags.index("--staging-bucket")
        no_staging = flags[:at] + flags[at + 2 :]
        env = {**env, **BUCKET_ENV}
        source = [f"s3://{bucket}/kb", *source_flags(bucket)[1:]]
        args = ["run", *source, *no_staging, "--by-reference", "--manifest", "m.db", "--json", "-q"]
        by_reference = await anyio.to_thread.run_sync(lambda: run_cli(args, env=env, cwd=tmp_path))
        docs = await dep._get("/_emulator/files")
        staged = ["run", *source, *no_staging, "--manifest", "s.db"]
        refused = await anyio.to_thread.run_sync(lambda: run_cli(staged, env=env, cwd=tmp_path))
    assert by_reference.returncode == 0, by_reference.stderr
    assert json.loads(by_reference.stdout)["done"] == 2
    assert sorted(d["md5"] for d in docs if d["collection"] == VIKING.collection) == sorted(
        md5(v) for v in objects.values()
    )
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "--staging-bucket" in lines[0]
    assert not (tmp_path / "s.db").exists()
