"""The VikingDB target against its emulator and a real moto S3 server on loopback: naming, settings,
staging, error mapping, resume checks, the CLI end to end and ``ingest viking task-info``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

import ingest
from ingest.config import EngineConfig, RunConfig, SourceConfig
from ingest.errors import (
    AuthError,
    CapacityError,
    ConfigError,
    PermanentError,
    RateLimitedError,
    SourceFileError,
    TransientError,
)
from ingest.http import HttpReply
from ingest.models import FileItem
from ingest.platforms.base import TargetContext
from ingest.platforms.viking.api import check_reply
from ingest.platforms.viking.config import VikingTargetConfig
from ingest.platforms.viking.naming import doc_id_for, meta_for
from ingest.platforms.viking.target import VikingTarget
from tests.conftest import make_tree
from tests.harness import MOTO, VIKING, ServerProcess, VikingDeployment, run_cli

DOC_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def item_for(path: Path, rel: str) -> FileItem:
    st = path.stat()
    return FileItem(rel, path, st.st_size, st.st_mtime_ns)


def s3_keys(prefix: str) -> list[str]:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=MOTO.url(), region_name=MOTO.region, aws_access_key_id="x", aws_secret_access_key="x"
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=MOTO.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


# --- naming and settings ----------------------------------------------------------------------------------


def test_doc_ids_are_valid_deterministic_and_distinct() -> None:
    """doc_ids use [A-Za-z0-9_], start with a letter or '_', fit 128 chars, and differ whenever paths do."""
    paths = [
        "a b.txt",
        "a_b.txt",
        "a-b.txt",
        "1.txt",
        "文档/红楼梦 第1回.md",
        "x" * 600 + ".pdf",
        ".hidden",
        "A/B/c.PDF",
    ]
    ids = [doc_id_for(p) for p in paths]
    assert all(DOC_ID.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(paths)
    assert ids == [doc_id_for(p) for p in paths]
    assert doc_id_for("a b.txt").startswith("a_b_txt_")
    assert doc_id_for("a b.txt", "tree2") != ids[0]
    assert DOC_ID.fullmatch(doc_id_for("y" * 600, "P" * 32))


def test_meta_values_derive_from_the_path() -> None:
    """Static meta values keep their type; string templates get {top_folder}, {path} and the others."""
    meta = {"source": "nightly", "folder": "{top_folder}", "where": "{folder}/{stem}.{ext}", "public": True, "n": 3}
    entries = {m["field_name"]: (m["field_type"], m["field_value"]) for m in meta_for(meta, "reports/2024/q1.pdf")}
    assert entries == {
        "source": ("string", "nightly"),
        "folder": ("string", "reports"),
        "where": ("string", "reports/2024/q1.pdf"),
        "public": ("bool", True),
        "n": ("int64", 3),
    }
    assert meta_for({"folder": "{top_folder}"}, "top.txt")[0]["field_value"] == ""


def base_settings(**changes: Any) -> dict[str, Any]:
    return {
        "type": "viking",
        "endpoint": "http://127.0.0.1:1",
        "access_key": "AK",
        "secret_key": "SK-secret",
        "collection_name": "kb1",
        **changes,
    }


def test_flags_fold_into_the_staging_table_and_secrets_stay_out_of_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    """--staging-* flags fill [target.staging]; --meta strings become typed meta; no secret is dumped."""
    monkeypatch.setenv("VOLC_STAGING_SECRETKEY", "staging-secret")
    config = VikingTargetConfig.model_validate(
        base_settings(
            staging={"bucket": "from-file", "prefix": "p"},
            staging_bucket="from-flag",
            staging_access_key="staging-ak",
            meta=["folder={top_folder}", "public:bool=true", "rank:int64=7"],
        )
    )
    assert (config.staging.bucket, config.staging.prefix) == ("from-flag", "p/")
    assert config.staging.secret_key is not None
    assert config.staging.secret_key.get_secret_value() == "staging-secret"
    assert config.meta == {"folder": "{top_folder}", "public": True, "rank": 7}
    dumped = json.dumps(config.public_dump())
    assert "SK-secret" not in dumped
    assert "staging-secret" not in dumped
    assert "staging-ak" not in dumped
    assert "**" not in dumped


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"collection_name": None}, "collection_name (--collection) or resource_id"),
        ({"meta": {"f": "{nope}"}}, "unknown placeholder {nope}"),
        ({"meta": ["broken"]}, "KEY=VALUE"),
        ({"staging": {"bucket": "Bad_Bucket"}}, "not a bucket name"),
        ({"staging": {"bucket": "b", "part_size": "1MiB"}}, "greater than or equal"),
        ({"collection_name": "9kb"}, "not a knowledge base name"),
    ],
)
def test_bad_settings_name_the_problem(changes: dict[str, Any], problem: str) -> None:
    """Invalid settings fail validation with a message naming what to fix."""
    settings = base_settings(staging={"bucket": "stage"})
    settings.update(changes)
    with pytest.raises((ValidationError, ValueError), match=re.escape(problem)):
        VikingTargetConfig.model_validate(settings)


def test_staging_defaults_follow_the_region() -> None:
    """Without an endpoint, staging goes to TOS's S3 endpoint of the region, virtual-hosted; IPs use paths."""
    config = VikingTargetConfig.model_validate(base_settings(region="cn-shanghai", staging={"bucket": "stage"}))
    assert config.staging.endpoint_for(config.region) == "https://tos-s3-cn-shanghai.volces.com"
    assert not config.staging.uses_path_style(config.region)
    local = VikingTargetConfig.model_validate(
        base_settings(staging={"bucket": "b12", "endpoint": "http://127.0.0.1:9"})
    )
    assert local.staging.uses_path_style(local.region)


