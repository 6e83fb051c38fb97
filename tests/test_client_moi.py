"""Every MOI endpoint of the seed document through ``ingest.platforms.moi.client.MoiClient`` against the emulator,
with real S3 buckets (moto) behind the connectors: the happy paths and the error paths."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from pydantic import SecretStr

from ingest.errors import AuthError, PermanentError
from ingest.models import FileItem
from ingest.platforms.moi.client import MoiClient
from ingest.platforms.moi.filetypes import FileType
from ingest.platforms.moi.wire import (
    Connector,
    ConnectorCreate,
    ConnectorQuery,
    ConnectorUpdate,
    DedupConfig,
    DifyConfig,
    FileStatus,
    HdfsConfig,
    IntervalType,
    MoConfig,
    SourceType,
    Task,
    TaskCreate,
    TaskQuery,
    TaskStatus,
    TaskUpdate,
)
from tests.moi_fixtures import KEY, SECRET, VOLUME, Bucket, Moi, bucket, eventually, moi, moto_endpoint, running_moi

pytestmark = pytest.mark.anyio
__all__ = ["bucket", "moi", "moto_endpoint"]  # fixtures, imported for pytest


@pytest.fixture
async def client(moi: Moi) -> AsyncIterator[MoiClient]:
    async with moi.client() as c:
        yield c


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def s3_connector(client: MoiClient, bucket: Bucket, name: str = "src") -> Connector:
    return await client.create_connector(
        ConnectorCreate(name=name, source_type=SourceType.S3, config=bucket.s3_config())
    )


async def wait_status(client: MoiClient, task_id: str, status: int = TaskStatus.FINISHED) -> Task:
    with anyio.fail_after(15):
        while True:  # polling, as clients do: MOI has no push notification
            task = await client.get_task(task_id)
            if task.status == status:
                return task
            await anyio.sleep(0.02)


async def load(client: MoiClient, connector: Connector, uris: list[str], **kwargs: object) -> Task:
    task = await client.create_task(
        TaskCreate(source_connector_id=connector.id, volume_id=VOLUME, uris=uris, **kwargs)  # type: ignore[arg-type]
    )
    assert task is not None
    return task


# ----- connectors ------------------------------------------------------------------------------------------


async def test_create_and_list_a_connector_with_secrets_masked(client: MoiClient, bucket: Bucket) -> None:
    """create returns the listed connector with its id; its secret is a SecretStr that never prints."""
    connector = await s3_connector(client, bucket)
    assert connector.id >= 100001
    assert (connector.name, connector.source_type, connector.status) == ("src", 5, "active")
    assert connector.config["bucket_name"] == bucket.name
    assert connector.config["path_style"] is True
    assert connector.config["access_key_secret"].get_secret_value() == SECRET
    assert SECRET not in repr(connector) + str(connector.model_dump())
    page = await client.list_connectors()
    assert [c.id for c in page.connectors] == [connector.id]
    assert page.total == 1


async def test_duplicate_name_and_missing_config_are_refused(client: MoiClient, bucket: Bucket) -> None:
    """A second connector with the same name is 409; a config lacking a required field is a 400 naming it."""
    await s3_connector(client, bucket)
    with pytest.raises(PermanentError) as dup:
        await s3_connector(client, bucket)
    assert dup.value.status == 409
    assert "already exists" in str(dup.value)
    incomplete = HdfsConfig.model_construct(address="127.0.0.1:8020", username="u", file_path="/data")
    with pytest.raises(PermanentError) as missing:
        await client.create_connector(ConnectorCreate(name="h", source_type=SourceType.HDFS, config=incomplete))
    assert missing.value.status == 400
    assert "hdfs.auth_type is required" in str(missing.value)
    # An OSS block sent for an S3 connector lacks S3's region.
    with pytest.raises(PermanentError, match=r"s3\.region is required"):
        await client.create_connector(ConnectorCreate(name="x", source_type=SourceType.S3, config=bucket.oss_config()))
    assert (await client.list_connectors()).total == 1


async def test_validate_by_config_really_connects(client: MoiClient, bucket: Bucket) -> None:
    """validate is true for a reachable bucket, false with the reason for a missing bucket or a dead port."""
    assert (await client.validate_connector(SourceType.S3, bucket.s3_config())).valid
    assert (await client.validate_connector(SourceType.OSS, bucket.oss_config())).valid
    missing = bucket.s3_config().model_copy(update={"bucket_name": "no-such-bucket"})
    result = await client.validate_connector(SourceType.S3, missing)
    assert not result.valid
    assert "does not exist" in result.reason
    dead = bucket.s3_config(endpoint=f"http://127.0.0.1:{closed_port()}")
    result = await client.validate_connector(SourceType.S3, dead)
    assert not result.valid
    assert "cannot connect" in result.reason
    assert SECRET not in result.reason


async def test_validate_honours_path_style(client: MoiClient, bucket: Bucket) -> None:
    """path_style=false addresses bucket.host (virtual-hosted): on a localhost endpoint that host does not exist."""
    try:
        socket.getaddrinfo(f"{bucket.name}.localhost", 80)
    except OSError:
        pass
    else:
        pytest.skip("this resolver answers for *.localhost, so virtual-hosted style works here too")
    port = bucket.endpoint.rsplit(":", 1)[1]
    local = f"http://localhost:{port}"
    assert (await client.validate_connector(SourceType.S3, bucket.s3_config(endpoint=local))).valid
    virtual = await client.validate_connector(SourceType.S3, bucket.s3_config(endpoint=local, path_style=False))
    assert not virtual.valid
    assert "cannot connect" in virtual.reason


async def test_validate_by_id_and_the_other_source_types(client: MoiClient, moi: Moi, bucket: Bucket) -> None:
    """A stored connector validates by id (status follows); DIFY/HDFS/MO are probed by TCP; unknown id is 404."""
    connector = await s3_connector(client, bucket)
    assert (await client.validate_connector(SourceType.S3, connector_id=connector.id)).valid
    with pytest.raises(PermanentError) as wrong_type:
        await client.validate_connector(SourceType.OSS, connector_id=connector.id)
    assert wrong_type.value.status == 400
    with pytest.raises(PermanentError) as unknown:
        await client.validate_connector(SourceType.S3, connector_id=999)
    assert unknown.value.status == 404
    port = int(moi.url.rsplit(":", 1)[1])  # something listening on loopback: the emulator itself
    dead = closed_port()
    dify = DifyConfig(api_key=SecretStr("k"), api_url=f"http://127.0.0.1:{port}/v1")
    assert (await client.validate_connector(SourceType.DIFY, dify)).valid
    hdfs = HdfsConfig(address=f"127.0.0.1:{dead}", auth_type=1, username="u", file_path="/data")
    result = await client.validate_connector(SourceType.HDFS, hdfs)
    assert not result.valid
    assert f"127.0.0.1:{dead}" in result.reason
    mo = MoConfig(host="127.0.0.1", port=dead, username="u", password=SecretStr("pw"))
    created = await client.create_connector(ConnectorCreate(name="mo", source_type=SourceType.MO, config=mo))
    assert not (await client.validate_connector(SourceType.MO, connector_id=created.id)).valid
    assert (await client.get_connector(created.id)).status == "inactive"


async def test_list_filters_order_and_paging(client: MoiClient, bucket: Bucket) -> None:
    """keyword, source_type(_list), status and paging narrow the list; a bad order_by is a 400."""
    s3 = await s3_connector(client, bucket, "alpha-s3")
    oss = await client.create_connector(
        ConnectorCreate(name="beta-oss", source_type=SourceType.OSS, config=bucket.oss_config(), usage_type=[1])
    )
    assert [c.id for c in (await client.list_connectors(ConnectorQuery(keyword="ALPHA"))).connectors] == [s3.id]
    assert [c.id for c in (await client.list_connectors(ConnectorQuery(source_type=4))).connectors] == [oss.id]
    both = await client.list_connectors(ConnectorQuery(source_type_list=[4, 5], order_by="name", is_desc=True))
    assert [c.name for c in both.connectors] == ["beta-oss", "alpha-s3"]
    assert (await client.list_connectors(ConnectorQuery(status="inactive"))).total == 0
    assert [c.id for c in (await client.list_connectors(ConnectorQuery(usage_type=[1]))).connectors] == [oss.id]
    second = await client.list_connectors(ConnectorQuery(page=2, page_size=1))
    assert (len(second.connectors), second.total) == (1, 2)
    assert [c.id async for c in client.iter_connectors()] == [s3.id, oss.id]
    with pytest.raises(PermanentError, match="order_by"):
        await client.list_connectors(ConnectorQuery(order_by="password"))


async def test_update_and_delete_a_connector(client: MoiClient, bucket: Bucket) -> None:
    """update renames and replaces the config block; delete removes it; unknown ids are 404."""
    connector = await s3_connector(client, bucket)
    new = bucket.s3_config().model_copy(update={"bucket_name": "other"})
    await client.update_connector(
        connector.id, ConnectorUpdate(name="renamed", source_type=SourceType.S3, config=new, usage_type=[2])
    )
    updated = await client.get_connector(connector.id)
    assert (updated.name, updated.config["bucket_name"], updated.usage_type) == ("renamed", "other", [2])
    with pytest.raises(PermanentError, match="oss was given"):
        await client.update_connector(
            connector.id, ConnectorUpdate(source_type=SourceType.OSS, config=bucket.oss_config())
        )
    with pytest.raises(PermanentError) as unknown:
        await client.update_connector(123456, ConnectorUpdate(name="x"))
    assert unknown.value.status == 404
    await client.delete_connector(connector.id)
    assert (await client.list_connectors()).total == 0
    with pytest.raises(PermanentError) as gone:
        await client.delete_connector(connector.id)
    assert gone.value.status == 404


async def test_source_files_with_file_types(client: MoiClient, bucket: Bucket) -> None:
    """files/list lists every object (folders as type 10) and filters by file_types."""
    made = bucket.fill(9)
    bucket.put("docs/folder/", b"")
    connector = await s3_connector(client, bucket)
    files = await client.connector_files(connector.id)
    assert {f.uri for f in files} == {*made, "docs/folder/"}
    folder = next(f for f in files if f.uri == "docs/folder/")
    assert (folder.type, folder.filename) == (FileType.DIR, "folder")
    pdfs = await client.connector_files(connector.id, [FileType.PDF])
    assert {f.uri for f in pdfs} == {k for k in made if k.endswith(".pdf")}
    assert all(f.size > 0 and f.filename == f.uri.rsplit("/", 1)[1] for f in pdfs)
    with pytest.raises(PermanentError) as unknown:
        await client.connector_files(999)
    assert unknown.value.status == 404
    hdfs = HdfsConfig(address="127.0.0.1:8020", auth_type=1, username="u", file_path="/")
    other = await client.create_connector(ConnectorCreate(name="h", source_type=SourceType.HDFS, config=hdfs))
    with pytest.raises(PermanentError, match="only from OSS and S3"):
        await client.connector_files(other.id)


async def test_summary_counts_connectors_and_tasks(client: MoiClient, bucket: Bucket) -> None:
    """summary counts connectors per type and status and their load tasks."""
    key = next(iter(bucket.fill(1)))
    connector = await s3_connector(client, bucket)
    await client.create_connector(ConnectorCreate(name="o", source_type=SourceType.OSS, config=bucket.oss_config()))
    await load(client, connector, [key])
    summary = (await client.connector_summary()).model_dump()
    assert summary["total"] == 2
    assert summary["source_types"] == [
        {"source_type": 4, "name": "OSS", "count": 1},
        {"source_type": 5, "name": "S3", "count": 1},
    ]
    assert summary["statuses"] == [{"status": "active", "count": 2}]
    assert summary["related_task_total"] == 1


async def test_upload_local_files_with_dedup(client: MoiClient, moi: Moi, tmp_path: Path) -> None:
    """upload_files streams local files into the volume; the same files again with dedup are skipped."""
    paths = []
    for name in ("a.txt", "b.md"):
        (tmp_path / name).write_text(f"content of {name}")
        st = (tmp_path / name).stat()
        paths.append(FileItem(name, tmp_path / name, st.st_size, st.st_mtime_ns))
    reply = await client.upload_files(VOLUME, paths)
    assert reply.result.task_id
    assert [r.success for r in reply.result.results] == [True, True]
    again = await client.upload_files(VOLUME, paths, dedup=DedupConfig())
    assert all(r.message.startswith("skipped") for r in again.result.results)
    stored = await moi.stored()
    assert {p: f["uploads"] for p, f in stored.items()} == {"a.txt": 1, "b.md": 1}
    assert reply.md5s[0] == stored["a.txt"]["md5"]


# ----- load tasks ------------------------------------------------------------------------------------------


async def test_create_get_list_and_files_of_a_load_task(client: MoiClient, moi: Moi, bucket: Bucket) -> None:
    """A load task copies its uris into the volume; get, list, files and related_task_ids reflect it."""
    made = bucket.fill(5)
    connector = await s3_connector(client, bucket)
    task = await load(client, connector, sorted(made))
    assert (task.source_connector_id, task.source_connector_type, task.volume_id) == (connector.id, 5, VOLUME)
    assert task.interval_type == IntervalType.ONCE
    finished = await wait_status(client, task.id)
    assert finished.end_at >= finished.start_at > 0
    files = await client.task_files(task.id)
    assert (files.total, files.total_success, files.total_failed) == (5, 5, 0)
    assert {f.name for f in files.files} == set(made)
    assert all(f.status == FileStatus.SUCCESS and f.path == f"/{VOLUME}/{f.name}" for f in files.files)
    stored = await moi.stored()
    assert {k: stored[k]["md5"] for k in made} == made
    listed = await client.list_tasks(TaskQuery(load_interval_types=[4], status=4))
    assert [t.id for t in listed.tasks] == [task.id]
    assert (await client.list_tasks(TaskQuery(load_interval_types=[1, 2]))).total == 0
    assert (await client.get_connector(connector.id)).related_task_ids == [task.id]
    assert [t.id async for t in client.find_tasks(connector.id, VOLUME)] == [task.id]
    only_success = await client.task_files(task.id, status=FileStatus.SUCCESS, page=2, page_size=2)
    assert (only_success.total, len(only_success.files)) == (5, 2)


async def test_failed_files_are_retried(client: MoiClient, moi: Moi, bucket: Bucket) -> None:
    """A missing object fails with a reason; once it exists, /task/retry loads it."""
    connector = await s3_connector(client, bucket)
    task = await load(client, connector, ["later.txt"])
    await wait_status(client, task.id)
    [failed] = (await client.task_files(task.id)).files
    assert failed.status == FileStatus.FAILED
    assert "not found" in failed.reason
    bucket.put("later.txt", b"here now")
    await client.retry_task(task.id, [failed.id])
    await wait_status(client, task.id)
    [done] = (await client.task_files(task.id)).files
    assert (done.status, done.reason) == (FileStatus.SUCCESS, "")
    assert "later.txt" in await moi.stored()
    with pytest.raises(PermanentError) as outside:
        await client.retry_task(task.id, ["1"])
    assert outside.value.status == 400


async def test_pause_resume_and_delete(tmp_path: Path, bucket: Bucket) -> None:
    """pause freezes waiting files (3) and the task (2 then 3); resume finishes it; delete forgets it."""
    made = bucket.fill(6)
    async with running_moi(tmp_path / "moi", task_delay_ms=100, load_concurrency=1) as emulator:
        async with emulator.client() as client:
            connector = await s3_connector(client, bucket)
            task = await load(client, connector, sorted(made))
            await client.pause_task(task.id)
            assert (await client.get_task(task.id)).status in (TaskStatus.PAUSING, TaskStatus.PAUSED)
            paused = await wait_status(client, task.id, TaskStatus.PAUSED)
            statuses = [f.status for f in (await client.task_files(task.id)).files]
            assert FileStatus.PAUSED in statuses
            assert set(statuses) <= {FileStatus.PAUSED, FileStatus.SUCCESS}
            assert paused.status == TaskStatus.PAUSED
            await client.resume_task(task.id)
            await wait_status(client, task.id)
            assert set(await emulator.stored()) == set(made)
            await client.delete_task(task.id)
            with pytest.raises(PermanentError) as gone:
                await client.get_task(task.id)
            assert gone.value.status == 404
            with pytest.raises(PermanentError):
                await client.task_files(task.id)
            with pytest.raises(PermanentError):
                await client.delete_task(task.id)
            assert (await client.get_connector(connector.id)).related_task_ids == []
            await client.delete_connector(connector.id)


async def test_update_task_uris_and_schedule(client: MoiClient, moi: Moi, bucket: Bucket) -> None:
    """update adds uris to a finished task (it runs again) and turns it periodic; upload tasks cannot be updated."""
    made = sorted(bucket.fill(3))
    connector = await s3_connector(client, bucket)
    task = await load(client, connector, made[:1])
    await wait_status(client, task.id)
    await client.update_task(TaskUpdate(task_id=task.id, uris=made))
    await wait_status(client, task.id)
    assert set(await moi.stored()) == set(made)
    await client.update_task(TaskUpdate(task_id=task.id, load_interval_type=IntervalType.DAY, interval=2))
    periodic = await client.get_task(task.id)
    assert (periodic.interval_type, periodic.status) == (IntervalType.DAY, TaskStatus.RUNNING)
    with pytest.raises(PermanentError) as unknown:
        await client.update_task(TaskUpdate(task_id="42", uris=["x"]))
    assert unknown.value.status == 404


async def test_periodic_task_reloads_only_changed_objects(tmp_path: Path, bucket: Bucket) -> None:
    """A minutely task (clock sped up) runs again: a changed object is copied again, an unchanged one is not."""
    bucket.put("a.txt", b"first")
    bucket.put("b.txt", b"stays")
    async with running_moi(tmp_path / "moi", clock_speed=600) as emulator, emulator.client() as client:
        connector = await s3_connector(client, bucket)
        task = await load(client, connector, ["a.txt", "b.txt"], load_interval_type=IntervalType.MINUTE)
        await eventually(lambda: has_files(emulator, 2))
        new_md5 = bucket.put("a.txt", b"second version")
        await eventually(lambda: has_md5(emulator, "a.txt", new_md5))
        await anyio.sleep(0.3)  # a few more runs
        stored = await emulator.stored()
        assert stored["a.txt"]["uploads"] == 2
        assert stored["b.txt"]["uploads"] == 1
        assert (await client.get_task(task.id)).status == TaskStatus.RUNNING  # runnable between runs


async def has_files(emulator: Moi, count: int) -> bool:
    return len(await emulator.stored()) >= count


async def has_md5(emulator: Moi, path: str, md5: str) -> bool:
    return (await emulator.stored()).get(path, {}).get("md5") == md5


async def test_task_errors_unknown_connector_volume_and_task(client: MoiClient, bucket: Bucket) -> None:
    """Creating into an unknown volume or from an unknown connector is 404; an unknown task is 404 to get."""
    connector = await s3_connector(client, bucket)
    with pytest.raises(PermanentError) as volume:
        await client.create_task(TaskCreate(source_connector_id=connector.id, volume_id="999", uris=["a"]))
    assert volume.value.status == 404
    with pytest.raises(PermanentError) as conn:
        await client.create_task(TaskCreate(source_connector_id=5, volume_id=VOLUME, uris=["a"]))
    assert conn.value.status == 404
    with pytest.raises(PermanentError) as task:
        await client.get_task("12345")
    assert task.value.status == 404
    for call in (client.pause_task, client.resume_task):
        with pytest.raises(PermanentError):
            await call("12345")


async def test_connector_with_running_task_cannot_be_deleted(tmp_path: Path, bucket: Bucket) -> None:
    """delete answers 409 while one of the connector's tasks runs, and succeeds once it finished."""
    made = bucket.fill(3)
    async with running_moi(tmp_path / "moi", task_delay_ms=200, load_concurrency=1) as emulator:
        async with emulator.client() as client:
            connector = await s3_connector(client, bucket)
            task = await load(client, connector, sorted(made))
            with pytest.raises(PermanentError) as busy:
                await client.delete_connector(connector.id)
            assert busy.value.status == 409
            await wait_status(client, task.id)
            await client.delete_connector(connector.id)


# ----- volumes and auth ------------------------------------------------------------------------------------


async def test_volumes_and_wrong_key(client: MoiClient, moi: Moi) -> None:
    """create_volume/volume_info round-trip; an unknown volume is 404; a wrong key is an AuthError."""
    volume_id = await client.create_volume("docs", database_id=1, description="d")
    info = await client.volume_info(volume_id)
    assert (info.id, info.name, info.description) == (volume_id, "docs", "d")
    with pytest.raises(PermanentError) as unknown:
        await client.volume_info("nope")
    assert unknown.value.status == 404
    async with moi.client("wrong-key") as wrong:
        with pytest.raises(AuthError) as denied:
            await wrong.list_connectors()
    assert "wrong-key" not in str(denied.value)
    assert KEY not in str(denied.value)
