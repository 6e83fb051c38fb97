"""The manifest: resume decisions, group commit, binding, and crash consistency of its writes."""

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from ingest.errors import ConfigError
from ingest.manifest import Decision, decide, groupcommit
from ingest.manifest import SqliteManifest as Manifest
from ingest.manifest.groupcommit import HERE_MAX_STMTS, HERE_STREAK_MAX
from ingest.models import FileItem, FileState, Receipt

pytestmark = pytest.mark.anyio


_opened: list[Manifest] = []


def open_manifest(path: Path) -> Manifest:
    manifest = Manifest(path)
    _opened.append(manifest)
    return manifest


@pytest.fixture(autouse=True)
def _close_manifests() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def item(path: str = "a.txt", size: int = 10, mtime_ns: int = 1) -> FileItem:
    return FileItem(path, Path("/src") / path, size, mtime_ns)


async def test_records_every_step_of_a_file(tmp_path: Path) -> None:
    """uploading -> processing (with ids) -> done, one row per file."""
    m = open_manifest(tmp_path / "m.db")
    async with m.writer():
        await m.mark_uploading([item()], run_id=1, dedup=False)
        assert m.lookup("a.txt").state is FileState.UPLOADING  # type: ignore[union-attr]
        await m.mark_processing([Receipt("a.txt", "f1", "t1", extra={"md5": "abc"})], run_id=1)
    rec = m.lookup("a.txt")  # committed by the time the writer stops (see the test below for when)
    assert rec is not None
    assert (rec.state, rec.remote_id, rec.task_id, rec.extra) == (FileState.PROCESSING, "f1", "t1", {"md5": "abc"})
    async with m.writer():
        await m.mark_done(["a.txt"], run_id=1)
    rec = m.lookup("a.txt")
    assert rec is not None
    assert rec.state is FileState.DONE
    assert rec.attempts == 1
    assert m.counts() == {"pending": 0, "uploading": 0, "processing": 0, "done": 1, "failed": 0}


async def test_the_accepted_record_rides_in_the_next_commit(tmp_path: Path) -> None:
    """``processing`` is not waited for (a crash that loses it leaves the file ``uploading``: resent with
    dedup), so a file costs two commits, not three: it goes first in the next commit anyone waits for,
    or on its own within ``LATER_LINGER`` when nobody writes. A retry's record is waited for: it retires
    the id of a document the platform holds, which a lost record would leave behind for ever."""
    m = open_manifest(tmp_path / "m.db")
    async with m.writer():
        await m.mark_uploading([item("a.txt"), item("b.txt"), item("c.txt")], run_id=1, dedup=False)
        await m.mark_processing([Receipt("a.txt", "f1", "t1"), Receipt("b.txt", "f2", "t2")], run_id=1)
        assert m.commits == 1
        await m.mark_done(["a.txt"], run_id=1)
        assert m.commits == 2
        assert m.lookup("b.txt").state is FileState.PROCESSING  # type: ignore[union-attr]
        await m.mark_processing([Receipt("c.txt", "f4", "t4")], run_id=1)
        with anyio.fail_after(10):
            while m.lookup("c.txt").task_id != "t4":  # type: ignore[union-attr]  # noqa: ASYNC110 - the writer task commits it
                await anyio.sleep(0.05)
        assert m.commits == 3
        await m.mark_processing([Receipt("b.txt", "f3", "t3")], run_id=1, retried=True)
        assert (m.commits, m.lookup("b.txt").task_id) == (4, "t3")  # type: ignore[union-attr]


async def test_group_commit_batches_concurrent_writes(tmp_path: Path) -> None:
    """Hundreds of concurrent writers share a handful of transactions, and all are durable."""
    m = open_manifest(tmp_path / "m.db")
    async with m.writer(), anyio.create_task_group() as tg:
        for i in range(500):
            tg.start_soon(lambda i=i: m.mark_uploading([item(f"f{i}")], 1, dedup=False))
    assert m.counts()["uploading"] == 500
    assert m.commits < 100
    # Visible to an independent reader: committed, not cached.
    with contextlib.closing(sqlite3.connect(tmp_path / "m.db")) as other:
        assert other.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 500


