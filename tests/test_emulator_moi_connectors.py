"""The MOI emulator's connectors and load tasks over raw HTTP: the seed's own examples, strict validation
with the documented envelopes, persistence across restarts, streaming of large objects."""

from __future__ import annotations

import argparse
import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ingest.emulators import emulator_specs
from tests.moi_fixtures import KEY, SECRET, VOLUME, Bucket, Moi, bucket, eventually, moi, moto_endpoint, running_moi

pytestmark = pytest.mark.anyio
__all__ = ["bucket", "moi", "moto_endpoint"]  # fixtures, imported for pytest


@pytest.fixture
async def http(moi: Moi) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=moi.url, headers={"moi-key": KEY}) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with http.request(method, path, **kwargs) as response:
        return response.status, await response.json()


async def make_connector(http: aiohttp.ClientSession, bucket: Bucket, name: str = "src") -> int:
    status, body = await call(
        http, "POST", "/connectors", json={"name": name, "source_type": 5, "s3": bucket.s3_block()}
    )
    assert (status, body["code"]) == (200, "OK"), body
    _, listed = await call(http, "GET", "/connectors/list", params={"keyword": name})
    return int(listed["data"]["connectors"][0]["id"])


def seed_task_body(connector_id: int, uris: list[str], **mode: Any) -> dict[str, Any]:
    """The body of the seed's POST /task example."""
    return {
        "source_connector_id": connector_id,
        "volume_id": VOLUME,
        "source_config": {
            "common_file_task_config": {"load_mode_config": {"load_interval_type": 4, **mode}, "uris": uris}
        },
        "config_type": 1,
    }


async def test_the_seed_examples_work_verbatim(http: aiohttp.ClientSession, moi: Moi, bucket: Bucket) -> None:
    """The seed's create, list, task, files and delete examples get the documented answers."""
    made = bucket.fill(2)
    status, body = await call(http, "POST", "/connectors", json={"name": "oss-test2", "source_type": 4,
                              "oss": {"endpoint": "xxxx", "access_key_id": "xxxx", "access_key_secret": "xxxx",
                                      "bucket_name": "xxxx"}})  # fmt: skip
    assert (status, body["code"], body["msg"], body["data"]) == (200, "OK", "OK", None)
    params = {"is_desc": "false", "keyword": "oss", "order_by": "", "page": "1", "page_size": "10"}
    _, listed = await call(http, "GET", "/connectors/list", params=params)
    [oss] = listed["data"]["connectors"]
    assert set(oss) == {"id", "source_type", "name", "status", "created_at", "updated_at", "username",
                        "related_task_ids", "usage_type", "oss"}  # fmt: skip
    assert (oss["source_type"], oss["status"], oss["username"], listed["data"]["total"]) == (4, "active", "admin", 1)
    connector = await make_connector(http, bucket)
    status, created = await call(http, "POST", "/task", json=seed_task_body(connector, sorted(made)))
    assert (status, created["code"], created["data"]) == (200, "OK", None)  # the seed returns no task id
    _, tasks = await call(http, "GET", "/task/list")
    task_id = tasks["data"]["tasks"][0]["id"]
    assert isinstance(task_id, str)
    await eventually(lambda: task_finished(http, task_id))
    _, files = await call(http, "GET", "/task/files", params={"task_id": int(task_id)})
    assert set(files["data"]) == {"total", "total_success", "total_failed", "files"}
    assert set(files["data"]["files"][0]) == {"id", "name", "type", "status", "size", "update_time", "other_metadata",
                                              "reason", "user", "start_time", "end_time", "path"}  # fmt: skip
    _, listed = await call(http, "GET", "/connectors/list", params={"keyword": "src"})
    assert listed["data"]["connectors"][0]["related_task_ids"] == [int(task_id)]  # numbers, as in the seed
    status, deleted = await call(http, "POST", "/task/delete/", json={"task_id": task_id})  # the seed's URL
    assert (status, deleted["code"]) == (200, "OK")
    status, gone = await call(http, "GET", "/task/get", params={"task_id": task_id})
    assert (status, gone["code"]) == (200, "ErrServer")


async def task_finished(http: aiohttp.ClientSession, task_id: str) -> bool:
    _, body = await call(http, "GET", "/task/get", params={"task_id": task_id})
    return bool(body["data"]["task"]["status"] == 4)


