"""The shared-job manifest, on both backends (SQLite and a real PostgreSQL): claims, leases, fencing,
the planner's role and position, schema migration, and one-line errors for bad locations.

Two handles on one manifest stand for two processes: each has its own connections, as processes do.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from ingest.errors import ConfigError
from ingest.manifest import JobStore, Owner, open_manifest, parse_location
from ingest.models import FileItem, FileState, Receipt

pytestmark = pytest.mark.anyio

Opener = Callable[[], JobStore]


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[JobStore] = []
    if request.param == "sqlite":
        location: Any = tmp_path / "m.db"
    else:
        location = parse_location(request.getfixturevalue("pg").url(f"t-{uuid.uuid4().hex[:12]}"))

    def open_one() -> JobStore:
        m = open_manifest(location)
        m.bind("src", "dst")
        opened.append(m)
        return m

    yield open_one
    for m in opened:
        m.close()


def item(path: str, size: int = 10) -> FileItem:
    return FileItem(path, Path("/src") / path, size, 1)


async def plan(m: JobStore, paths: list[str], run_id: int = 1) -> None:
    async with m.writer():
        await m.record_walk([item(p) for p in paths], [], run_id=run_id, last_path=paths[-1], walked=len(paths))


async def test_claims_hand_each_file_to_one_worker(opener: Opener) -> None:
    """Two workers claiming concurrently get disjoint batches that together cover every pending file."""
    a, b = opener(), opener()
    await plan(a, [f"f{i:03d}" for i in range(200)])
    got: dict[str, list[str]] = {"a": [], "b": []}

    async def drain(name: str, m: JobStore) -> None:
        await m.register_worker(name, "h", 1)
        while claims := await m.claim(name, 17, lease=30):
            got[name] += [c.record.path for c in claims]

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, "a", a)
        tg.start_soon(drain, "b", b)
    assert not set(got["a"]) & set(got["b"])
    assert sorted(got["a"] + got["b"]) == [f"f{i:03d}" for i in range(200)]
    assert a.unfinished(besides="a") == len(got["b"])


async def test_expired_lease_is_taken_over_and_late_writes_are_fenced(opener: Opener) -> None:
    """A worker whose lease expired loses its files to the next claimant; its writes are then refused,
    the new owner's succeed, and the record keeps its state for the resume rule."""
    a, b = opener(), opener()
    await plan(a, ["x", "y"])
    await a.register_worker("a", "h", 1)
    await b.register_worker("b", "h", 2)
    mine = await a.claim("a", 10, lease=0.2)
    owner_a = Owner("a", {c.record.path: c.fence for c in mine})
    async with a.writer():
        assert await a.mark_uploading([item("x"), item("y")], 1, dedup=False, owner=owner_a) == set()
    assert await b.claim("b", 10, lease=30) == []  # still held
    await anyio.sleep(0.4)  # a is paused past its lease
    taken = await b.claim("b", 10, lease=30)
    assert {c.record.path for c in taken} == {"x", "y"}
    assert all(c.taken_over and c.record.state is FileState.UPLOADING for c in taken)
    owner_b = Owner("b", {c.record.path: c.fence for c in taken})
    async with a.writer(), b.writer():
        assert await b.mark_processing([Receipt("x", "r1", "t1")], 1, owner=owner_b) == set()
        assert await b.mark_done(["x"], 1, owner=owner_b) == set()
        # a wakes up: everything it writes now is refused, and nothing regresses.
        assert await a.mark_processing([Receipt("x", "old", "old")], 1, owner=owner_a) == {"x"}
        assert await a.mark_failed([("y", "late")], 1, owner=owner_a) == {"y"}
        assert await a.confirm_lease(owner_a, ["x", "y"], 30) == {"x", "y"}
        assert await a.heartbeat("a", 30, claimed=2, done=0, lost=2) == 0
    x, y = a.lookup("x"), a.lookup("y")
    assert x is not None
    assert (x.state, x.remote_id) == (FileState.DONE, "r1")
    assert y is not None
    assert y.state is FileState.UPLOADING
    assert {w.id: w.takeovers for w in a.workers()} == {"a": 0, "b": 2}


async def test_heartbeat_keeps_the_lease_and_a_clean_stop_releases_it(opener: Opener) -> None:
    a, b = opener(), opener()
    await plan(a, ["p", "q"])
    await a.register_worker("a", "h", 1)
    held = await a.claim("a", 10, lease=0.3)
    for _ in range(3):
        await anyio.sleep(0.15)
        assert await a.heartbeat("a", 0.3, claimed=2, done=0, lost=0) == 2
    assert await b.claim("b", 10, lease=30) == []
    await a.stop_worker("a")
    again = await b.claim("b", 10, lease=30)
    assert {c.record.path for c in again} == {c.record.path for c in held}
    assert not any(c.taken_over for c in again)  # released, not expired


