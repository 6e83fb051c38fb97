"""The Keyue target against the Keyue emulator over real HTTP: the CLI as users meet it, then the
target's own behaviour (directory mirroring and conflicts, batched polling, lookups, error mapping)."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import SecretStr, ValidationError

import ingest
from ingest.config import EngineConfig, RunConfig, SourceConfig, validation_message
from ingest.errors import AuthError, ConfigError, PermanentError, RateLimitedError, TransientError, VersionConflict
from ingest.http import HttpReply
from ingest.models import FileItem, Receipt, RemoteState
from ingest.platforms.base import TargetContext
from ingest.platforms.keyue import names as keyue_names
from ingest.platforms.keyue.api import KeyueApi, check_envelope
from ingest.platforms.keyue.config import KeyueTargetConfig
from ingest.platforms.keyue.names import count_shared_names, shared_names_warning
from ingest.platforms.keyue.target import KeyueTarget
from ingest.progress import Progress
from tests.conftest import make_tree
from tests.harness import KEYUE, Faults, KeyueDeployment, ServerProcess, run_cli

API = "/open/v1/api/v2"
FOREVER_MS = 600_000


# --- helpers ------------------------------------------------------------------------------------------------


def call(url: str, method: str, path: str, body: Any = None, **params: str) -> Any:
    """One Keyue API call with the harness's credentials; returns ``data`` of the success envelope."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    request = urllib.request.Request(
        url + API + path + query,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "token": KEYUE.token,
            "uid": KEYUE.uid,
            "username": KEYUE.username,
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        envelope = json.load(reply)
    assert envelope["code"] == 200, envelope
    return envelope["data"]


def make_dir(url: str, name: str, parent: str = "0") -> str:
    version = max((d["version"] for d in call(url, "GET", "/directory")), default=0)
    return str(call(url, "POST", "/directory/create", {"name": name, "parentId": parent, "version": version})["id"])