def test_unsupported_types_and_documented_size_limits_are_refused(tmp_path: Path) -> None:
    """refuse() names the extension and the way out; a txt over 5 MiB is refused before anything is sent."""
    config = VikingTargetConfig.model_validate(base_settings(staging={"bucket": "stage"}))
    target = VikingTarget(config, TargetContext())
    assert target.refuse(FileItem("a/b.exe", tmp_path, 1, 0)) == (
        "VikingDB does not take .exe files (it takes .aac, .bmp, .csv, .doc, .docx, .faq.xlsx, .flac, .jpeg, .jpg,"
        " .jsonl, .markdown, .md, .mp3, .mp4, .ogg, .pdf, .png, .ppt, .pptx, .txt, .wav, .webp, .xlsx);"
        " leave them out with --exclude '*.exe'"
    )
    assert "without an extension" in str(target.refuse(FileItem("Makefile", tmp_path, 1, 0)))
    assert "up to 5 MiB" in str(target.refuse(FileItem("big.txt", tmp_path, 6 * 1024 * 1024, 0)))
    assert target.refuse(FileItem("ok.faq.xlsx", tmp_path, 1, 0)) is None


@pytest.mark.parametrize(
    ("status", "body", "error", "words"),
    [
        (401, {"code": 1000001, "message": "unauthorized"}, AuthError, "VOLC_SECRETKEY"),
        (403, {"code": 1000002, "message": "no permission"}, AuthError, "no permission"),
        (429, {"code": 1000029, "message": "quota"}, RateLimitedError, "rate limited"),
        (400, {"code": 1001010, "message": "doc num is exceed 10000"}, CapacityError, "is full"),
        (400, {"code": 1000005, "message": "collection not exist"}, ConfigError, "does not exist"),
        (500, {"code": 1000028, "message": "internal"}, TransientError, "server error"),
        (200, "<html>", TransientError, "without an envelope"),
        (
            400,
            {"code": 1000003, "message": "invalid request:doc_id\nbad"},
            PermanentError,
            "invalid request:doc_id bad",
        ),
    ],
)
def test_platform_codes_map_to_the_error_tree(status: int, body: Any, error: type[Exception], words: str) -> None:
    """Each documented code becomes the error the engine acts on, with a one-line message."""
    with pytest.raises(error) as caught:
        check_reply(HttpReply(status, {}, body), "adding a.txt", kb="kb1 (project default)", endpoint="http://x")
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


# --- against the emulator ---------------------------------------------------------------------------------


def run_config(dep: VikingDeployment, src: Path, manifest: Path, **target: Any) -> RunConfig:
    return RunConfig(
        source=SourceConfig(path=src),
        target=dep.target_config.model_copy(update=target),
        engine=EngineConfig(concurrency=4, poll_initial=0.02, poll_max=0.2),
        manifest=manifest,
        quiet=True,
    )


@pytest.mark.anyio
async def test_url_add_type_sends_presigned_urls(tmp_path: Path) -> None:
    """With add_type url, every file arrives whole through a presigned URL of its staged object."""
    files = make_tree(tmp_path / "src", 8)
    async with VIKING.start(tmp_path / "data") as dep:
        summary = await ingest.run(run_config(dep, tmp_path / "src", tmp_path / "m.db", add_type="url"))
        stored = await dep.stored()
    assert (summary.done, summary.failed) == (8, 0)
    assert {p: f.md5 for p, f in stored.items()} == files