def commit_threads(m: Manifest) -> list[int]:
    """The threads the writer's COMMIT statements run on, in order."""
    threads: list[int] = []
    m._wconn.set_trace_callback(lambda sql: threads.append(threading.get_ident()) if sql == "COMMIT" else None)  # type: ignore[attr-defined]
    return threads


async def test_a_commit_runs_on_the_event_loop_thread_when_the_lock_is_free(tmp_path: Path) -> None:
    """A SQLite commit is short and local: handing it to a worker thread cost more than the transaction
    (a hop each way, the GIL back and forth), so it runs where the writes were made."""
    m = open_manifest(tmp_path / "m.db")
    threads = commit_threads(m)
    async with m.writer():
        await m.mark_uploading([item("a.txt")], run_id=1, dedup=False)
        await m.mark_done(["a.txt"], run_id=1)
    assert threads == [threading.get_ident()] * 2
    assert m.lookup("a.txt").state is FileState.DONE  # type: ignore[union-attr]


async def test_a_big_commit_runs_in_a_worker_thread(tmp_path: Path) -> None:
    """A batch's intents (two statements a file) stay off the event loop: there SQLite's work held up the
    planner, and batches went out part-filled; in a thread the driver lets the loop run meanwhile."""
    m = open_manifest(tmp_path / "m.db")
    threads = commit_threads(m)
    async with m.writer():
        await m.mark_uploading([item(f"f{i}.txt") for i in range(HERE_MAX_STMTS)], run_id=1, dedup=False)
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()
    assert m.counts()["uploading"] == HERE_MAX_STMTS


async def test_a_long_run_of_small_commits_sends_one_in_a_worker_thread_now_and_then(tmp_path: Path) -> None:
    """SQLite checkpoints its log in a commit (an fsync of the database), never in one on the event loop:
    every ``HERE_STREAK_MAX``-th small commit in a row goes to a worker thread, where it may."""
    m = open_manifest(tmp_path / "m.db")
    threads = commit_threads(m)
    async with m.writer():
        for i in range(HERE_STREAK_MAX + 2):
            await m.mark_uploading([item(f"f{i}.txt")], run_id=1, dedup=False)
    loop = threading.get_ident()
    assert threads[:HERE_STREAK_MAX] == [loop] * HERE_STREAK_MAX
    assert threads[HERE_STREAK_MAX] != loop
    assert threads[HERE_STREAK_MAX + 1] == loop


