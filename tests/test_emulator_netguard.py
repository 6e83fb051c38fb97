"""Item 2 of issue 13: an emulator connects out only to this machine unless ``--allow-remote-sources``.

The checks run inside a private network namespace (``unshare -n``, loopback up): even while the code is
wrong, no packet can leave the machine. Without ``unshare`` (or the right to use it) the test is skipped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[1]
FLAG = "--allow-remote-sources"
#: Hosts that are not this machine: private, link-local, public, a name (never resolved), a mapped v4.
REMOTE_HOSTS = ("10.1.2.3", "192.168.1.1", "169.254.169.254", "8.8.8.8", "example.com", "[2001:db8::1]")


def _namespace_problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    try:
        done = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -n failed: {exc}"
    if done.returncode != 0:
        return f"unshare -n is not permitted here: {done.stderr.decode(errors='replace').strip()}"
    return None


def test_moi_connectors_connect_only_to_this_machine() -> None:
    """validate, files/list and load tasks refuse other hosts with the reason; loopback still works."""
    problem = _namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    code = f"import asyncio, {__name__} as t; asyncio.run(t.inside_namespace())"
    command = f"ip link set lo up && exec {sys.executable} -c '{code}'"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ALL CHECKS PASSED" in done.stdout


async def _call(http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    async with http.request(method, path, **kwargs) as response:
        body: dict[str, Any] = await response.json()
        body["_status"] = response.status
        return body


def _blocks(host: str, port: int) -> list[dict[str, Any]]:
    """A validate body per source type, each naming ``host:port``."""
    bucket = {"access_key_id": "a", "access_key_secret": "s", "bucket_name": "b"}
    return [
        {"source_type": 1, "dify": {"api_key": "k", "api_url": f"http://{host}:{port}/v1"}},
        {"source_type": 2, "hdfs": {"address": f"{host}:{port}", "auth_type": 1, "username": "u", "file_path": "/"}},
        {"source_type": 3, "mo": {"host": host.strip("[]"), "port": port, "username": "u", "password": "p"}},
        {"source_type": 4, "oss": {"endpoint": f"http://{host}:{port}", **bucket}},
        {"source_type": 5, "s3": {"endpoint": f"http://{host}:{port}", "region": "r", "path_style": True, **bucket}},
    ]


async def inside_namespace() -> None:
    """The test body, run in the private network namespace."""
    from ingest.emulators.kit.server import serve_in_background
    from ingest.emulators.moi import MoiEmulatorConfig, create_moi_app

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(echo, "127.0.0.1", 0)
    local_port = listener.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        for allow in (False, True):
            config = MoiEmulatorConfig(
                data_dir=Path(tmp) / str(allow), api_key="k", volumes=("1001",), allow_remote_sources=allow
            )
            async with (
                serve_in_background(create_moi_app(config)) as url,
                aiohttp.ClientSession(base_url=url, headers={"moi-key": "k"}) as http,
            ):
                for host in REMOTE_HOSTS:
                    for body in _blocks(host, 9):
                        answer = await _call(http, "POST", "/connectors/validate", json=body)
                        assert answer["code"] == "OK", answer
                        valid, reason = answer["data"]["valid"], answer["data"].get("reason", "")
                        assert valid is False, (host, body, answer)
                        # Refused by the guard (naming the flag), or, when allowed, really tried and failed.
                        assert (FLAG in reason) is (not allow), (host, body["source_type"], reason)
                # This machine is always allowed: a listening loopback port validates.
                for host in ("127.0.0.1", "localhost"):
                    answer = await _call(http, "POST", "/connectors/validate", json=_blocks(host, local_port)[1])
                    assert answer["data"] == {"valid": True}, answer
                if allow:
                    continue
                s3 = _blocks("10.1.2.3", 9)[4]
                made = await _call(http, "POST", "/connectors", json={"name": "far", **s3})
                assert made["code"] == "OK", made
                listed = await _call(http, "GET", "/connectors/list")
                cid = listed["data"]["connectors"][0]["id"]
                files = await _call(http, "GET", "/connectors/files/list", params={"connector_id": cid})
                assert (files["_status"], FLAG in files["msg"]) == (400, True), files
                task = {
                    "source_connector_id": cid,
                    "volume_id": "1001",
                    "source_config": {
                        "common_file_task_config": {"load_mode_config": {"load_interval_type": 4}, "uris": ["a.txt"]}
                    },
                    "config_type": 1,
                }
                assert (await _call(http, "POST", "/task", json=task))["code"] == "OK"
                tasks = await _call(http, "GET", "/task/list")
                task_id = tasks["data"]["tasks"][0]["id"]
                for _ in range(200):
                    listing = await _call(http, "GET", "/task/files", params={"task_id": task_id})
                    reasons = [f["reason"] for f in listing["data"]["files"] if f["reason"]]
                    if reasons:
                        break
                    await asyncio.sleep(0.05)
                assert reasons, listing
                assert FLAG in reasons[0], listing
    listener.close()
    print("ALL CHECKS PASSED")