def hook(url: str, path: str) -> Any:
    with urllib.request.urlopen(url + path, timeout=10) as reply:
        return json.load(reply)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def import_count(url: str) -> int:
    return sum(n for route, n in hook(url, "/_emulator/stats")["requests"].items() if "import" in route)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One Keyue emulator process for the module; each test sends into its own directory."""
    proc = ServerProcess(KEYUE.serve_command(tmp_path_factory.mktemp("ky-data"), Faults(task_delay_ms=30)))
    yield proc
    proc.stop()


def keyue_flags(server: ServerProcess, dir_id: str) -> list[str]:
    flags, _ = KEYUE.cli(server.url)
    return [*flags[: flags.index("--dir-id")], "--dir-id", dir_id]


ENV = {"KEYUE_TOKEN": KEYUE.token}


# --- the command line ---------------------------------------------------------------------------------------


def test_run_imports_every_file_once_learned_in_its_folder(server: ServerProcess, tmp_path: Path) -> None:
    """`ingest run --mirror-dirs` with chunking options: each file imported once, learned, in its folder."""
    expected = make_tree(tmp_path / "docs", 25)
    dest = make_dir(server.url, "cli-mirror")
    args = [
        "run", "docs", *keyue_flags(server, dest), "--mirror-dirs", "--chunk-size", "500", "--overlap", "10",
        "--split-by", "punc", "--manifest", "m.db", "-q",
    ]  # fmt: skip
    result = run_cli(args, env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stored = {f["path"]: f for f in hook(server.url, f"/_emulator/files?dirId={dest}")}
    assert {p: f["md5"] for p, f in stored.items()} == expected
    assert {f["uploads"] for f in stored.values()} == {1}
    assert {f["learnStatus"] for f in stored.values()} == {1}
    sub = next(d["id"] for d in call(server.url, "GET", "/directory", parentId=dest) if d["name"] == "d1")
    doc = call(server.url, "GET", "/llm/document/list", dirId=sub, ps="1")["list"][0]
    assert json.loads(doc["taskExtend"]) == {"split_by": "punc", "chunk_size": 500, "overlap_proportion": 10}
    rerun = run_cli(args, env=ENV, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert len(hook(server.url, f"/_emulator/files?dirId={dest}")) == 25


def test_without_mirror_dirs_files_go_straight_into_the_destination(server: ServerProcess, tmp_path: Path) -> None:
    """Without --mirror-dirs every file is imported into --dir-id itself, with automatic chunking."""
    make_tree(tmp_path / "docs", 6, nested=False)
    dest = make_dir(server.url, "cli-flat")
    result = run_cli(["run", "docs", *keyue_flags(server, dest), "--manifest", "m.db", "-q"], env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    docs = call(server.url, "GET", "/llm/document/list", dirId=dest, ps="50")["list"]
    assert len(docs) == 6
    assert {d["taskExtend"] for d in docs} == {"{}"}
    assert call(server.url, "GET", "/directory", parentId=dest) == []


SHARED_NAMES_TREE = ["a/x.txt", "b/x.txt", "c/x.txt", "d/y.md", "e/y.md", "f/z.txt"]


def test_shared_names_are_warned_on_stderr_unless_quiet(server: ServerProcess, tmp_path: Path) -> None:
    """Without --mirror-dirs, names several files share in the destination directory are one warning line
    on stderr naming them and their counts; -q says nothing."""
    for rel in SHARED_NAMES_TREE:
        item(tmp_path / "docs", rel)
    dest = make_dir(server.url, "cli-shared-names")
    args = ["run", "docs", *keyue_flags(server, dest), "--manifest", "m.db", "--no-progress"]
    result = run_cli(args, env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: 2 names are shared by 5 files in Keyue directory {dest} (x.txt ×3, y.md ×2): each file becomes a "
        "document of its base name there, so documents of the same name cannot be told apart; "
        "use --mirror-dirs to keep folders apart"
    ]
    quiet = run_cli([*args, "-q"], env=ENV, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "warning" not in quiet.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--chunk-size", "900"], "from 200 to 800"),
        (["--chunk-size", "199"], "from 200 to 800"),
        (["--chunk-size", "big"], "from 200 to 800"),
        (["--overlap", "21"], "from 0 to 20"),
        (["--overlap", "-1"], "from 0 to 20"),
        (["--split-by", "comma"], "invalid choice"),
    ],
)
def test_invalid_task_extend_options_exit_2_before_sending(
    server: ServerProcess, tmp_path: Path, flags: list[str], expected: str
) -> None:
    """Out-of-range chunking options are a usage error naming the range; nothing is sent."""
    make_tree(tmp_path / "docs", 2)
    before = hook(server.url, "/_emulator/stats")["requests"]
    result = run_cli(["run", "docs", *keyue_flags(server, "0"), *flags, "--manifest", "m.db"], env=ENV, cwd=tmp_path)
    assert result.returncode == 2
    assert expected in one_line_error(result)
    assert hook(server.url, "/_emulator/stats")["requests"] == before


def test_wrong_token_exits_2_without_echoing_it(server: ServerProcess, tmp_path: Path) -> None:
    """A rejected token is one line naming KEYUE_TOKEN, exit 2, and the token is not printed."""
    make_tree(tmp_path / "docs", 2)
    result = run_cli(
        ["run", "docs", *keyue_flags(server, "0"), "--manifest", "m.db"],
        env={"KEYUE_TOKEN": "sk-wrong-secret-42"},
        cwd=tmp_path,
    )
    assert result.returncode == 2
    line = one_line_error(result)
    assert "KEYUE_TOKEN" in line
    assert "sk-wrong-secret-42" not in result.stderr + result.stdout


def test_missing_token_exits_2(server: ServerProcess, tmp_path: Path) -> None:
    """Without KEYUE_TOKEN or --token the run stops at once and says how to give it."""
    make_tree(tmp_path / "docs", 1)
    result = run_cli(["run", "docs", *keyue_flags(server, "0")], cwd=tmp_path)
    assert result.returncode == 2
    assert "KEYUE_TOKEN" in one_line_error(result)


def test_unknown_directory_exits_2(server: ServerProcess, tmp_path: Path) -> None:
    """A --dir-id Keyue does not have is a configuration error naming it; nothing is imported."""
    make_tree(tmp_path / "docs", 2)
    before = import_count(server.url)
    result = run_cli(["run", "docs", *keyue_flags(server, "424242"), "--manifest", "m.db"], env=ENV, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "424242" in line
    assert "--dir-id" in line
    assert import_count(server.url) == before


# --- the target in process ----------------------------------------------------------------------------------


@pytest.fixture
async def dep(tmp_path: Path) -> AsyncIterator[KeyueDeployment]:
    async with KEYUE.start(tmp_path / "data", Faults(task_delay_ms=20)) as deployment:
        yield deployment


def run_config(dep: KeyueDeployment, src: Path, manifest: Path, **target: Any) -> RunConfig:
    return RunConfig(
        source=SourceConfig(path=src),
        target=dep.target_config.model_copy(update=target),
        engine=EngineConfig(concurrency=8, poll_initial=0.02, poll_max=0.1),
        manifest=manifest,
        quiet=True,
    )


def target_for(dep: KeyueDeployment, **changes: Any) -> KeyueTarget:
    config = KeyueTargetConfig.model_validate({**dep.target_config.model_dump(), "token": KEYUE.token, **changes})
    return KeyueTarget(config, TargetContext())


def item(root: Path, rel: str, data: bytes = b"hello") -> FileItem:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    st = path.stat()
    return FileItem(rel, path, st.st_size, st.st_mtime_ns)


def state(dep: KeyueDeployment) -> Any:
    from ingest.emulators.keyue import KEYUE_STATE

    return dep.app[KEYUE_STATE]


def creates(counts: dict[str, int]) -> int:
    return sum(n for route, n in counts.items() if route.endswith("/directory/create"))


@pytest.mark.anyio
async def test_concurrent_workers_create_each_folder_once(dep: KeyueDeployment, tmp_path: Path) -> None:
    """Many files in the same new folders: one directory per folder, each created once."""
    files = {f"a/b/f{i}.txt": f"{i}".encode() for i in range(12)} | {f"a/c/g{i}.txt": b"x" for i in range(6)}
    for rel, data in files.items():
        item(tmp_path / "src", rel, data)
    summary = await ingest.run(run_config(dep, tmp_path / "src", tmp_path / "m.db"))
    assert (summary.done, summary.failed) == (18, 0)
    assert creates(await dep.request_counts()) == 3
    assert set(await dep.stored()) == set(files)


@pytest.mark.anyio
async def test_a_version_conflict_is_resolved_by_rereading(dep: KeyueDeployment, tmp_path: Path) -> None:
    """Another client changing the tree gives 4000526; the target re-reads, reuses or retries, and succeeds."""
    target = target_for(dep)
    async with target:
        await target.open()
        # Created by someone else after our read, so our version is stale (in a thread: the emulator
        # runs on this event loop).
        other = await anyio.to_thread.run_sync(make_dir, dep.url, "a")
        await anyio.to_thread.run_sync(make_dir, dep.url, "unrelated")
        assert await target.tree.ensure("a") == other
        new = await target.tree.ensure("a/b")
    # Two outside creations; the target's stale attempt at "a" (answered 4000526), then "a/b".
    assert creates(await dep.request_counts()) == 2 + 2
    listed = {d["id"]: d for d in await anyio.to_thread.run_sync(call, dep.url, "GET", "/directory")}
    assert [d["name"] for d in listed.values()].count("a") == 1
    assert (listed[new]["name"], listed[new]["parentId"]) == ("b", other)


@pytest.mark.anyio
async def test_a_refused_folder_fails_its_files_with_the_reason(dep: KeyueDeployment, tmp_path: Path) -> None:
    """A folder Keyue cannot create (trailing space) fails its files with the platform's reason; others go."""
    item(tmp_path / "src", "bad name /a.txt")
    item(tmp_path / "src", "bad name /b.txt")
    item(tmp_path / "src", "ok.txt")
    summary = await ingest.run(run_config(dep, tmp_path / "src", tmp_path / "m.db"))
    assert (summary.done, summary.failed) == (1, 2)
    assert all("cannot create Keyue directory" in reason for _, reason in summary.failures)
    assert all("ends with white space" in reason for _, reason in summary.failures)
    assert creates(await dep.request_counts()) == 1  # the refusal is remembered for the folder's other files


