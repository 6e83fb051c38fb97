"""A small, strict test platform for the convergence suite: documents in a SQLite file (so a killed client
process and its rerun see the same platform), listing and deletion on, either ``version_ids`` mode.

- ``version_ids="new"``: every upload makes a document of a new id (``doc-N``); two uploads of one path are
  two documents, as on the real platforms.
- ``version_ids="same"``: the id is derived from the path (``path:<rel>``); adding a document whose id
  exists with other content is refused: the old version must be deleted first (delete then add).

Every call is counted by kind (``counts()``), like the emulators' ``/_emulator/stats``. Registered as
``--target docstore`` by ``registered()``; ``python -m tests.sync_target ARGS`` is ``ingest ARGS`` with it
registered.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from ingest.errors import PermanentError
from ingest.models import FileItem, Receipt, RemoteState, RemoteStatus
from ingest.platforms.base import RemoteDocument, Target, TargetConfigBase, TargetContext, TargetFeatures
from ingest.platforms.registry import CliOption, TargetSpec, register

__all__ = ["SPEC", "DocStore", "DocStoreConfig", "DocStoreTarget", "registered"]


class DocStoreConfig(TargetConfigBase):
    type: Literal["docstore"] = "docstore"
    endpoint: str = "http://docstore.invalid"
    data_dir: str
    version_ids: Literal["new", "same"] = "new"
    can_delete: bool = True


class DocStore:
    """The platform's state, shared by every process that opens ``data_dir``."""

    def __init__(self, data_dir: str | Path) -> None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(Path(data_dir) / "docs.db", isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(
            "CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER, md5 TEXT,"
            " created REAL);"
            "CREATE TABLE IF NOT EXISTS counts (kind TEXT PRIMARY KEY, n INTEGER NOT NULL);"
            "CREATE TABLE IF NOT EXISTS seq (id INTEGER PRIMARY KEY AUTOINCREMENT, x INTEGER);"
        )

    def count(self, kind: str) -> None:
        self.conn.execute("INSERT INTO counts VALUES (?, 1) ON CONFLICT(kind) DO UPDATE SET n = n + 1", (kind,))

    def counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT kind, n FROM counts").fetchall())

    def docs(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT id, name, size, md5 FROM docs ORDER BY name, id").fetchall()
        return [{"id": r[0], "name": r[1], "size": r[2], "md5": r[3]} for r in rows]

    def by_name(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for d in self.docs():
            out.setdefault(d["name"], []).append(d)
        return out

    def add(self, doc_id: str | None, name: str, data: bytes) -> str:
        """A document added behind ingest's back (or by the target): its id."""
        if doc_id is None:
            cur = self.conn.execute("INSERT INTO seq (x) VALUES (0)")
            doc_id = f"doc-{cur.lastrowid}"
        self.conn.execute(
            "INSERT INTO docs VALUES (?, ?, ?, ?, ?)",
            (doc_id, name, len(data), hashlib.md5(data).hexdigest(), time.time()),
        )
        return doc_id

    def remove(self, doc_id: str) -> None:
        self.conn.execute("DELETE FROM docs WHERE id = ?", (doc_id,))

    def close(self) -> None:
        self.conn.close()


class DocStoreTarget(Target):
    name = "docstore"

    def __init__(self, config: DocStoreConfig, context: TargetContext) -> None:
        self.config = config
        self.context = context
        self.store = DocStore(config.data_dir)
        self.features = TargetFeatures(
            max_batch_files=4,
            max_batch_bytes=1 << 20,
            max_batched_file_size=1 << 20,
            server_dedup=True,
            can_list=True,
            can_delete=config.can_delete,
            version_ids=config.version_ids,
        )

    async def open(self) -> None:
        self.store.count("open")

    async def submit(self, items: Sequence[FileItem], *, dedup: bool) -> list[Receipt]:
        self.store.count("submit")
        receipts = []
        for item in items:
            data = item.abs_path.read_bytes()
            md5 = hashlib.md5(data).hexdigest()
            if self.context.on_bytes is not None:
                self.context.on_bytes(len(data))
            same = f"path:{item.rel_path}" if self.config.version_ids == "same" else None
            if dedup or same:
                row = self.store.conn.execute(
                    "SELECT id, md5 FROM docs WHERE name = ? AND (? IS NULL OR id = ?)", (item.rel_path, same, same)
                ).fetchall()
                match = [r[0] for r in row if r[1] == md5]
                if match and (dedup or same):
                    receipts.append(Receipt(item.rel_path, remote_id=match[0], extra={"md5": md5}))
                    continue
                if same and row:
                    raise PermanentError(f"document {same} exists: delete the old version before adding a new one")
            doc_id = self.store.add(same, item.rel_path, data)
            receipts.append(Receipt(item.rel_path, remote_id=doc_id, extra={"md5": md5}))
        return receipts

    async def poll(self, receipts: Sequence[Receipt]) -> list[RemoteStatus]:
        self.store.count("poll")
        out = []
        for r in receipts:
            found = self.store.conn.execute("SELECT 1 FROM docs WHERE id = ?", (r.remote_id,)).fetchone()
            out.append(
                RemoteStatus(
                    r.rel_path, RemoteState.DONE if found else RemoteState.FAILED, None if found else "unknown document"
                )
            )
        return out

    async def list_documents(self) -> AsyncIterator[RemoteDocument]:  # type: ignore[override]
        last = ""
        while True:
            self.store.count("list")
            rows = self.store.conn.execute(
                "SELECT id, name, size, md5, created FROM docs WHERE id > ? ORDER BY id LIMIT 7", (last,)
            ).fetchall()
            if not rows:
                return
            for r in rows:
                yield RemoteDocument(remote_id=r[0], name=r[1], size=r[2], md5=r[3], created=r[4])
            last = rows[-1][0]

    async def delete(self, remote_ids: Sequence[str]) -> list[str]:
        if not self.config.can_delete:
            raise NotImplementedError
        self.store.count("delete")
        for rid in remote_ids:
            self.store.remove(rid)
        return list(remote_ids)

    async def find_existing(self, item: FileItem) -> Receipt | None:
        return None

    def describe(self) -> str:
        return f"docstore {self.config.data_dir}"

    def identity(self) -> str:
        return f"docstore:{Path(self.config.data_dir).resolve()}"

    async def aclose(self) -> None:
        self.store.close()


SPEC = TargetSpec(
    name="docstore",
    help="a test platform in a SQLite file (tests only)",
    config_model=DocStoreConfig,
    factory=DocStoreTarget,
    cli_options=(
        CliOption("--data-dir", "data_dir", "docstore: its folder", metavar="DIR"),
        CliOption("--version-ids", "version_ids", "docstore: new or same", choices=("new", "same")),
    ),
)


@contextmanager
def registered() -> Iterator[TargetSpec]:
    """``--target docstore`` for the length of the block (the other suites never see it)."""
    from ingest.platforms import registry

    register(SPEC)
    try:
        yield SPEC
    finally:
        registry._REGISTRY.pop(SPEC.name, None)


if __name__ == "__main__":
    from ingest.cli.main import main

    register(SPEC)
    sys.exit(main())