@pytest.mark.anyio
async def test_full_knowledge_base_stops_sending_and_says_so(tmp_path: Path) -> None:
    """At 1001010 the run stops sending new files, fails what it tried, and reports why."""
    make_tree(tmp_path / "src", 10)
    async with VIKING.start(tmp_path / "data") as dep:
        from ingest.emulators.viking import VIKING_STATE

        dep.app[VIKING_STATE].max_docs = 3
        config = run_config(dep, tmp_path / "src", tmp_path / "m.db")
        summary = await ingest.run(config.model_copy(update={"engine": EngineConfig(concurrency=1)}))
        stored = await dep.stored()
    assert summary.exit_code == 1
    assert len(stored) == summary.done == 3
    assert summary.stopped_reason is not None
    assert "knowledge base kb1 (project default) is full" in summary.stopped_reason


@pytest.mark.anyio
async def test_find_existing_recognises_only_this_version_of_a_file(tmp_path: Path) -> None:
    """A file added before a crash is found by its doc_id; an older version of it, or a new file, is not."""
    path = tmp_path / "a.txt"
    path.write_bytes(b"one")
    async with VIKING.start(tmp_path / "data") as dep:
        target = VikingTarget(dep.target_config, TargetContext())
        try:
            await target.open()
            item = item_for(path, "a.txt")
            [receipt] = await target.submit([item], dedup=False)
            found = await target.find_existing(item)
            assert found is not None
            assert found.remote_id == receipt.remote_id == doc_id_for("a.txt")
            path.write_bytes(b"two!")
            os.utime(path, ns=(item.mtime_ns + 10**9, item.mtime_ns + 10**9))
            assert await target.find_existing(item_for(path, "a.txt")) is None
            assert await target.find_existing(FileItem("never.txt", path, 4, 0)) is None
        finally:
            await target.aclose()


@pytest.mark.anyio
async def test_large_files_go_up_in_parts_and_changed_files_fail(tmp_path: Path) -> None:
    """A file over part_size is staged as a multipart upload, intact; a file shorter than walked fails."""
    big = tmp_path / "big.pdf"
    data = os.urandom(11 * 1024 * 1024 + 17)
    big.write_bytes(data)
    async with VIKING.start(tmp_path / "data") as dep:
        staging = dep.target_config.staging.model_copy(update={"part_size": 5 * 1024 * 1024})
        config = dep.target_config.model_copy(update={"staging": staging})
        target = VikingTarget(config, TargetContext(chunk_size=256 * 1024))
        try:
            await target.open()
            [receipt] = await target.submit([item_for(big, "big.pdf")], dedup=False)
            assert receipt.extra["md5"] == hashlib.md5(data).hexdigest()
            with pytest.raises(SourceFileError, match="shrank"):
                await target.submit([FileItem("big.pdf", big, len(data) + 5, 1)], dedup=False)
        finally:
            await target.aclose()
        stored = await dep.stored()
    assert stored["big.pdf"].md5 == hashlib.md5(data).hexdigest()