@pytest.mark.anyio
async def test_polling_lists_each_directory_once(dep: KeyueDeployment, tmp_path: Path) -> None:
    """One poll of many documents costs one listing per directory, not one request per document."""
    target = target_for(dep, mirror_dirs=True)
    state(dep).learn_delay_ms = FOREVER_MS
    async with target:
        await target.open()
        receipts = [(await target.submit([item(tmp_path, f"d{i % 3}/f{i}.txt")], dedup=False))[0] for i in range(30)]
        before = await dep.request_counts()
        statuses = await target.poll(receipts)
        after = await dep.request_counts()
    assert {s.state for s in statuses} == {RemoteState.PENDING}
    assert {s.rel_path for s in statuses} == {r.rel_path for r in receipts}
    lists = {k: after[k] - before.get(k, 0) for k in after if k.endswith("/llm/document/list")}
    assert sum(lists.values()) == 3


@pytest.mark.anyio
async def test_a_failed_listing_leaves_only_its_directory_pending(dep: KeyueDeployment, tmp_path: Path) -> None:
    """One directory's listing failing transiently keeps its documents pending; all failing raises."""
    target = target_for(dep, mirror_dirs=True)
    state(dep).learn_delay_ms = state(dep).enhance_delay_ms = 0
    async with target:
        await target.open()
        receipts = [(await target.submit([item(tmp_path, f"d{i}/f.txt")], dedup=False))[0] for i in range(3)]
        dep.set_faults(rate_limit=0.01)  # one request now, the next in 100 s: two listings get 429
        statuses = await target.poll(receipts)
        assert sorted(s.state for s in statuses) == [RemoteState.DONE, RemoteState.PENDING, RemoteState.PENDING]
        dep.set_faults(rate_limit=None, error_rate=1.0)
        with pytest.raises(TransientError):
            await target.poll(receipts)