async def test_a_commit_on_the_event_loop_never_checkpoints_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SQLite's 1,000 pages, a commit on the loop leaves the log as it is (a checkpoint there would
    stall every transfer for its fsync); it is checkpointed by a commit in a worker thread."""
    monkeypatch.setattr(groupcommit, "HERE_STREAK_MAX", 10**9)  # every commit on the loop
    m = open_manifest(tmp_path / "m.db")
    threads = commit_threads(m)
    async with m.writer():
        for i in range(700):  # a file's intent writes a few pages: well past 1,000 in all
            await m.mark_uploading([item(f"f{i}.txt")], run_id=1, dedup=False)
        assert set(threads) == {threading.get_ident()}
        with contextlib.closing(sqlite3.connect(tmp_path / "m.db", isolation_level=None)) as other:
            # (busy, pages in the log, pages checkpointed): run now, it reports what the log had come to.
            _, logged, _ = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert logged > 1000
    assert m.counts()["uploading"] == 700


async def test_a_write_lock_held_elsewhere_is_waited_for_off_the_event_loop(tmp_path: Path) -> None:
    """Another process of a shared job holding the write lock never stalls the loop: that commit waits in a
    worker thread, and the write returns once it is committed."""
    m = open_manifest(tmp_path / "m.db")
    threads = commit_threads(m)
    committed = anyio.Event()
    with contextlib.closing(sqlite3.connect(tmp_path / "m.db", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        async with m.writer(), anyio.create_task_group() as tg:

            async def write() -> None:
                await m.mark_uploading([item("a.txt")], run_id=1, dedup=False)
                committed.set()

            tg.start_soon(write)
            for _ in range(20):  # the loop keeps turning while the lock is held
                await anyio.sleep(0.01)
            assert not committed.is_set()
            other.execute("COMMIT")
            with anyio.fail_after(30):
                await committed.wait()
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()
    assert m.lookup("a.txt").state is FileState.UPLOADING  # type: ignore[union-attr]


async def test_failed_records_keep_the_reason_and_create_rows(tmp_path: Path) -> None:
    """A file that never got sent still gets a row saying why."""
    m = open_manifest(tmp_path / "m.db")
    async with m.writer():
        await m.mark_failed([("bad\\xe9.txt", "file name is not valid UTF-8")], run_id=3)
    rec = m.lookup("bad\\xe9.txt")
    assert rec is not None
    assert rec.state is FileState.FAILED
    assert rec.last_error == "file name is not valid UTF-8"


@pytest.mark.parametrize(
    ("state", "same", "expected"),
    [
        (None, True, Decision.SEND),
        (FileState.DONE, True, Decision.SKIP),
        (FileState.DONE, False, Decision.SEND),
        (FileState.PROCESSING, True, Decision.POLL),
        (FileState.UPLOADING, True, Decision.SEND_DEDUP),
        (FileState.UPLOADING, False, Decision.SEND_DEDUP),
        (FileState.FAILED, True, Decision.SEND),
    ],
)
async def test_resume_decisions(tmp_path: Path, state: FileState | None, same: bool, expected: Decision) -> None:
    """Done+unchanged is skipped, accepted files are polled, crash leftovers are sent with dedup."""
    m = open_manifest(tmp_path / "m.db")
    async with m.writer():
        if state is not None:
            await m.mark_uploading([item()], run_id=1, dedup=False)
            if state in (FileState.PROCESSING, FileState.DONE):
                await m.mark_processing([Receipt("a.txt", "f", "t")], run_id=1)
            if state is FileState.DONE:
                await m.mark_done(["a.txt"], run_id=1)
            if state is FileState.FAILED:
                await m.mark_failed([("a.txt", "no")], run_id=1)
    walked = item() if same else item(size=11)
    assert decide(m.lookup("a.txt"), walked) is expected


async def test_manifest_is_bound_to_one_source_and_destination(tmp_path: Path) -> None:
    """Reusing a manifest for another source or destination is refused with a clear message."""
    m = open_manifest(tmp_path / "m.db")
    m.bind("/src", "moi:http://x/volume/1")
    m.bind("/src", "moi:http://x/volume/1")
    with pytest.raises(ConfigError, match="use another --manifest"):
        m.bind("/other", "moi:http://x/volume/1")


def test_not_a_database_gives_a_clear_error(tmp_path: Path) -> None:
    """A --manifest pointing at some other file says so in one line."""
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello, this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="cannot be opened"):
        Manifest(bogus)


async def test_iter_files_pages_through_everything(tmp_path: Path) -> None:
    """Iteration is paged by path, so it never loads the whole table and still sees every row."""
    m = open_manifest(tmp_path / "m.db")
    async with m.writer():
        await m.mark_uploading([item(f"f{i:03d}") for i in range(250)], run_id=1, dedup=False)
        await m.mark_failed([(f"f{i:03d}", "x") for i in range(0, 250, 5)], run_id=1)
    assert len(list(m.iter_files(page=7))) == 250
    assert len(list(m.iter_files(states=(FileState.FAILED,), page=7))) == 50
