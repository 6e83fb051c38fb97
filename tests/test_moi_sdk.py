"""The official MOI Python SDK (``moi-python-sdk`` on PyPI, imported as ``moi``) against our emulator.

The SDK is synchronous (requests), so each call runs in a worker thread while the emulator serves on
the event loop. Where the SDK and the seed document differ (``meta`` as ``{filename, path}``, the dedup
config, ``get_task`` read flat by the SDK's docs), the emulator accepts both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import moi as moi_sdk  # the official SDK: pip install moi-python-sdk
import pytest

from tests.moi_fixtures import KEY, VOLUME, Moi, moi

pytestmark = pytest.mark.anyio
__all__ = ["moi"]  # fixture, imported for pytest
T = TypeVar("T")


async def in_thread(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))


async def finished(raw: Any, task_id: str) -> dict[str, Any]:
    with anyio.fail_after(10):
        while True:  # the SDK has no wait helper: poll get_task as its users do
            data = await in_thread(raw.get_task, {"task_id": task_id})
            task = data["task"]
            if task["status"] == 4:
                return task  # type: ignore[no-any-return]
            await anyio.sleep(0.02)


def make_files(root: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = root / f"report-{i}.md"
        path.write_text(f"# report {i}\n" * (i + 1))
        paths.append(path)
    return paths


async def test_sdk_client_imports_local_files_with_dedup(moi: Moi, tmp_path: Path) -> None:
    """SDKClient.import_local_files_to_volume with a skip-by-name-and-md5 dedup config, then get_task:
    the task finishes, every file is in the volume, and importing again stores nothing twice."""
    raw = moi_sdk.RawClient(moi.url, KEY)
    sdk = moi_sdk.SDKClient(raw)
    paths = make_files(tmp_path, 3)
    metas = [{"filename": f"sdk/{p.name}", "path": p.name} for p in paths]
    dedup = moi_sdk.new_dedup_config_skip_by_name_and_md5()
    reply = await in_thread(sdk.import_local_files_to_volume, [str(p) for p in paths], VOLUME, metas, dedup)
    assert reply["success"] is True
    task = await finished(raw, reply["task_id"])
    assert task["volume_id"] == VOLUME
    stored = await moi.stored()
    assert {p: f["uploads"] for p, f in stored.items()} == {m["filename"]: 1 for m in metas}
    again = await in_thread(sdk.import_local_files_to_volume, [str(p) for p in paths], VOLUME, metas, dedup)
    assert all(r["message"].startswith("skipped") for r in again["results"])
    assert {f["uploads"] for f in (await moi.stored()).values()} == {1}


async def test_raw_client_upload_connector_file_and_get_task(moi: Moi, tmp_path: Path) -> None:
    """RawClient.upload_connector_file (SDK meta form, dedup dict) creates a task get_task follows to the end."""
    raw = moi_sdk.RawClient(moi.url, KEY)
    [path] = make_files(tmp_path, 1)
    reply = await in_thread(raw_upload, raw, path)
    assert reply["results"][0]["success"] is True
    task = await finished(raw, reply["task_id"])
    assert task["source_config"]["common_file_task_config"]["uris"] == [path.name]
    stored = await moi.stored()
    assert stored[path.name]["size"] == path.stat().st_size
    single = await in_thread(sdk_single_file, raw, path)
    assert single["results"][0]["message"].startswith("skipped")


def raw_upload(raw: Any, path: Path) -> Any:
    with open(path, "rb") as handle:
        return raw.upload_connector_file(
            VOLUME,
            file_items=[(handle, path.name)],
            meta=[{"filename": path.name, "path": path.name}],
            dedup_config={"by": ["name", "md5"], "strategy": "skip"},
        )


def sdk_single_file(raw: Any, path: Path) -> Any:
    """SDKClient.import_local_file_to_volume, the one-file helper, with a DedupConfig object."""
    sdk = moi_sdk.SDKClient(raw)
    dedup = moi_sdk.new_dedup_config([moi_sdk.DedupBy.NAME, moi_sdk.DedupBy.MD5], moi_sdk.DedupStrategy.SKIP)
    return sdk.import_local_file_to_volume(str(path), VOLUME, {"filename": path.name, "path": path.name}, dedup)


async def test_sdk_volume_calls_and_errors(moi: Moi) -> None:
    """create_volume/get_volume work through the SDK; a wrong key and an unknown task raise the SDK's errors."""
    raw = moi_sdk.RawClient(moi.url, KEY)
    created = await in_thread(raw.create_volume, {"database_id": 7, "name": "from-sdk", "description": "x"})
    info = await in_thread(raw.get_volume, {"id": created["id"]})
    assert (info["id"], info["name"]) == (created["id"], "from-sdk")
    wrong = moi_sdk.RawClient(moi.url, "not-the-key")
    with pytest.raises(moi_sdk.HTTPError) as denied:
        await in_thread(wrong.get_volume, {"id": created["id"]})
    assert denied.value.status_code == 401
    with pytest.raises(moi_sdk.APIError) as unknown:
        await in_thread(raw.get_task, {"task_id": "12345"})
    assert unknown.value.code == "ErrServer"