@pytest.mark.anyio
async def test_old_documents_in_a_big_directory_are_looked_up_by_name(dep: KeyueDeployment, tmp_path: Path) -> None:
    """When the sought documents are pages deep, a lookup by name is cheaper than paging: 1 + 2 requests."""
    target = target_for(dep)
    async with target:
        await target.open()
        old = [(await target.submit([item(tmp_path, f"old{i}.txt")], dedup=False))[0] for i in range(2)]
        for i in range(230):  # newer documents push the two onto page 3
            await target.submit([item(tmp_path, f"new{i:03d}.txt")], dedup=False)
        before = await dep.request_counts()
        statuses = await target.poll(old)
        after = await dep.request_counts()
    assert [s.state for s in statuses] == [RemoteState.DONE, RemoteState.DONE]
    assert sum(after[k] - before.get(k, 0) for k in after if k.endswith("/llm/document/list")) == 3


@pytest.mark.anyio
async def test_find_existing_matches_name_and_size_in_the_files_directory(dep: KeyueDeployment, tmp_path: Path) -> None:
    """A document caught mid-upload is found by name and size in its folder's directory, nowhere else."""
    target = target_for(dep, mirror_dirs=True)
    async with target:
        await target.open()
        sent = (await target.submit([item(tmp_path, "sub/a.txt", b"12345")], dedup=False))[0]
        found = await target.find_existing(item(tmp_path, "sub/a.txt", b"12345"))
        assert found is not None
        assert (found.remote_id, found.extra["dir_id"]) == (sent.remote_id, sent.extra["dir_id"])
        assert await target.find_existing(item(tmp_path, "sub/a.txt", b"123456")) is None  # changed: send again
        assert await target.find_existing(item(tmp_path, "a.txt", b"12345")) is None  # other directory
        assert await target.find_existing(item(tmp_path, "never/a.txt", b"12345")) is None
        again = await target.submit([item(tmp_path, "sub/a.txt", b"12345")], dedup=True)
    assert again[0].remote_id == sent.remote_id
    assert (await dep.stored())["sub/a.txt"].uploads == 1


