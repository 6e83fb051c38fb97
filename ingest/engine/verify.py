"""``ingest verify``: compare what the platform holds with what the manifest says it should.

The destination is listed (``Target.list_documents``: paged, streamed) and each document is looked up in
the manifest by remote id (indexed); the ids seen are kept in a temporary SQLite file, not in memory, so
memory stays flat for any size. Then every done file of the manifest whose document was not seen is
missing. One line per difference, with a one-character code in the manner of ``rclone check --combined``:

- ``-`` missing: the manifest says done, the platform does not hold its document;
- ``+`` extra: a document for a path this manifest manages that is not its current version — one this
  manifest created for a file no longer expected, or a duplicate added behind ingest's back;
- ``~`` stale: an earlier version of a changed file, still on the platform;
- ``*`` differ: size or md5 on the platform differ from the manifest's (where the platform reports them);
- ``!`` failed: the platform failed to process the document.

Documents of other names that this manifest never created are counted and never touched. ``fix``
re-sends the missing files (through ``retry-failed``'s path) and deletes the stale and extra documents
(the same recorded, resumable deletes as a run's).
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.engine import converge
from ingest.errors import ConfigError
from ingest.manifest.base import Manifest
from ingest.manifest.versions import Version, VersionStore
from ingest.models import FileState, RemoteState
from ingest.platforms.base import RemoteDocument, Target

__all__ = ["CODES", "Difference", "VerifyResult", "verify"]

CODES = {"-": "missing", "+": "extra", "~": "stale", "*": "differ", "!": "failed"}


@dataclass(frozen=True, slots=True)
class Difference:
    code: str
    path: str
    remote_id: str | None
    detail: str = ""

    def line(self) -> str:
        return f"{self.code} {self.path}" + (f"  ({self.detail})" if self.detail else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "kind": CODES[self.code],
            "path": self.path,
            "remote_id": self.remote_id,
            "detail": self.detail,
        }


@dataclass(slots=True)
class VerifyResult:
    documents: int = 0
    matching: int = 0
    others: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CODES.values(), 0))
    fixed: dict[str, int] = field(default_factory=dict)

    @property
    def agree(self) -> bool:
        return not any(self.counts.values())

    def summary_line(self) -> str:
        diffs = ", ".join(f"{n} {kind}" for kind, n in self.counts.items())
        verdict = "platform and manifest agree" if self.agree else "differences found"
        return (
            f"{verdict}: {self.documents} documents listed, {self.matching} match; {diffs}; "
            f"{self.others} not created by this manifest (untouched)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "agree": self.agree,
            "documents": self.documents,
            "matching": self.matching,
            "others": self.others,
            **self.counts,
            "fixed": self.fixed,
        }


def _candidates(doc: RemoteDocument) -> list[str]:
    out = [doc.extra[k] for k in ("path", "rel_path") if doc.extra.get(k)]
    if doc.folder:
        out.append(f"{doc.folder.strip('/')}/{doc.name}")
    out.append(doc.name)
    return out


async def verify(
    target: Target,
    manifest: Manifest,
    *,
    on_difference: Callable[[Difference], None],
    fix: bool = False,
    resend: Callable[[list[str]], Any] | None = None,
) -> VerifyResult:
    """Compare; with ``fix``, delete stale and extra documents and hand the missing paths to ``resend``."""
    if not target.features.can_list:
        raise ConfigError(f"verify needs a target that can list its documents, and {target.name} cannot")
    if fix and not target.features.can_delete:
        raise ConfigError(f"verify --fix needs a target that can delete documents, and {target.name} cannot")
    store = VersionStore(manifest)
    result = VerifyResult()
    to_delete: list[Version] = []
    missing: list[str] = []

    def report(diff: Difference) -> None:
        result.counts[CODES[diff.code]] += 1
        on_difference(diff)

    with tempfile.TemporaryDirectory(prefix="ingest-verify-") as tmp:
        seen = sqlite3.connect(Path(tmp) / "seen.db", isolation_level=None)
        seen.execute("CREATE TABLE seen (remote_id TEXT PRIMARY KEY)")
        seen.execute("BEGIN")
        async for doc in target.list_documents():
            result.documents += 1
            record = store.file_by_remote_id(doc.remote_id)
            if record is not None:
                seen.execute("INSERT OR IGNORE INTO seen VALUES (?)", (doc.remote_id,))
                if doc.state is RemoteState.FAILED:
                    report(Difference("!", record.path, doc.remote_id, doc.reason or "failed on the platform"))
                    continue
                want_md5 = record.extra.get("md5") or record.md5
                if doc.md5 and want_md5 and doc.md5 != want_md5:
                    report(
                        Difference("*", record.path, doc.remote_id, f"md5 {doc.md5} on the platform, {want_md5} sent")
                    )
                elif doc.size is not None and record.size is not None and doc.size != record.size and not doc.md5:
                    report(
                        Difference(
                            "*", record.path, doc.remote_id, f"size {doc.size} on the platform, {record.size} sent"
                        )
                    )
                else:
                    result.matching += 1
                continue
            version = store.by_remote_id(doc.remote_id)
            if version is not None:
                code = "~" if version.reason in ("replaced", "attempt") else "+"
                report(Difference(code, version.path, doc.remote_id, f"{version.reason}, id {doc.remote_id}"))
                to_delete.append(version)
                continue
            managed = next(
                (p for p in _candidates(doc) if (r := manifest.lookup(p)) is not None and r.state is FileState.DONE),
                None,
            )
            if managed is not None:
                report(
                    Difference(
                        "+", managed, doc.remote_id, f"a second document, id {doc.remote_id}, not made by this ingest"
                    )
                )
                to_delete.append(Version(managed, doc.remote_id, "retired", "duplicate"))
                continue
            result.others += 1
        seen.execute("COMMIT")
        for record in manifest.iter_files(states=(FileState.DONE,)):
            if not record.remote_id:
                continue
            if seen.execute("SELECT 1 FROM seen WHERE remote_id = ?", (record.remote_id,)).fetchone() is None:
                report(Difference("-", record.path, record.remote_id, "not on the platform"))
                missing.append(record.path)
        seen.close()
    if fix:
        async with manifest.writer():
            left = await converge.delete_versions(target, store, to_delete)
            for path in missing:
                await store.forget_remote(path)
        result.fixed = {"deleted": len(to_delete) - len(left), "resent": 0}
        if missing and resend is not None:
            summary = await resend(missing)
            result.fixed["resent"] = int(getattr(summary, "done", 0))
    return result
