"""Convergence through the command line, in real processes, against the docstore test platform
(``tests/sync_target.py``): SIGKILL at the new failpoints then rerun, ``--max-delete``, ``status``,
``--dry-run`` counts, ``verify`` and ``--fix``, ``--every`` with SIGTERM, one run per manifest."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_tree
from tests.sync_target import DocStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def _docstore() -> Iterator[None]:
    """``--target docstore`` for this module only."""
    from tests.sync_target import registered

    with registered():
        yield


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "INGEST_FAILPOINT"}
    out["PYTHONPATH"] = str(ROOT)
    out.update(extra)
    return out


def ingest(
    tmp: Path, *args: str, failpoint: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    extra = {"INGEST_FAILPOINT": failpoint} if failpoint else {}
    return subprocess.run(
        [sys.executable, "-m", "tests.sync_target", *args],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env(**extra),
        timeout=timeout,
    )


def run_args(tmp: Path, mode: str = "new", *more: str) -> list[str]:
    return [
        "run", "src", "--target", "docstore", "--data-dir", str(tmp / "platform"), "--version-ids", mode,
        "--manifest", "m.db", "--poll-initial", "0.01", "--poll-max", "0.05", "-q", *more,
    ]  # fmt: skip


def platform(tmp: Path) -> dict[str, list[dict[str, Any]]]:
    store = DocStore(tmp / "platform")
    try:
        return store.by_name()
    finally:
        store.close()


def counts(tmp: Path) -> dict[str, int]:
    store = DocStore(tmp / "platform")
    try:
        return store.counts()
    finally:
        store.close()


def tree_md5(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def assert_converged(tmp: Path, *foreign: str) -> None:
    """Exactly one document per source file, with its current md5; foreign documents untouched."""
    docs = platform(tmp)
    expected = tree_md5(tmp / "src")
    ours = {name: [x["md5"] for x in d if x["id"] not in foreign] for name, d in docs.items() if name in expected}
    assert ours == {n: [m] for n, m in expected.items()}
    ids = {x["id"] for d in docs.values() for x in d}
    assert set(foreign) <= ids
    assert len(ids) == len(expected) + len(foreign)
    with sqlite3.connect(tmp / "m.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == 0
        states = dict(conn.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
    conn.close()
    assert states == {"done": len(expected)}


def change_tree(tmp: Path) -> None:
    src = tmp / "src"
    for name in ("f0002.txt", "f0004.txt", "f0006.txt"):
        (src / name).write_bytes(b"changed " + name.encode())
    (src / "f0008.txt").unlink()
    (src / "empty.txt").unlink()


@pytest.mark.parametrize("mode", ["new", "same"])
@pytest.mark.parametrize("point", ["after-new-version-done:1", "before-old-deleted:1", "mid-delete:1"])
def test_sigkill_at_each_convergence_point_then_rerun_converges(mode: str, point: str, tmp_path: Path) -> None:
    if mode == "same" and point.startswith("after-new-version-done"):
        pytest.skip("same ids: the old version is deleted before the new one is sent, never after it is done")
    make_tree(tmp_path / "src", 12, nested=False)
    assert ingest(tmp_path, *run_args(tmp_path, mode)).returncode == 0
    store = DocStore(tmp_path / "platform")
    foreign = [store.add(None, "f0002.txt", b"not ours"), store.add(None, "other.txt", b"not ours either")]
    store.close()
    change_tree(tmp_path)
    killed = ingest(tmp_path, *run_args(tmp_path, mode, "--delete"), failpoint=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = ingest(tmp_path, *run_args(tmp_path, mode, "--delete"))
    assert rerun.returncode == 0, rerun.stderr
    assert_converged(tmp_path, *foreign)


def test_max_delete_stops_with_one_line_and_exit_1(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 10, nested=False)
    assert ingest(tmp_path, *run_args(tmp_path)).returncode == 0
    (tmp_path / "src" / "f0002.txt").unlink()
    (tmp_path / "src" / "f0004.txt").unlink()
    before = platform(tmp_path)
    result = ingest(tmp_path, *run_args(tmp_path, "new", "--delete", "--max-delete", "1"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--max-delete 2" in lines[0]
    assert "nothing was sent or deleted" in lines[0]
    assert platform(tmp_path) == before
    status = ingest(tmp_path, "status", "--manifest", "m.db")
    assert "2 files no longer in the source" in status.stdout
    assert ingest(tmp_path, *run_args(tmp_path, "new", "--delete", "--max-delete", "2")).returncode == 0
    assert_converged(tmp_path)


def test_status_says_removed_files_are_kept(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 6, nested=False)
    assert ingest(tmp_path, *run_args(tmp_path)).returncode == 0
    (tmp_path / "src" / "f0003.txt").unlink()
    assert ingest(tmp_path, *run_args(tmp_path)).returncode == 0
    status = ingest(tmp_path, "status", "--manifest", "m.db", "--json")
    assert json.loads(status.stdout)["no_longer_in_source"] == 1
    assert "f0003.txt" in platform(tmp_path)


def test_dry_run_sends_nothing_and_its_counts_are_the_next_run(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 12, nested=False)
    assert ingest(tmp_path, *run_args(tmp_path)).returncode == 0
    change_tree(tmp_path)
    (tmp_path / "src" / "new1.txt").write_bytes(b"new one")
    (tmp_path / "src" / "new2.txt").write_bytes(b"new two")
    before = counts(tmp_path)
    dry = ingest(tmp_path, *run_args(tmp_path, "new", "--delete", "--dry-run", "--json"))
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert counts(tmp_path) == before  # not one request
    assert (plan["new"], plan["changed"], plan["unchanged"], plan["to_delete"]) == (2, 3, 7, 2)
    assert plan["replace_deletes"] == 3
    assert plan["requests"] > 0
    assert plan["max_delete_stops"] is False
    same = ingest(tmp_path, "plan", "src", *run_args(tmp_path, "new", "--delete", "--json")[2:])
    assert json.loads(same.stdout)["to_send"] == plan["to_send"]
    real = ingest(tmp_path, *run_args(tmp_path, "new", "--delete", "--json"))
    summary = json.loads(real.stdout)
    assert summary["done"] == plan["to_send"] == 5
    assert summary["skipped"] == plan["unchanged"]
    assert (summary["deleted"], summary["replaced"]) == (plan["to_delete"], plan["replace_deletes"])
    # Over the limit: the plan says the run would stop.
    (tmp_path / "src" / "new1.txt").unlink()
    (tmp_path / "src" / "new2.txt").unlink()
    stop = ingest(tmp_path, *run_args(tmp_path, "new", "--delete", "--max-delete", "1", "--dry-run", "--json"))
    assert stop.returncode == 1
    assert json.loads(stop.stdout)["max_delete_stops"] is True


def test_verify_finds_and_fixes_changes_made_behind_ingests_back(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 8, nested=False)
    assert ingest(tmp_path, *run_args(tmp_path)).returncode == 0
    agree = ingest(tmp_path, "verify", "--manifest", "m.db")
    assert agree.returncode == 0, agree.stdout + agree.stderr
    assert "agree" in agree.stdout
    store = DocStore(tmp_path / "platform")
    victim = store.by_name()["f0003.txt"][0]["id"]
    store.remove(victim)
    intruder = store.add(None, "f0005.txt", b"a second copy added through the API")
    foreign = store.add(None, "unrelated.txt", b"someone else's")
    store.close()
    found = ingest(tmp_path, "verify", "--manifest", "m.db", "--report", "diff.json")
    assert found.returncode == 1
    assert "- f0003.txt" in found.stdout
    assert "+ f0005.txt" in found.stdout
    report = json.loads((tmp_path / "diff.json").read_text())
    assert {(d["code"], d["path"]) for d in report} == {("-", "f0003.txt"), ("+", "f0005.txt")}
    fixed = ingest(tmp_path, "verify", "--manifest", "m.db", "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    docs = platform(tmp_path)
    assert len(docs["f0003.txt"]) == 1
    assert intruder not in {d["id"] for d in docs["f0005.txt"]}
    assert any(d["id"] == foreign for d in docs["unrelated.txt"])
    again = ingest(tmp_path, "verify", "--manifest", "m.db", "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["agree"] is True


def json_documents(text: str) -> list[Any]:
    decoder, docs, i = json.JSONDecoder(), [], 0
    while (start := text.find("{", i)) != -1:
        doc, i = decoder.raw_decode(text, start)
        docs.append(doc)
    return docs


def _runs(tmp: Path) -> list[tuple[int, str]]:
    try:
        with sqlite3.connect(tmp / "m.db") as conn:
            rows = conn.execute("SELECT id, status FROM runs ORDER BY id").fetchall()
        conn.close()
        return rows
    except sqlite3.Error:
        return []


def _wait(predicate: Any, proc: subprocess.Popen[str], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"the scheduled process ended: {proc.communicate()}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_runs_repeatedly_converging_and_sigterm_stops_it_consistently(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 8, nested=False)
    log = tmp_path / "events.jsonl"
    args = run_args(
        tmp_path, "new", "--delete", "--every", "1s", "--json", "--log-file", str(log), "--log-format", "json"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sync_target", *args],
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def completed() -> int:
            return sum(s == "completed" for _, s in _runs(tmp_path))

        def after_change(what: str) -> None:
            # A run may be under way while the files change: wait for one that started after them.
            seen = completed()
            _wait(lambda: completed() >= seen + 2, proc, what)

        _wait(lambda: completed() >= 1, proc, "the first run")
        # A second run on the same manifest while the schedule holds it: exit 2 at once, naming the holder.
        second = ingest(tmp_path, *run_args(tmp_path))
        assert second.returncode == 2
        assert f"is in use by ingest pid {proc.pid} on host" in second.stderr
        assert "wait for it or stop it" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        (tmp_path / "src" / "f0002.txt").write_bytes(b"changed between runs")
        (tmp_path / "src" / "f0004.txt").unlink()
        after_change("a run after the first change")
        (tmp_path / "src" / "added.txt").write_bytes(b"added between runs")
        after_change("a run after the second change")
        assert completed() >= 3
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, 130), err
    runs = _runs(tmp_path)
    assert len(runs) >= 3
    assert all(status in ("completed", "interrupted") for _, status in runs)
    assert len(json_documents(out)) >= 3  # one summary per run
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("run-end") >= 3, kinds
    assert "delete" in kinds, out
    # A rerun finishes whatever an interrupted run left; the destination is converged.
    assert ingest(tmp_path, *run_args(tmp_path, "new", "--delete")).returncode == 0
    assert_converged(tmp_path)


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", 20, nested=False)
    killed = ingest(tmp_path, *run_args(tmp_path), failpoint="after-intent:2")
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "m.db.lock").exists()
    rerun = ingest(tmp_path, *run_args(tmp_path))
    assert rerun.returncode == 0, rerun.stderr
    assert_converged(tmp_path)