@pytest.mark.anyio
@pytest.mark.parametrize("treat_as_done", [True, False])
async def test_enhancing_counts_as_done_only_when_asked(
    dep: KeyueDeployment, tmp_path: Path, treat_as_done: bool
) -> None:
    """learnStatus 2 is done with treat_enhancing_as_done, otherwise the file waits (here: times out)."""
    state(dep).enhance_delay_ms = FOREVER_MS
    make_tree(tmp_path / "src", 3, nested=False)
    config = run_config(dep, tmp_path / "src", tmp_path / "m.db", treat_enhancing_as_done=treat_as_done)
    config = config.model_copy(update={"engine": config.engine.model_copy(update={"task_timeout": 0.5})})
    summary = await ingest.run(config)
    assert (summary.done, summary.failed) == ((3, 0) if treat_as_done else (0, 3))


@pytest.mark.anyio
async def test_failed_learning_is_retrained_not_reimported(dep: KeyueDeployment, tmp_path: Path) -> None:
    """Documents that fail to learn are retried with batchRetrain; each file is imported once."""
    state(dep).fail_rate = 0.5
    files = make_tree(tmp_path / "src", 16)
    config = run_config(dep, tmp_path / "src", tmp_path / "m.db")
    summary = await ingest.run(
        config.model_copy(update={"engine": config.engine.model_copy(update={"max_attempts": 30})})
    )
    assert (summary.done, summary.failed) == (16, 0)
    stored = await dep.stored()
    assert {p: f.md5 for p, f in stored.items()} == files
    assert {f.uploads for f in stored.values()} == {1}
    assert any(k.endswith("/batchRetrain") for k in await dep.request_counts())


@pytest.mark.anyio
async def test_the_csp_service_prefix_is_used_when_chosen(dep: KeyueDeployment, tmp_path: Path) -> None:
    """api_prefix csp-service sends every call under /csp-service."""
    make_tree(tmp_path / "src", 4)
    summary = await ingest.run(run_config(dep, tmp_path / "src", tmp_path / "m.db", api_prefix="csp-service"))
    assert summary.done == 4
    counts = await dep.request_counts()
    assert all(route.split()[1].startswith("/csp-service") for route in counts), counts


@pytest.mark.anyio
async def test_a_wrong_endpoint_path_names_the_prefix(dep: KeyueDeployment) -> None:
    """An endpoint without the Keyue API (HTTP 404) is a configuration error pointing at --api-prefix."""
    target = target_for(dep, endpoint=dep.url + "/not-keyue")
    async with target:
        with pytest.raises(ConfigError, match="--api-prefix"):
            await target.open()


@pytest.mark.anyio
async def test_unknown_documents_are_reported_failed(dep: KeyueDeployment) -> None:
    """Receipts of unlisted documents, or of a directory gone, are FAILED with a reason, never dropped."""
    target = target_for(dep)
    async with target:
        await target.open()
        statuses = await target.poll(
            [
                Receipt("a.txt", remote_id="gone", extra={"dir_id": "0"}),
                Receipt("b.txt"),
                Receipt("c/d.txt", remote_id="x", extra={"dir_id": "404"}),
            ]
        )
    by_path = {s.rel_path: s for s in statuses}
    assert {p: (s.state, bool(s.reason)) for p, s in by_path.items()} == dict.fromkeys(
        ["a.txt", "b.txt", "c/d.txt"], (RemoteState.FAILED, True)
    )
    assert "'404' is not an existing directory" in str(by_path["c/d.txt"].reason)


