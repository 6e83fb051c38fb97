"""The benchmark baselines of ``benchmarks/baseline_clients.py`` (issue 11, goals 1-2) do what a ratio
against them assumes: every file stored with its md5 in a real emulator (``ingest serve``, on loopback;
VikingDB's staging in the shared moto server), through the requests ``ingest run`` sends for one file
(uploads, then status polls until done), and nothing else."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import SECRET_ENV
from tests.harness import KEYUE, MOI, MOTO, VIKING, ServerProcess

BASELINE = Path(__file__).resolve().parent.parent / "benchmarks" / "baseline_clients.py"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> Any:
    with _NO_PROXY.open(url, timeout=30) as resp:
        return json.loads(resp.read())


def _files(folder: Path, count: int, suffix: str = ".txt") -> dict[str, str]:
    folder.mkdir()
    md5s = {}
    for i in range(count):
        data = f"document {i}\n".encode() * (i + 1)
        (folder / f"doc{i}{suffix}").write_bytes(data)
        md5s[f"doc{i}{suffix}"] = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return md5s


def _run_baseline(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The baseline as ``run.py`` starts it: a child process, secrets in its environment, no proxy."""
    clean = {k: v for k, v in os.environ.items() if k not in SECRET_ENV and "proxy" not in k.lower()}
    return subprocess.run(
        [sys.executable, str(BASELINE), *args], capture_output=True, text=True, timeout=120, env={**clean, **env}
    )


def _stored(url: str) -> dict[str, str]:
    return {Path(f["path"]).name: f["md5"] for f in _get(url + "/_emulator/files")}


def _requests(url: str) -> dict[str, int]:
    return {k: v for k, v in _get(url + "/_emulator/stats")["requests"].items() if "/_emulator" not in k}


def _run_moi_baseline(folder: Path, data_dir: Path, batch_files: int) -> tuple[dict[str, str], dict[str, int]]:
    """The MOI baseline into a fresh emulator: what it stored (name -> md5) and the requests it got."""
    server = ServerProcess(MOI.serve_command(data_dir))
    try:
        args = ["moi", str(folder), "--endpoint", server.url, "--volume-id", MOI.volume_id, "--concurrency", "4",
                "--batch-files", str(batch_files)]  # fmt: skip
        done = _run_baseline(args, {"MOI_KEY": MOI.api_key})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["done"] == len(list(folder.iterdir()))
        return _stored(server.url), _requests(server.url)
    finally:
        server.stop()


def test_the_moi_baseline_uploads_one_file_per_request_and_follows_the_tasks_until_done(tmp_path: Path) -> None:
    expected = _files(tmp_path / "docs", 12)
    stored, requests = _run_moi_baseline(tmp_path / "docs", tmp_path / "data", batch_files=1)
    assert stored == expected
    assert requests.pop("POST /connectors/upload") == 12
    # Status polls as ingest's MoiTarget.poll sends them (task list pages, each task's files when the list
    # cannot settle it), and nothing else: no volume check, no /task/get.
    assert set(requests) <= {"GET /task/list", "GET /task/files"}
    assert requests


def test_the_moi_baseline_sends_batches_small_files_read_whole_and_larger_ones_streamed(tmp_path: Path) -> None:
    expected = _files(tmp_path / "docs", 11)
    big = tmp_path / "docs" / "big.txt"  # above 64 KiB: its request streams the files (aiohttp's FormData)
    big.write_bytes(b"0123456789abcdef" * 8192)
    expected["big.txt"] = hashlib.md5(big.read_bytes(), usedforsecurity=False).hexdigest()
    stored, requests = _run_moi_baseline(tmp_path / "docs", tmp_path / "data", batch_files=5)
    assert stored == expected
    assert requests.pop("POST /connectors/upload") == 3  # 5 + 5 + 2 files
    assert set(requests) <= {"GET /task/list", "GET /task/files"}
    assert requests


def test_the_keyue_baseline_imports_every_file_and_lists_the_directory_until_all_are_learned(tmp_path: Path) -> None:
    expected = _files(tmp_path / "docs", 12)
    server = ServerProcess(KEYUE.serve_command(tmp_path / "data"))
    try:
        args = ["keyue", str(tmp_path / "docs"), "--endpoint", server.url, "--uid", KEYUE.uid,
                "--username", KEYUE.username, "--concurrency", "4"]  # fmt: skip
        done = _run_baseline(args, {"KEYUE_TOKEN": KEYUE.token})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["done"] == 12
        assert _stored(server.url) == expected
        requests = _requests(server.url)
    finally:
        server.stop()
    assert requests.pop("POST /open/v1/api/v2/task/create/llm_document_import") == 12
    assert set(requests) == {"GET /open/v1/api/v2/llm/document/list"}  # status polls, nothing else


def test_the_viking_baseline_stages_adds_and_polls_every_file_small_and_multipart(tmp_path: Path) -> None:
    expected = _files(tmp_path / "docs", 5, suffix=".pdf")
    big = tmp_path / "docs" / "big.pdf"  # above the 8 MiB part size: s3transfer's multipart upload
    with open(big, "wb") as f:
        for i in range(9):
            f.write(bytes([i]) * (1024 * 1024))
    expected["big.pdf"] = hashlib.md5(big.read_bytes(), usedforsecurity=False).hexdigest()
    server = ServerProcess(VIKING.serve_command(tmp_path / "data"))
    try:
        args = ["viking", str(tmp_path / "docs"), "--endpoint", server.url, "--region", MOTO.region,
                "--collection", VIKING.collection, "--staging-endpoint", MOTO.url(),
                "--staging-bucket", MOTO.bucket, "--prefix", f"baseline-test-{tmp_path.name}/"]  # fmt: skip
        env = {"VOLC_ACCESSKEY": VIKING.access_key, "VOLC_SECRETKEY": VIKING.secret_key}
        done = _run_baseline(args, env)
        assert done.returncode == 0, done.stderr
        assert _stored(server.url) == expected
        requests = _requests(server.url)
    finally:
        server.stop()
    assert requests.pop("POST /api/knowledge/doc/add") == 6
    assert set(requests) == {"POST /api/knowledge/doc/list"}
