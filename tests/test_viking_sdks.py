"""Proof that the VikingDB emulator speaks the real protocol: the official SDKs (``vikingdb-python-sdk``
and ``volcengine``'s ``VikingKnowledgeBaseService``) add and read documents through it, and fail with
their own unauthorized exception when the secret key is wrong. The SDKs are synchronous: each call runs
in a worker thread while the emulator serves on this test's event loop."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from ingest.emulators.kit.server import serve_in_background
from ingest.emulators.viking import VikingEmulatorConfig, create_viking_app
from tests.harness import MOTO

pytestmark = pytest.mark.anyio

T = TypeVar("T")
AK, SK = "AKLTsdktest", "sdk-secret"
KB = "kb_sdk"
BODY = "飞流直下三千尺\n".encode() * 20

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the SDKs warn about their own pydantic models on import
    vikingdb = pytest.importorskip("vikingdb", reason="test dependency: pip install vikingdb-python-sdk")
    pytest.importorskip("volcengine", reason="test dependency: pip install volcengine")
    from vikingdb import IAM
    from vikingdb.knowledge import VikingKnowledge
    from vikingdb.knowledge.exceptions import UnauthorizedException as VikingUnauthorized
    from volcengine.viking_knowledgebase import VikingKnowledgeBaseService
    from volcengine.viking_knowledgebase.Collection import Collection as VolcCollection
    from volcengine.viking_knowledgebase.exception import UnauthorizedException as VolcUnauthorized


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[str]:
    """The emulator on a free loopback port; yields ``host:port`` (the SDKs take a host, not a URL)."""
    config = VikingEmulatorConfig(
        data_dir=tmp_path / "vk", access_key=AK, secret_key=SK, collections=(KB,), tos_endpoint=MOTO.url(),
        process_delay_ms=0,
    )  # fmt: skip
    async with serve_in_background(create_viking_app(config)) as url:
        yield url.removeprefix("http://")


async def staged_url() -> str:
    """A presigned loopback URL of a fresh object in the moto bucket (what add_type url downloads)."""
    import boto3

    def put() -> str:
        s3 = boto3.client(
            "s3", endpoint_url=MOTO.url(), region_name=MOTO.region, aws_access_key_id="x", aws_secret_access_key="x"
        )
        key = f"sdk-{uuid.uuid4().hex}/poem.txt"
        s3.put_object(Bucket=MOTO.bucket, Key=key, Body=BODY)
        url: str = s3.generate_presigned_url("get_object", Params={"Bucket": MOTO.bucket, "Key": key})
        return url

    return await anyio.to_thread.run_sync(put)


async def in_thread(call: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(call)


def add_request(url: str, doc_id: str) -> dict[str, Any]:
    return {"add_type": "url", "doc_id": doc_id, "doc_name": "poem.txt", "doc_type": "txt", "url": url}


async def test_vikingdb_sdk_adds_and_reads_a_document(emulator: str) -> None:
    """VikingKnowledge(...).collection(...).add_doc then get_doc succeed; the document ends done."""
    client = VikingKnowledge(host=emulator, region="cn-beijing", auth=IAM(ak=AK, sk=SK), scheme="http")
    collection = client.collection(collection_name=KB, project_name="default")
    url = await staged_url()
    with pytest.warns(DeprecationWarning, match="add_doc"):
        added = await in_thread(lambda: collection.add_doc(add_request(url, "sdk_doc")))
    assert (added.code, added.result.doc_id) == (0, "sdk_doc")
    doc = await in_thread(lambda: collection.get_doc("sdk_doc"))
    assert (doc.doc_id, doc.doc_name, doc.doc_size, doc.status.process_status) == ("sdk_doc", "poem.txt", len(BODY), 0)
    listed = await in_thread(lambda: collection.list_docs({"offset": 0, "limit": 10}))
    assert [d.doc_id for d in listed.result.doc_list] == ["sdk_doc"]


async def test_vikingdb_sdk_with_a_wrong_secret_is_unauthorized(emulator: str) -> None:
    """The same calls signed with a wrong secret key raise the SDK's UnauthorizedException (1000001)."""
    client = VikingKnowledge(host=emulator, region="cn-beijing", auth=IAM(ak=AK, sk="wrong"), scheme="http")
    collection = client.collection(collection_name=KB, project_name="default")
    url = await staged_url()
    with pytest.raises(VikingUnauthorized) as caught, pytest.warns(DeprecationWarning, match="add_doc"):
        await in_thread(lambda: collection.add_doc(add_request(url, "never")))
    assert caught.value.code == 1000001
    with pytest.raises(VikingUnauthorized):
        await in_thread(lambda: collection.get_doc("never"))


async def test_volcengine_service_adds_and_reads_a_document(emulator: str) -> None:
    """VikingKnowledgeBaseService pings, gets the collection, adds a document and reads it back."""
    service = await in_thread(lambda: VikingKnowledgeBaseService(host=emulator, scheme="http", ak=AK, sk=SK))
    collection = await in_thread(lambda: service.get_collection(KB))
    url = await staged_url()
    await in_thread(
        lambda: collection.add_doc(add_type="url", doc_id="volc_doc", doc_name="poem.txt", doc_type="txt", url=url)
    )
    doc = await in_thread(lambda: collection.get_doc("volc_doc"))
    assert (doc.doc_id, doc.doc_type, doc.status["process_status"]) == ("volc_doc", "txt", 0)


async def test_volcengine_service_with_a_wrong_secret_is_unauthorized(emulator: str) -> None:
    """With a wrong secret key the service still pings (a health check) but add_doc is unauthorized."""
    service = await in_thread(lambda: VikingKnowledgeBaseService(host=emulator, scheme="http", ak=AK, sk="wrong"))
    url = await staged_url()
    with pytest.raises(VolcUnauthorized):
        await in_thread(lambda: service.get_collection(KB))
    collection = VolcCollection(service, KB)
    with pytest.raises(VolcUnauthorized) as caught:
        await in_thread(
            lambda: collection.add_doc(add_type="url", doc_id="never", doc_name="poem.txt", doc_type="txt", url=url)
        )
    assert caught.value.code == 1000001