def s3(**changes: Any) -> dict[str, Any]:
    block = {"endpoint": "http://127.0.0.1:1", "access_key_id": "a", "access_key_secret": SECRET,
             "bucket_name": "b", "region": "r", "path_style": True}  # fmt: skip
    block.update(changes)
    return {k: v for k, v in block.items() if v is not None}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"source_type": 5, "s3": s3()}, "name is required"),
        ({"name": "x", "s3": s3()}, "source_type is required"),
        ({"name": "x", "source_type": 6, "s3": s3()}, "source_type must be 1 (DIFY)"),
        ({"name": "x", "source_type": "5", "s3": s3()}, "source_type must be 1 (DIFY)"),
        ({"name": "x", "source_type": 5}, "s3 is required when source_type is 5"),
        ({"name": "x", "source_type": 5, "s3": s3(region=None)}, "s3.region is required"),
        ({"name": "x", "source_type": 5, "s3": s3(colour="red")}, "s3 has unknown field 'colour'"),
        ({"name": "x", "source_type": 5, "s3": s3(path_style="yes")}, "s3.path_style must be true or false"),
        ({"name": "x", "source_type": 5, "s3": s3(), "oss": s3()}, "oss was given but the connector is S3"),
        ({"name": "x", "source_type": 5, "s3": s3(), "extra": 1}, "unknown field 'extra'"),
        ({"name": "x", "source_type": 3, "mo": {"host": "h", "port": 70000, "username": "u", "password": "p"}},
         "mo.port must be a port number"),
        ({"name": "x", "source_type": 2, "hdfs": {"address": "nohost", "auth_type": 1, "username": "u",
                                                  "file_path": "/"}}, "hdfs.address must be host:port"),
        ({"name": "x", "source_type": 1, "dify": {"api_key": "k", "api_url": "ftp://x"}}, "dify.api_url must be"),
        ({"name": "x", "source_type": 5, "s3": s3(), "usage_type": "a"}, "usage_type must be an array"),
    ],
)  # fmt: skip
async def test_connector_bodies_are_validated_strictly(
    http: aiohttp.ClientSession, body: dict[str, Any], expected: str
) -> None:
    """Each invalid create body is a 400 ErrParamInvalid naming the field, never echoing a secret."""
    status, answer = await call(http, "POST", "/connectors", json=body)
    assert (status, answer["code"]) == (400, "ErrParamInvalid")
    assert expected in answer["msg"]
    assert SECRET not in answer["msg"]
    _, listed = await call(http, "GET", "/connectors/list")
    assert listed["data"]["total"] == 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda b: b.pop("source_config"), "source_config is required"),
        (lambda b: b.pop("source_connector_id"), "source_connector_id is required"),
        (lambda b: b.update(config_type=2), "config_type must be 1"),
        (lambda b: b["source_config"]["common_file_task_config"]["load_mode_config"].update(load_interval_type=0),
         "load_interval_type must be 1 (day)"),
        (lambda b: b["source_config"]["common_file_task_config"]["load_mode_config"].update(interval=-1),
         "interval must be an integer"),
        (lambda b: b["source_config"]["common_file_task_config"].update(uris=[]), "uris is required"),
        (lambda b: b["source_config"]["common_file_task_config"].update(uris=["a", "a"]), "repeats 'a'"),
        (lambda b: b["source_config"]["common_file_task_config"].update(path="x"), "unknown field 'path'"),
        (lambda b: b.update(volume_id=""), "volume_id is required"),
    ],
)  # fmt: skip
async def test_task_bodies_are_validated_strictly(
    http: aiohttp.ClientSession, bucket: Bucket, change: Any, expected: str
) -> None:
    """Each invalid POST /task body is a 400 naming the field; nothing is created."""
    connector = await make_connector(http, bucket)
    body = seed_task_body(connector, ["a"])
    change(body)
    status, answer = await call(http, "POST", "/task", json=body)
    assert (status, answer["code"]) == (400, "ErrParamInvalid")
    assert expected in answer["msg"]
    _, tasks = await call(http, "GET", "/task/list")
    assert tasks["data"]["total"] == 0