async def test_one_planner_at_a_time_and_the_walk_position_survives_it(opener: Opener) -> None:
    a, b = opener(), opener()
    assert await a.try_lead("a", lease=0.3)
    assert not await b.try_lead("b", lease=0.3)
    await a.begin_walk("a", "fp1", fresh=True)
    await plan(a, ["d/1", "d/2"])
    state = b.walk_state()
    assert (state.last_path, state.walked, state.done, state.fingerprint) == ("d/2", 2, False, "fp1")
    await a.stop_worker("a")  # the planner goes away (SIGKILL does the same: connection or lease gone)
    async with b.writer():
        assert await b.try_lead("b", lease=0.3)
        resumed = await b.begin_walk("b", "fp1", fresh=False)
        assert resumed.last_path == "d/2"
        await b.finish_walk(3)
    assert a.walk_state().done


async def test_the_walk_leaves_rows_in_progress_alone(opener: Opener) -> None:
    """Recording the walk again (a new planner re-walking) never resets a file someone is sending."""
    a = opener()
    await plan(a, ["k"])
    claims = await a.claim("a", 10, lease=30)
    owner = Owner("a", {c.record.path: c.fence for c in claims})
    async with a.writer():
        await a.mark_uploading([item("k")], 1, dedup=False, owner=owner)
    await plan(a, ["k", "new"])
    k = a.lookup("k")
    assert k is not None
    assert k.state is FileState.UPLOADING
    assert a.counts()["pending"] == 1