# --- the command line -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One `ingest serve viking` process for the CLI tests (each uses its own files and manifest)."""
    proc = ServerProcess(VIKING.serve_command(tmp_path_factory.mktemp("vk-data")))
    yield proc
    proc.stop()


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_cli_run_stages_adds_and_finishes_every_file_once(server: ServerProcess, tmp_path: Path) -> None:
    """`ingest run DIR --target viking`: each file staged once, added once with its meta, all done."""
    files = make_tree(tmp_path / "docs", 12)
    (tmp_path / "docs" / "big.pdf").write_bytes(os.urandom(6 * 1024 * 1024))
    prefix = f"cli-{uuid.uuid4().hex}/"
    (tmp_path / "vk.toml").write_text(f'[target.staging]\nbucket = "{MOTO.bucket}"\npart_size = "5MiB"\n')
    flags, env = VIKING.cli(server.url)
    args = ["run", "docs", *flags, "--config", "vk.toml", "--staging-prefix", prefix, "--manifest", "vk.db"]
    result = run_cli([*args, "--meta", "folder={top_folder}", "--meta", "batch:int64=7"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "13 done, 0 failed" in result.stdout
    keys = s3_keys(prefix)
    assert len(keys) == 13  # staged once each
    assert {k.removeprefix(prefix).split("/")[0] for k in keys} == {doc_id_for(p) for p in [*files, "big.pdf"]}
    with urllib.request.urlopen(server.url + "/_emulator/files", timeout=10) as reply:
        stored = {f["path"]: f for f in json.load(reply)}
    for rel, digest in files.items():
        assert (stored[rel]["md5"], stored[rel]["uploads"]) == (digest, 1)
    assert stored["big.pdf"]["size"] == 6 * 1024 * 1024
    doc = anyio.run(doc_info, server.url, "文档/红楼梦 第1回.md")
    assert json.loads(doc["meta"]) == [
        {"field_name": "folder", "field_type": "string", "field_value": "文档"},
        {"field_name": "batch", "field_type": "int64", "field_value": 7},
    ]
    again = run_cli(args, env=env, cwd=tmp_path)
    assert "0 done, 0 failed, 13 skipped" in again.stdout


async def doc_info(url: str, rel_path: str) -> dict[str, Any]:
    from ingest.platforms.viking.api import VikingApi
    from ingest.platforms.viking.signing import Credentials

    credentials = Credentials(VIKING.access_key, VIKING.secret_key, MOTO.region)
    api = VikingApi(url, credentials, kb_fields={"collection_name": VIKING.collection}, kb_label="kb1")
    try:
        doc = await api.doc_info(doc_id_for(rel_path), what="test")
    finally:
        await api.aclose()
    assert doc is not None
    return doc


@pytest.mark.parametrize(
    ("extra", "env_change", "words"),
    [
        ([], {"VOLC_SECRETKEY": "wrong-secret-123"}, "VikingDB rejected the request signature"),
        (["--collection", "nokb"], {}, "knowledge base nokb (project default) does not exist"),
        (["--staging-bucket", "no-such-bucket"], {}, "staging bucket no-such-bucket does not exist"),
        ([], {"VOLC_SECRETKEY": ""}, "set VOLC_SECRETKEY"),
    ],
)
def test_cli_configuration_errors_are_one_line_exit_2(
    server: ServerProcess, tmp_path: Path, extra: list[str], env_change: dict[str, str], words: str
) -> None:
    """Wrong keys, a missing knowledge base or bucket: exit 2, one line naming the fix, no secret echoed."""
    make_tree(tmp_path / "docs", 2)
    flags, env = VIKING.cli(server.url)
    result = run_cli(["run", "docs", *flags, *extra, "--manifest", "m.db"], env={**env, **env_change}, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert words in line
    assert "wrong-secret-123" not in result.stderr + result.stdout


def test_task_info_command_shows_a_download_task(server: ServerProcess, tmp_path: Path) -> None:
    """`ingest viking task-info ID` prints status and progress; an unknown id is a one-line error."""
    request = urllib.request.Request(
        server.url + "/_emulator/tasks", data=json.dumps({"collection_name": VIKING.collection}).encode()
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        task_id = json.load(reply)["task_id"]
    _, env = VIKING.cli(server.url)
    base = ["viking", "task-info", "--endpoint", server.url]
    shown = run_cli([*base, task_id, "--json"], env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["task_id"] == task_id
    assert info["status"] in ("running", "success")
    missing = run_cli([*base, "404"], env=env, cwd=tmp_path)
    assert missing.returncode == 1
    assert "invalid request:task not exist" in one_line_error(missing)


def test_ingest_imports_without_the_s3_library(tmp_path: Path) -> None:
    """`import ingest`, the target registry and staging's bucket check work without aiobotocore (it is
    never loaded for a usual run: tests/test_s3put.py); here the check fails on the closed port."""
    code = (
        "import sys; sys.modules['aiobotocore'] = None\n"
        "import anyio, ingest\n"
        "from ingest.platforms.registry import get_spec\n"
        "assert get_spec('viking').name == 'viking'\n"
        "from ingest.platforms.viking.target import VikingTarget, VikingTargetConfig\n"
        "from ingest.platforms.base import TargetContext\n"
        "cfg = VikingTargetConfig(endpoint='http://127.0.0.1:1', access_key='a', secret_key='b',"
        " collection_name='kb', staging={'endpoint': 'http://127.0.0.1:1', 'bucket': 'stage'})\n"
        "t = VikingTarget(cfg, TargetContext())\n"
        "try:\n    anyio.run(t.staging.open)\nexcept ingest.TransientError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    expected = "checking staging bucket stage: connection to http://127.0.0.1:1 failed"
    assert result.stdout.startswith(expected), result.stdout


def test_secrets_never_reach_the_manifest(server: ServerProcess, tmp_path: Path) -> None:
    """The manifest records the run's settings without the access or secret key."""
    make_tree(tmp_path / "docs", 2)
    flags, env = VIKING.cli(server.url)
    result = run_cli(["run", "docs", *flags, "--manifest", "m.db"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    raw = (tmp_path / "m.db").read_bytes()
    assert VIKING.secret_key.encode() not in raw
    assert VIKING.access_key.encode() not in raw
