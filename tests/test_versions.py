"""The manifest's record of earlier versions and delete intents (``ingest.manifest.versions``), in both
backends: a changed file's previous remote id is kept by the same transaction that records the new
version's intent; a retry that brings a new id keeps the old one; intents, forgetting, removed files."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.manifest import open_manifest, parse_location
from ingest.manifest.versions import Version, VersionStore
from ingest.models import FileItem, Receipt

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
def manifest(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        location: Any = tmp_path / "m.db"
    else:
        location = parse_location(request.getfixturevalue("pg").url(f"v-{uuid.uuid4().hex[:12]}"))
    m = open_manifest(location)
    m.bind("src", "dst")
    yield m
    m.close()


def item(path: str, size: int = 10) -> FileItem:
    return FileItem(path, Path("/src") / path, size, size)


async def test_versions_are_kept_until_forgotten(manifest: Any) -> None:
    store = VersionStore(manifest)
    async with manifest.writer():
        await manifest.mark_uploading([item("a"), item("b")], 1, dedup=False)
        await manifest.mark_processing([Receipt("a", "id-a1"), Receipt("b", "id-b1")], 1)
        await manifest.mark_done(["a", "b"], 1)
        assert list(store.iter()) == []
        # A new version of a: its old id is kept by the intent's transaction.
        await manifest.mark_uploading([item("a", 20)], 2, dedup=False)
        assert list(store.iter()) == [Version("a", "id-a1", "retired", "replaced")]
        assert manifest.lookup("a").remote_id is None
        await manifest.mark_processing([Receipt("a", "id-a2")], 2)
        # A platform retry that brings a new id keeps the one it replaces.
        await manifest.mark_processing([Receipt("a", "id-a3")], 2, retried=True)
        assert {v.remote_id for v in store.iter()} == {"id-a1", "id-a2"}
        # The same id again is not an earlier version.
        await manifest.mark_processing([Receipt("a", "id-a3")], 2, retried=True)
        assert {v.remote_id for v in store.iter()} == {"id-a1", "id-a2"}
        assert store.by_remote_id("id-a2") == Version("a", "id-a2", "retired", "attempt")  # never done
        assert store.file_by_remote_id("id-a3").path == "a"
        await store.intend([Version("a", "id-a1", "retired", "replaced")])
        assert {v.remote_id: v.state for v in store.iter(paths=["a"])} == {"id-a1": "deleting", "id-a2": "retired"}
        await store.forget(list(store.iter()))
        assert store.count() == {}
        # b leaves the source under --delete: its document becomes a removed version, its row goes.
        await store.remove_files(["b"], 3)
        assert manifest.lookup("b") is None
        assert list(store.iter()) == [Version("b", "id-b1", "retired", "removed")]
        await store.note_meta({"removed_from_source": "0"})
    assert manifest.get_meta("removed_from_source") == "0"