async def test_routes_answer_in_the_envelope(http: aiohttp.ClientSession, moi: Moi, bucket: Bucket) -> None:
    """A wrong key is 401, a non-numeric connector path 404, a missing connector_id 400, all enveloped."""
    async with aiohttp.ClientSession(base_url=moi.url, headers={"moi-key": "nope"}) as wrong:
        status, body = await call(wrong, "GET", "/connectors/list")
    assert (status, body["code"]) == (401, "ErrUnauthorized")
    status, body = await call(http, "PUT", "/connectors/abc", json={"name": "x"})
    assert (status, body["code"]) == (404, "ErrNotFound")
    status, body = await call(http, "GET", "/connectors/files/list")
    assert (status, body["msg"]) == (400, "query parameter connector_id is required")
    status, body = await call(http, "PUT", "/connectors/100001", json={})
    assert status == 400
    connector = await make_connector(http, bucket)
    status, body = await call(http, "POST", "/connectors/validate", json={"connector_id": connector})
    assert (status, body["msg"]) == (400, "source_type is required: 1 (DIFY), 2 (HDFS), 3 (MO), 4 (OSS) or 5 (S3)")
    status, body = await call(http, "GET", "/connectors/files/list", params={"connector_id": connector,
                                                                              "file_types": "99"})  # fmt: skip
    assert status == 400


async def test_upload_with_the_seeds_data_field(http: aiohttp.ClientSession, moi: Moi) -> None:
    """The seed's first upload example sends a "data" part without meta: it is stored under its file name."""
    form = aiohttp.FormData()
    form.add_field("VolumeID", VOLUME)
    form.add_field("data", io.BytesIO(b"hello"), filename="example.txt")
    status, body = await call(http, "POST", "/connectors/upload", data=form)
    assert (status, body["code"]) == (200, "OK"), body
    assert (await moi.stored())["example.txt"]["md5"] == hashlib.md5(b"hello").hexdigest()


async def test_connectors_and_load_tasks_survive_a_restart(bucket: Bucket, tmp_path: Path) -> None:
    """Stopped while a load task is mid-way, a new emulator on the same data dir still knows the connector
    and finishes the task: every file stored exactly once."""
    made = bucket.fill(8)
    data_dir = tmp_path / "moi"
    async with running_moi(data_dir, task_delay_ms=100, load_concurrency=2) as first:
        async with aiohttp.ClientSession(base_url=first.url, headers={"moi-key": KEY}) as http:
            connector = await make_connector(http, bucket)
            await call(http, "POST", "/task", json=seed_task_body(connector, sorted(made)))
            await eventually(lambda: stored_some(first))
    async with running_moi(data_dir, task_delay_ms=0) as second:
        async with aiohttp.ClientSession(base_url=second.url, headers={"moi-key": KEY}) as http:
            _, tasks = await call(http, "GET", "/task/list")
            task_id = tasks["data"]["tasks"][0]["id"]
            await eventually(lambda: task_finished(http, task_id))
            _, listed = await call(http, "GET", "/connectors/list")
            assert [c["id"] for c in listed["data"]["connectors"]] == [connector]
        stored = await second.stored()
        assert {k: (v["md5"], v["uploads"]) for k, v in stored.items()} == {k: (m, 1) for k, m in made.items()}


async def stored_some(emulator: Moi) -> bool:
    return len(await emulator.stored()) >= 1


async def test_a_large_object_is_copied_intact(http: aiohttp.ClientSession, moi: Moi, bucket: Bucket) -> None:
    """A multi-megabyte object is streamed chunk by chunk into the volume with the same bytes."""
    data = hashlib.sha256(b"seed").digest() * (5 * 1024 * 1024 // 32 + 7)
    md5 = bucket.put("big/blob.bin", data)
    connector = await make_connector(http, bucket)
    await call(http, "POST", "/task", json=seed_task_body(connector, ["big/blob.bin"]))
    await eventually(lambda: stored_some(moi))
    stored = (await moi.stored())["big/blob.bin"]
    assert (stored["size"], stored["md5"]) == (len(data), md5)
    assert not list((moi.data_dir / ".staging").iterdir())  # nothing left behind in staging


def test_serve_flags_for_the_schedule_clock() -> None:
    """`ingest serve moi` takes --clock-speed and --load-concurrency, and refuses nonsense."""
    spec = emulator_specs()["moi"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    spec.add_arguments(parser)
    args = parser.parse_args(["--data-dir", "d", "--api-key", "k", "--clock-speed", "60", "--load-concurrency", "2"])
    assert (args.clock_speed, args.load_concurrency) == (60.0, 2)
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser.parse_args(["--data-dir", "d", "--api-key", "k", "--clock-speed", "0"])