class Heard:
    """What a run told the user and what it imported, in order (the progress channel and the Keyue API)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        say, send = Progress.message, KeyueApi.import_document

        def message(progress: Progress, line: str) -> None:
            self.events.append(("message", line))
            say(progress, line)

        async def import_document(api: KeyueApi, item: FileItem, name: str, *args: Any) -> tuple[Any, str]:
            self.events.append(("import", item.rel_path))
            return await send(api, item, name, *args)

        monkeypatch.setattr(Progress, "message", message)
        monkeypatch.setattr(KeyueApi, "import_document", import_document)

    def warnings(self) -> list[str]:
        return [line for kind, line in self.events if kind == "message" and line.startswith("warning:")]


def loud(config: RunConfig) -> RunConfig:
    """The run as a user sees it (messages on stderr, no bars), where the shared-name check is made."""
    return config.model_copy(update={"quiet": False, "progress": False})


@pytest.mark.anyio
async def test_shared_names_are_warned_before_the_first_upload(
    dep: KeyueDeployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --mirror-dirs, a/x.txt, b/x.txt, c/x.txt, d/y.md and e/y.md become documents of two names
    in one directory: one warning says which names and how many files, before any import; everything is
    still sent, and the walk's own counts (a hidden x.txt passed over) are not doubled by the check."""
    for rel in [*SHARED_NAMES_TREE, ".hidden/x.txt"]:
        item(tmp_path / "src", rel)
    heard = Heard(monkeypatch)
    summary = await ingest.run(loud(run_config(dep, tmp_path / "src", tmp_path / "m.db", mirror_dirs=False)))
    assert (summary.done, summary.failed) == (6, 0)
    [warning] = heard.warnings()
    assert warning.startswith("warning: 2 names are shared by 5 files in Keyue directory 0 (x.txt ×3, y.md ×2)")
    assert "--mirror-dirs" in warning
    assert heard.events[0] == ("message", warning)
    assert sorted(path for kind, path in heard.events if kind == "import") == SHARED_NAMES_TREE
    assert summary.passed_over["hidden (use --hidden)"] == 1
    assert warning in capsys.readouterr().err


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("files", "mirror_dirs"),
    [(SHARED_NAMES_TREE, True), (["a/x.txt", "b/y.md", "z.txt"], False)],
    ids=["mirror-dirs", "no-repeats"],
)
async def test_no_shared_names_warning_when_names_stay_apart(
    dep: KeyueDeployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: list[str], mirror_dirs: bool
) -> None:
    """With --mirror-dirs each folder is a directory of its own, and a tree without repeated names has
    nothing to warn about: no warning either way."""
    for rel in files:
        item(tmp_path / "src", rel)
    heard = Heard(monkeypatch)
    summary = await ingest.run(loud(run_config(dep, tmp_path / "src", tmp_path / "m.db", mirror_dirs=mirror_dirs)))
    assert (summary.done, summary.failed) == (len(files), 0)
    assert heard.warnings() == []


async def names(*values: str) -> AsyncIterator[str]:
    for value in values:
        yield value