def test_an_old_sqlite_manifest_is_migrated(tmp_path: Path) -> None:
    """A schema-1 manifest (before shared jobs) opens, keeps its rows and gains the claim columns."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema_version', '1');"
            "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, md5 TEXT, state TEXT NOT NULL,"
            " remote_id TEXT, task_id TEXT, extra TEXT, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,"
            " dedup INTEGER NOT NULL DEFAULT 0, run_id INTEGER, created_at REAL NOT NULL, updated_at REAL NOT NULL);"
            "INSERT INTO files (path, state, created_at, updated_at) VALUES ('a', 'done', 0, 0);"
        )
    conn.close()
    m = open_manifest(path)
    try:
        assert m.get_meta("schema_version") == "2"
        assert m.counts()["done"] == 1
        assert m.walk_state().walk == 0
    finally:
        m.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("postgresql://u:s3cret@h:notaport/db?job=j", "the port is not a number"),
        ("postgresql://u:s3cret@h:5432/?job=j", "names no database"),
        ("postgresql://u:s3cret@h:5432/db?job=bad name!", "is not valid"),
    ],
)
def test_a_wrong_url_is_one_line_without_the_password(value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_location(value)
    message = str(caught.value)
    assert expected in message
    assert "s3cret" not in message
    assert "\n" not in message


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ConfigError) as caught:
        open_manifest(parse_location(f"postgresql://u:s3cret@127.0.0.1:{port}/db?job=j"))
    message = str(caught.value)
    assert "cannot be used" in message
    assert "--manifest" in message
    assert "s3cret" not in message
    assert "\n" not in message
    assert caught.value.__cause__ is None or "s3cret" not in str(caught.value.__cause__)


def test_a_job_name_clash_is_refused(pg: Any) -> None:
    location = parse_location(pg.url("clash"))
    first = open_manifest(location)
    try:
        first.bind("/data/a", "moi:1")
        second = open_manifest(location)
        try:
            with pytest.raises(ConfigError, match="choose another job name"):
                second.bind("/data/b", "moi:1")
        finally:
            second.close()
    finally:
        first.close()


async def test_one_group_of_fenced_writes_reports_only_the_loser_paths(opener: Opener) -> None:
    """Writes of two owners committed in one group (in PostgreSQL one set-based statement per kind): the
    owner whose leases were taken over gets exactly those paths back, the other none, and only the
    holder's writes change rows. A path written twice in one group (the second write finds it finished)
    and a fenced write of a row that does not exist (inserted, as the single-row upsert does) keep the
    per-row semantics. No two writes below depend on their order within the group."""
    a, b, m = opener(), opener(), opener()
    await plan(a, [f"p{i}" for i in range(7)])
    held_a = await a.claim("a", 4, lease=0.2)
    held_b = await b.claim("b", 3, lease=30)
    await anyio.sleep(0.4)  # a's leases expire
    took = await b.claim("b", 2, lease=30)
    taken = sorted(c.record.path for c in took)
    kept = sorted({c.record.path for c in held_a} - set(taken))
    assert (len(taken), len(kept)) == (2, 2)
    mine = sorted(c.record.path for c in held_b)
    owner_a = Owner("a", {c.record.path: c.fence for c in held_a} | {"new": 7})
    owner_b = Owner("b", {c.record.path: c.fence for c in held_b + took})
    results: dict[str, set[str]] = {}

    async def write(name: str, call: Any) -> None:
        results[name] = await call

    async with m.writer():
        before = m.commits
        # The writer cannot commit until every write below is queued: they go in one group.
        async with anyio.create_task_group() as tg, m._writer.limiter:  # type: ignore[attr-defined]
            tg.start_soon(
                write,
                "up a",
                m.mark_uploading([item(kept[0]), item(taken[0]), item("new")], 1, dedup=True, owner=owner_a),
            )
            tg.start_soon(write, "fail a", m.mark_failed([(kept[1], "gave up"), (taken[1], "late")], 1, owner=owner_a))
            tg.start_soon(write, "lease a", m.confirm_lease(owner_a, [kept[0]], 30))
            tg.start_soon(
                write, "up b", m.mark_uploading([item(taken[0]), item(mine[0])], 1, dedup=True, owner=owner_b)
            )
            tg.start_soon(
                write,
                "proc b",
                m.mark_processing([Receipt(taken[1], "r", "t"), Receipt(mine[1], "r", "t")], 1, owner=owner_b),
            )
            tg.start_soon(write, "done b", m.mark_done([mine[2]], 1, owner=owner_b))
            tg.start_soon(write, "done b again", m.mark_done([mine[2]], 1, owner=owner_b))
            await anyio.sleep(0.2)
        assert m.commits - before == 1
    assert sorted([results.pop("done b"), results.pop("done b again")], key=len) == [set(), {mine[2]}]
    assert results == {
        "up a": {taken[0]},
        "fail a": {taken[1]},
        "lease a": set(),
        "up b": set(),
        "proc b": set(),
    }
    states = {p: r.state for p, r in m.lookup_many([*kept, *taken, *mine, "new"]).items()}
    assert states == {
        kept[0]: FileState.UPLOADING,
        kept[1]: FileState.FAILED,
        taken[0]: FileState.UPLOADING,
        taken[1]: FileState.PROCESSING,
        mine[0]: FileState.UPLOADING,
        mine[1]: FileState.PROCESSING,
        mine[2]: FileState.DONE,
        "new": FileState.UPLOADING,
    }
    assert {p: r.attempts for p, r in m.lookup_many([kept[0], taken[0], mine[0], "new"]).items()} == {
        kept[0]: 1,
        taken[0]: 1,
        mine[0]: 1,
        "new": 1,
    }


async def test_fenced_writes_keep_the_version_they_replace(opener: Opener) -> None:
    """A worker's (fenced) intent for a changed file keeps the previous remote id as an earlier version in
    the same commit, as an unfenced one does; so does a retry that brings a new id."""
    from ingest.manifest.versions import VersionStore

    m = opener()
    await plan(m, ["a"])
    for run, ids in ((1, ["id-1"]), (2, ["id-2", "id-3"])):
        if run == 2:
            await plan(m, ["a"], run_id=2)  # walked again after it changed: pending
        claims = await m.claim("w", 10, lease=30)
        owner = Owner("w", {c.record.path: c.fence for c in claims})
        async with m.writer():
            assert await m.mark_uploading([item("a", 10 * run)], run, dedup=False, owner=owner) == set()
            for n, remote_id in enumerate(ids):
                assert await m.mark_processing([Receipt("a", remote_id)], run, retried=n > 0, owner=owner) == set()
            assert await m.mark_done(["a"], run, owner=owner) == set()
    kept = {(v.remote_id, v.reason) for v in VersionStore(m).iter()}  # type: ignore[arg-type]
    assert kept == {("id-1", "attempt"), ("id-2", "attempt")}  # id-1: walked again, pending, not done


async def test_the_stored_state_skips_exactly_what_decide_skips(opener: Opener) -> None:
    """``lookup_states`` reads each file as ``lookup_many`` does, and ``done_and_unchanged`` on what it reads
    is ``decide(...) is SKIP`` for every state, with and without a change of size or mtime, and for rows
    missing size and mtime (a file failed by the walk): the planner's fast path is decide's own rule."""
    from itertools import product

    from ingest.manifest.base import Decision, decide, done_and_unchanged

    m = opener()
    async with m.writer():
        await m.mark_uploading([item(p) for p in ("uploading", "processing", "done", "failed")], 1, dedup=False)
        await m.mark_processing([Receipt("processing", "r1", "t1"), Receipt("done", "r2", "t2")], 1)
        await m.mark_done(["done"], 1)
        await m.mark_failed([("failed", "no"), ("walk-failed", "cannot read file information")], 1)
    await plan(m, ["pending"])
    paths = ["uploading", "processing", "done", "failed", "walk-failed", "pending", "never-seen"]
    records, stored = m.lookup_many(paths), m.lookup_states(paths)
    assert set(records) == set(stored) == set(paths) - {"never-seen"}
    assert {r.state for r in records.values()} == set(FileState)
    for path, size, mtime_ns in product(paths[:-1], (10, 11), (1, 2)):
        walked = FileItem(path, Path("/src") / path, size, mtime_ns)
        assert stored[path] == (path, records[path].size, records[path].mtime_ns, records[path].state.value)
        assert done_and_unchanged(stored[path], size, mtime_ns) is (decide(records[path], walked) is Decision.SKIP), (
            path,
            size,
            mtime_ns,
        )
    done = item("done")
    assert done_and_unchanged(stored["done"], done.size, done.mtime_ns)  # the one case that skips


async def test_a_batch_is_read_by_range_with_the_same_answer_as_by_name(opener: Opener) -> None:
    """``lookup_states`` reads a walked batch as one range of the path index, and answers exactly what
    reading each path by name does: with files of a subfolder sorted inside the range (more rows than
    the range reads), paths the manifest does not know, and a batch of a few files."""
    m = opener()
    folder = [f"d/f{i:03d}.txt" for i in range(100)]
    inside = [f"d/f050/g{i:03d}.txt" for i in range(300)]  # sorts between d/f050.txt and d/f051.txt
    async with m.writer():
        await m.mark_uploading([item(p) for p in folder[::2] + inside], 1, dedup=False)
        await m.mark_done(folder[:20], 1)
    for batch in (folder, folder[40:60], folder[:5], [*folder[::3], "zz/new.txt"], inside[::7]):
        by_name = {p: r for p in batch if (r := m.lookup_states([p]).get(p)) is not None}
        assert m.lookup_states(batch) == by_name
        assert set(by_name) == {p for p in batch if p in set(folder[::2] + inside)}


async def test_the_file_count_is_the_sum_of_the_counts_by_state(opener: Opener) -> None:
    """``file_count`` (what a rerun compares with the files its walk met, to know none left) is every row of
    the manifest whatever its state, as ``counts()`` adds up, without grouping them by state."""
    m = opener()
    assert m.file_count() == 0
    paths = [f"d/f{i:03d}.txt" for i in range(30)]
    async with m.writer():
        await m.mark_uploading([item(p) for p in paths], 1, dedup=False)
        await m.mark_done(paths[:10], 1)
    assert m.counts()["done"] == 10
    assert m.file_count() == sum(m.counts().values()) == 30


async def test_a_worker_that_cannot_take_the_planner_role_helps_instead_of_walking_again(
    opener: Opener, tmp_path: Path
) -> None:
    """A finished job, its planner stopped without dying (heartbeat stale, role still held: on PostgreSQL
    for as long as its connection lives). A worker started now cannot walk the job again: it helps finish
    the walk that is done and ends. (It chose a fresh walk, its walk ended at once on the finished walk's
    ``done``, and its claims waited forever for the new walk: tests/test_scale.py's paused-worker test
    hung whenever the second worker saw the first one's heartbeat stale.)"""
    from ingest.config import EngineConfig
    from ingest.engine.shared import run_worker
    from ingest.platforms.base import TargetContext
    from ingest.platforms.registry import build_target
    from ingest.progress import Progress
    from ingest.report import RunSummary
    from ingest.sources.local import LocalSource, WalkOptions
    from tests.conftest import make_tree
    from tests.harness import MOI

    make_tree(tmp_path / "src", 3)
    old, new = opener(), opener()
    await old.register_worker("old", "host", 1)
    assert await old.try_lead("old", lease=30.0)
    await old.begin_walk("old", "fp", fresh=False)
    async with old.writer():
        await old.finish_walk(0)
    await anyio.sleep(0.6)  # the old planner's heartbeat is now older than the lease below
    summary = RunSummary(destination="test", manifest="m")
    async with MOI.start(tmp_path / "data") as dep:
        target = build_target(dep.target_config, TargetContext())
        try:
            with anyio.fail_after(30):
                async with new.writer():
                    await run_worker(
                        store=new,
                        source=LocalSource(tmp_path / "src", WalkOptions()),
                        target=target,
                        run_id=new.start_run("run"),
                        config=EngineConfig(concurrency=2, poll_initial=0.02, poll_max=0.1),
                        progress=Progress(False),
                        summary=summary,
                        lease=0.5,
                        worker="new",
                    )
        finally:
            await target.aclose()
    state = new.walk_state()
    assert (state.walk, state.done) == (0, True)  # no second walk: the role was not to be had
