"""Convergence (issue 9) against the docstore test platform (``tests/sync_target.py``), in both
``version_ids`` modes: replace on change, ``--delete`` with ``--max-delete``, delete intents, foreign
documents untouched. The same behaviours run over every real target in ``test_conformance_sync.py``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ingest
from ingest.config import EngineConfig, RunConfig, SourceConfig, SyncConfig
from ingest.engine.converge import MaxDeleteExceeded
from ingest.manifest import SqliteManifest
from ingest.manifest.versions import VersionStore
from tests.conftest import make_tree
from tests.sync_target import DocStore, DocStoreConfig

pytestmark = pytest.mark.anyio

MODES = ["new", "same"]


@pytest.fixture(autouse=True, scope="module")
def _docstore() -> Iterator[None]:
    """``--target docstore`` for this module only."""
    from tests.sync_target import registered

    with registered():
        yield


def config(tmp: Path, mode: str = "new", *, source: str = "src", **sync: Any) -> RunConfig:
    return RunConfig(
        source=SourceConfig(path=tmp / source),
        target=DocStoreConfig(data_dir=str(tmp / "platform"), version_ids=mode),  # type: ignore[arg-type]
        engine=EngineConfig(concurrency=4, poll_initial=0.01, poll_max=0.05),
        manifest=tmp / "m.db",
        quiet=True,
        sync=SyncConfig(**sync),
    )


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def platform(tmp: Path) -> dict[str, list[dict[str, Any]]]:
    store = DocStore(tmp / "platform")
    try:
        return store.by_name()
    finally:
        store.close()


@pytest.mark.parametrize("mode", MODES)
async def test_changed_file_leaves_exactly_one_document_with_the_new_content(mode: str, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src", 10)
    await ingest.run(config(tmp_path, mode))
    (tmp_path / "src" / "f0002.txt").write_bytes(b"version two")
    summary = await ingest.run(config(tmp_path, mode))
    docs = platform(tmp_path)
    assert (summary.done, summary.skipped, summary.replaced) == (1, 9, 1)
    assert [d["md5"] for d in docs["f0002.txt"]] == [md5(b"version two")]
    assert all(len(v) == 1 for v in docs.values())
    assert set(docs) == set(files)
    with SqliteManifest(tmp_path / "m.db") as m:
        assert sum(VersionStore(m).count().values()) == 0


async def test_on_change_keep_keeps_the_old_version_and_remembers_its_id(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 4)
    await ingest.run(config(tmp_path))
    (tmp_path / "src" / "f0002.txt").write_bytes(b"v2")
    summary = await ingest.run(config(tmp_path, on_change="keep"))
    assert summary.replaced == 0
    assert len(platform(tmp_path)["f0002.txt"]) == 2
    with SqliteManifest(tmp_path / "m.db") as m:
        assert VersionStore(m).count() == {"replaced": 1}
    # The next run that replaces deletes it.
    summary = await ingest.run(config(tmp_path))
    assert summary.replaced == 1
    assert len(platform(tmp_path)["f0002.txt"]) == 1


@pytest.mark.parametrize("mode", MODES)
async def test_removed_file_is_kept_without_delete_and_deleted_with_it(mode: str, tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 10)
    await ingest.run(config(tmp_path, mode))
    (tmp_path / "src" / "f0002.txt").unlink()
    kept = await ingest.run(config(tmp_path, mode))
    assert kept.removed_kept == 1
    assert "f0002.txt" in platform(tmp_path)
    with SqliteManifest(tmp_path / "m.db") as m:
        assert m.get_meta("removed_from_source") == "1"
    gone = await ingest.run(config(tmp_path, mode, delete=True))
    assert (gone.deleted, gone.removed_kept) == (1, 0)
    assert "f0002.txt" not in platform(tmp_path)
    assert len(platform(tmp_path)) == 9
    with SqliteManifest(tmp_path / "m.db") as m:
        assert m.lookup("f0002.txt") is None
        assert m.get_meta("removed_from_source") == "0"


async def test_max_delete_stops_before_deleting_or_sending_anything(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 10)
    await ingest.run(config(tmp_path))
    (tmp_path / "src" / "f0002.txt").unlink()
    (tmp_path / "src" / "f0004.txt").unlink()
    (tmp_path / "src" / "new.txt").write_bytes(b"new")
    before = platform(tmp_path)
    with pytest.raises(MaxDeleteExceeded) as err:
        await ingest.run(config(tmp_path, delete=True, max_delete="1"))
    assert "--max-delete 2" in str(err.value)
    assert "\n" not in str(err.value)
    assert platform(tmp_path) == before
    # A percentage: 2 of 10 is 20%.
    with pytest.raises(MaxDeleteExceeded):
        await ingest.run(config(tmp_path, delete=True, max_delete="10%"))
    summary = await ingest.run(config(tmp_path, delete=True, max_delete="2"))
    assert summary.deleted == 2
    assert summary.done == 1


async def test_a_file_excluded_by_a_filter_change_is_kept(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 6, nested=False)
    await ingest.run(config(tmp_path))
    cfg = config(tmp_path, delete=True)
    cfg = cfg.model_copy(update={"source": SourceConfig(path=tmp_path / "src", exclude=("f0002.txt",))})
    summary = await ingest.run(cfg)
    assert (summary.deleted, summary.excluded_kept) == (0, 1)
    assert "f0002.txt" in platform(tmp_path)


async def test_documents_this_manifest_did_not_create_are_never_touched(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 5, nested=False)
    store = DocStore(tmp_path / "platform")
    foreign = store.add(None, "f0002.txt", b"someone else's copy")
    other = store.add(None, "unrelated.txt", b"x")
    store.close()
    await ingest.run(config(tmp_path))
    (tmp_path / "src" / "f0002.txt").write_bytes(b"changed")
    (tmp_path / "src" / "f0003.txt").unlink()
    await ingest.run(config(tmp_path, delete=True))
    ids = {d["id"] for docs in platform(tmp_path).values() for d in docs}
    assert {foreign, other} <= ids


async def test_a_delete_intent_left_by_a_crash_is_resumed(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 4, nested=False)
    await ingest.run(config(tmp_path))
    with SqliteManifest(tmp_path / "m.db") as m:
        record = m.lookup("f0002.txt")
        assert record is not None
        assert record.remote_id
        async with m.writer():
            from ingest.manifest.versions import Version

            await VersionStore(m).intend([Version("gone.txt", "doc-unknown", "deleting", "removed")])
    summary = await ingest.run(config(tmp_path))
    assert summary.deleted == 1
    with SqliteManifest(tmp_path / "m.db") as m:
        assert VersionStore(m).count() == {}


async def test_replace_refuses_a_target_that_cannot_delete_before_any_work(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 3)
    cfg = config(tmp_path, on_change="replace")
    cfg = cfg.model_copy(update={"target": DocStoreConfig(data_dir=str(tmp_path / "platform"), can_delete=False)})
    with pytest.raises(ingest.ConfigError) as err:
        await ingest.run(cfg)
    assert "--on-change keep" in str(err.value)
    assert platform(tmp_path) == {}
    with pytest.raises(ingest.ConfigError, match="--delete"):
        await ingest.run(cfg.model_copy(update={"sync": SyncConfig(delete=True, on_change="keep")}))
    # Not chosen explicitly: keep, and say so.
    summary = await ingest.run(cfg.model_copy(update={"sync": SyncConfig()}))
    assert summary.done == 3


async def test_json_log_has_one_object_per_event_and_no_secret(tmp_path: Path) -> None:
    import json
    import logging

    from ingest.logs import configure, event

    log = tmp_path / "events.jsonl"
    configure(log, "json", secrets=["s3cret-value"])
    base = logging.getLogger("ingest")
    try:
        make_tree(tmp_path / "src", 3, nested=False)
        await ingest.run(config(tmp_path))
        (tmp_path / "src" / "f0002.txt").unlink()
        await ingest.run(config(tmp_path, delete=True))
        event("run-error", "the platform said s3cret-value is wrong")
    finally:
        for handler in list(base.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == log:
                base.removeHandler(handler)
                handler.close()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("run-start") == 2
    assert kinds.count("run-end") == 2
    assert any(e["event"] == "delete" and e["path"] == "f0002.txt" for e in events)
    assert events[-2]["summary"]["deleted"] == 1
    assert "s3cret-value" not in log.read_text()