@pytest.mark.anyio
async def test_shared_names_are_counted_in_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The most shared names come first, the rest are counted; past MAX_NAMES distinct names the later
    ones are no longer remembered and the warning says "at least"."""
    many = [f"n{i}.txt" for i in range(8) for _ in range(2)]
    shared = await count_shared_names(names("a", "b", "a", "c", "a", *many, "b"))
    assert shared is not None
    assert (shared.names, shared.files, shared.complete) == (10, 21, True)
    assert shared.examples == [("a", 3), ("b", 2), ("n0.txt", 2), ("n1.txt", 2), ("n2.txt", 2)]
    assert "(a ×3, b ×2, n0.txt ×2, n1.txt ×2, n2.txt ×2, and 5 more)" in shared_names_warning(shared, "7")
    assert await count_shared_names(names("a", "b", "c")) is None
    monkeypatch.setattr(keyue_names, "MAX_NAMES", 2)
    capped = await count_shared_names(names("a", "b", "c", "c", "a"))
    assert capped is not None
    assert (capped.names, capped.files, capped.complete) == (1, 2, False)
    assert shared_names_warning(capped, "0").startswith("warning: at least 1 name is shared by 2 files in Keyue")


# --- envelopes and settings ---------------------------------------------------------------------------------


def reply(status: int, body: Any, **headers: str) -> HttpReply:
    return HttpReply(status, headers, body)


def refused(code: int, tip: str = "", msg: str = "服务器处理该请求失败,请检查请求是否合法") -> dict[str, Any]:
    return {"msg": msg, "requestId": "9b49672d990d45b0be781582f5e34511", "code": code, "tip": tip}


def test_envelopes_map_to_the_error_tree() -> None:
    """Success returns data; 401, 429, 5xx, 4000526 and 4002012 become the matching exceptions."""
    assert check_envelope(reply(200, {"time": 1, "data": {"id": "x"}, "code": 200, "msg": "OK"}), "op") == {"id": "x"}
    with pytest.raises(AuthError, match="KEYUE_TOKEN"):
        check_envelope(reply(401, refused(4002012)), "op")
    with pytest.raises(RateLimitedError) as limited:
        check_envelope(reply(429, refused(429), **{"Retry-After": "3"}), "op")
    assert limited.value.retry_after == 3
    with pytest.raises(TransientError):
        check_envelope(reply(502, "<html>bad gateway</html>"), "op")
    with pytest.raises(TransientError, match="without an envelope"):
        check_envelope(reply(200, "<html>ok</html>"), "op")
    with pytest.raises(VersionConflict):
        check_envelope(reply(200, refused(4000526, msg="目录列表数据版本不一致,请刷新重试")), "op")
    with pytest.raises(PermanentError) as invalid:
        check_envelope(reply(200, refused(4002012, "dirId '9' is not an existing directory")), "import of a.txt")
    assert invalid.value.detail == (
        "Keyue refused (4002012: 服务器处理该请求失败,请检查请求是否合法 (dirId '9' is not an existing directory))"
    )


def test_a_token_echoed_by_the_server_is_scrubbed() -> None:
    """Should a server ever quote the token, the error message does not."""
    with pytest.raises(AuthError) as err:
        check_envelope(reply(401, refused(4002012, "bad token sk-123")), "op", secret="sk-123")
    assert "sk-123" not in str(err.value)


def keyue_settings(**values: Any) -> KeyueTargetConfig:
    base = {"type": "keyue", "endpoint": "http://127.0.0.1:1", "token": SecretStr("t"), "uid": "u", "username": "n"}
    return KeyueTargetConfig.model_validate(base | values)


def test_task_extend_carries_only_the_options_set() -> None:
    """No option means automatic ("{}"); set options go as the documented keys."""
    assert keyue_settings().task_extend() == "{}"
    assert json.loads(keyue_settings(chunk_size="700", split_by="wrap", pre_handle_text=True).task_extend()) == {
        "split_by": "wrap",
        "chunk_size": 700,
        "pre_handle_text": True,
    }


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"chunk_size": 801},
            "target.chunk_size: must be a whole number from 200 to 800 (Keyue's allowed range; --chunk-size)",
        ),
        ({"overlap_proportion": 20.5}, "from 0 to 20"),
        ({"split_by": "line"}, "'punc' or 'wrap'"),
        ({"username": "张三"}, "printable ASCII"),
        ({"uid": " "}, "uid is empty"),
        ({"token": SecretStr("")}, "KEYUE_TOKEN"),
    ],
)
def test_invalid_settings_name_the_field_and_the_allowed_values(values: dict[str, Any], expected: str) -> None:
    """Settings are checked before anything is sent, in one line naming the field."""
    with pytest.raises(ValidationError) as err:
        RunConfig.model_validate(
            {
                "source": {"path": "."},
                "target": {"type": "keyue", "endpoint": "http://127.0.0.1:1", "token": "t", "uid": "u", "username": "n"}
                | values,
            }
        )
    assert expected in validation_message(err.value, "settings")


def test_describe_and_identity_never_hold_the_token() -> None:
    """The destination as shown and recorded names directory, user and layout, not the secret."""
    target = KeyueTarget(keyue_settings(token=SecretStr("sk-secret"), dir_id="42", mirror_dirs=True), TargetContext())
    assert "sk-secret" not in target.describe() + target.identity()
    assert target.identity() == "keyue:http://127.0.0.1:1/open/v1/api/v2/user/u/dir/42/mirror"
    anyio.run(target.aclose)
