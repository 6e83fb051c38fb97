"""A hostile tree, for every target (issue 13, items 1, 4 and 6).

- A symbolic link swapped in after the walk (for a file, or for a folder still to be listed) never makes
  a private file reach the platform; with ``--follow-symlinks`` a link retargeted after the walk is
  refused too.
- A file name holding any control character (0x01-0x1f, 0x7f) is sent under its own name or fails alone
  with a reason: never the run.
- ``--hidden`` never sends ingest's own state: the manifest (and its -wal/-shm), the report, ``.ingest/``.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ingest.config import EngineConfig, RunConfig, SourceConfig
from ingest.engine.run import Job, run_job
from ingest.manifest import SqliteManifest
from ingest.models import FileItem
from ingest.report import RunSummary
from ingest.sources.base import Rejected
from ingest.sources.local import LocalSource, WalkOptions
from tests.harness import HARNESSES

pytestmark = pytest.mark.anyio

PRIVATE = b"PRIVATE-CONTENT-NEVER-SENT"


@pytest.fixture(params=HARNESSES, ids=lambda h: h.name)
def harness(request: pytest.FixtureRequest) -> Any:
    return request.param


ENGINE = EngineConfig(concurrency=2, poll_initial=0.02, poll_max=0.2, request_retries=1)


class SwappingSource(LocalSource):
    """The local folder, with ``swap`` done once, right after the walk yields ``when``: the run is then
    in progress, past the walk of that file, before its upload."""

    def __init__(self, root: Path, when: str, swap: Callable[[], object], *, follow: bool = False) -> None:
        super().__init__(root, WalkOptions(follow_symlinks=follow))
        self.when, self.swap = when, swap

    async def entries(self) -> AsyncIterator[FileItem | Rejected]:  # type: ignore[override]
        async for entry in super().entries():
            if entry.rel_path == self.when:
                self.swap()
            yield entry


async def run_source(dep: Any, source: LocalSource, manifest: Path) -> RunSummary:
    return await run_job(
        Job(source=source, target=dep.target_config, engine=ENGINE, manifest=manifest, quiet=True), command="run"
    )


def private_tree(tmp_path: Path) -> Path:
    private = tmp_path / "private"
    (private / "sub").mkdir(parents=True)
    (private / "secret.txt").write_bytes(PRIVATE)
    (private / "sub" / "b.txt").write_bytes(PRIVATE)
    (private / "sub" / "z.txt").write_bytes(PRIVATE)
    return private


async def assert_nothing_private(dep: Any) -> None:
    stored = await dep.stored()

    from tests.conftest import md5_of  # noqa: F401  (the md5 of PRIVATE, computed alike)

    private_md5 = hashlib.md5(PRIVATE).hexdigest()
    assert all(f.md5 != private_md5 for f in stored.values()), stored


# ----- 1. symbolic links swapped in after the walk -----------------------------------------------------


async def test_file_swapped_for_a_symlink_is_not_followed(harness: Any, tmp_path: Path) -> None:
    private = private_tree(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"public")
    (src / "b.txt").write_bytes(b"x" * len(PRIVATE))  # the same size as the private file

    def swap() -> None:
        (src / "b.txt").unlink()
        (src / "b.txt").symlink_to(private / "secret.txt")

    async with harness.start(tmp_path / "data") as dep:
        summary = await run_source(dep, SwappingSource(src, "b.txt", swap), tmp_path / "m.db")
        await assert_nothing_private(dep)
    assert (summary.done, summary.failed) == (1, 1)
    assert "symbolic link" in dict(summary.failures)["b.txt"]


async def test_folder_swapped_for_a_symlink_redirects_neither_walk_nor_open(harness: Any, tmp_path: Path) -> None:
    """``pub/sub`` is listed as a folder, then swapped for a link to a private folder before the walk
    enters it; ``pub/b.txt`` is walked, then ``pub`` itself is swapped before the upload."""
    private = private_tree(tmp_path)
    src = tmp_path / "src"
    (src / "pub" / "sub").mkdir(parents=True)
    (src / "pub" / "a.txt").write_bytes(b"public")
    (src / "pub" / "b.txt").write_bytes(b"y" * len(PRIVATE))
    (src / "pub" / "sub" / "z.txt").write_bytes(b"z" * len(PRIVATE))
    (src / "q.txt").write_bytes(b"q")

    def swap() -> None:
        shutil.rmtree(src / "pub" / "sub")
        (src / "pub" / "sub").symlink_to(private / "sub")
        (src / "pub").rename(src / "pub-old")
        (src / "pub").symlink_to(private)
        (private / "a.txt").write_bytes(b"public")  # what a careless check by name and size would accept
        (private / "b.txt").write_bytes(PRIVATE)

    async with harness.start(tmp_path / "data") as dep:
        summary = await run_source(dep, SwappingSource(src, "pub/a.txt", swap), tmp_path / "m.db")
        stored = await dep.stored()
        await assert_nothing_private(dep)
    assert not any("sub/" in path for path in stored)
    assert "q.txt" in {Path(p).name for p in stored}
    assert summary.done <= 2  # q.txt, and pub/a.txt only if it was sent before the swap


async def test_follow_symlinks_checks_the_target_at_open_time(harness: Any, tmp_path: Path) -> None:
    private = private_tree(tmp_path)
    public = tmp_path / "public.txt"
    public.write_bytes(b"p" * len(PRIVATE))
    src = tmp_path / "src"
    src.mkdir()
    (src / "link.txt").symlink_to(public)
    (src / "zz.txt").write_bytes(b"zz")

    def retarget() -> None:
        (src / "link.txt").unlink()
        (src / "link.txt").symlink_to(private / "secret.txt")

    async with harness.start(tmp_path / "data") as dep:
        summary = await run_source(dep, SwappingSource(src, "zz.txt", retarget, follow=True), tmp_path / "m.db")
        await assert_nothing_private(dep)
    assert summary.failed <= 1  # link.txt, unless it was sent before the swap


# ----- 4. control characters in file names ---------------------------------------------------------------

CONTROL = [*range(0x01, 0x20), 0x7F]


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).write_bytes(data)


async def test_control_characters_in_names_fail_alone_or_go(harness: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    names = {f"c{code:02x}-{chr(code)}-x.txt": f"byte {code}".encode() for code in CONTROL}
    write_files(src, names)
    (src / "plain.txt").write_bytes(b"plain")
    config = RunConfig(source=SourceConfig(path=src), engine=ENGINE, manifest=tmp_path / "m.db", quiet=True)
    async with harness.start(tmp_path / "data") as dep:
        summary = await dep.run(config.model_copy(update={"target": dep.target_config}))
        stored = await dep.stored()
    assert summary.done + summary.failed == len(names) + 1
    assert "plain.txt" in stored
    failures = dict(summary.failures)
    for name in names:
        if name in failures:
            assert failures[name], name  # a reason, on one record
        else:
            assert name in stored, (name, sorted(stored))  # sent under its own name, not a mangled one
    with SqliteManifest(tmp_path / "m.db") as manifest:
        counts = manifest.counts()
    assert counts["uploading"] == counts["pending"] == counts["processing"] == 0


# ----- 6. --hidden and ingest's own state ----------------------------------------------------------------


async def test_hidden_never_sends_ingests_own_state(
    harness: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source is the working folder: its ``.ingest/``, the manifest (and -wal/-shm) and the report
    lie inside it. Two runs with ``--hidden``: the second sends nothing and fails nothing."""
    src = tmp_path / "src"
    src.mkdir()
    (src / ".notes.txt").write_text("hidden, but asked for")
    (src / "a.txt").write_text("a")
    (src / ".ingest" / "local").mkdir(parents=True)
    (src / ".ingest" / "local" / "stored.bin").write_text("the embedded destination's files")
    monkeypatch.chdir(src)
    async with harness.start(tmp_path / "data") as dep:
        config = RunConfig(
            source=SourceConfig(path=Path("."), hidden=True),
            target=dep.target_config,
            engine=ENGINE,
            manifest=Path("state.db"),
            report=Path("report.json"),
            quiet=True,
        )
        first = await dep.run(config)
        second = await dep.run(config)
        stored = await dep.stored()
    assert (first.done, first.failed) == (2, 0), first.failures
    assert (second.done, second.failed, second.skipped) == (0, 0, 2)
    assert sorted(Path(p).name for p in stored) == [".notes.txt", "a.txt"]
