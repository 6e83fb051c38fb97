"""Per-target test harnesses: how to start each platform's emulator and read back what it stored.

The conformance suite (``test_conformance.py``) and the crash tests run against every harness listed
in ``HARNESSES``; a new target joins them by adding its harness here, in the manner of rclone's
``fstests``. A harness speaks in platform-neutral terms: faults, stored files, flags for the CLI.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import aiohttp
from pydantic import SecretStr

from ingest.platforms.keyue.config import KeyueTargetConfig
from ingest.platforms.moi.target import MoiTargetConfig
from ingest.platforms.viking.config import VikingTargetConfig
from tests.conftest import SECRET_ENV


@dataclass(frozen=True)
class Faults:
    latency_ms: int = 0
    error_rate: float = 0.0
    rate_limit: float | None = None
    reset_rate: float = 0.0
    task_fail_rate: float = 0.0
    task_delay_ms: int = 30


@dataclass(frozen=True)
class StoredFile:
    path: str
    size: int
    md5: str
    uploads: int


#: The config field holding each target's secret, for the wrong-credentials checks.
SECRET_FIELD = {"moi": "api_key", "keyue": "token", "viking": "secret_key", "moi-loadtask": "api_key"}


class Deployment(Protocol):
    """A running emulator, seen from a test."""

    url: str
    target_config: Any
    #: Flags for ``ingest run`` (besides the source) and environment holding the secrets.
    cli_flags: list[str]
    env: dict[str, str]

    async def stored(self) -> dict[str, StoredFile]: ...
    def with_wrong_credentials(self, secret: str) -> Any:
        """The target config with its secret replaced by ``secret``."""
        ...

    async def request_counts(self) -> dict[str, int]: ...
    def set_faults(self, **changes: Any) -> None: ...
    async def run(self, config: Any) -> Any:
        """``ingest.run(config)``, or what stands for it with this deployment's source (a ``RunConfig``)."""
        ...

    async def retry_failed(self, config: Any) -> Any: ...
    async def documents(self) -> list[dict[str, Any]]:
        """``/_emulator/documents`` of this destination: one entry per document (every version apart),
        ``{id, name, folder, md5, size, created, state, …}``; ``id`` is the remote id a receipt carries."""
        ...

    async def add_foreign_document(self, rel_path: str, data: bytes) -> str:
        """Add a document through the platform API, as someone else would (not through a run); its id."""
        ...

    async def delete_behind_our_back(self, remote_id: str) -> None:
        """Delete a document through the platform API, as someone else would."""
        ...


class _EmulatorHooks:
    """The parts of a ``Deployment`` every platform does alike: the emulator's test hooks (the same
    ``/_emulator/files`` and ``/_emulator/stats`` everywhere), the secret swap, and faults changed live."""

    url: str
    app: Any
    target_config: Any
    #: The neutral ``Faults`` fields the emulator keeps on its state, by its own attribute name; every
    #: other field is one of the shared ``faults.settings``.
    state_fields: ClassVar[Mapping[str, str]]

    def _state(self) -> Any:
        """The running emulator's state object (imported late: the harness loads no emulator by itself)."""
        raise NotImplementedError

    def with_wrong_credentials(self, secret: str) -> Any:
        return self.target_config.model_copy(update={SECRET_FIELD[self.target_config.type]: SecretStr(secret)})

    async def _get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as s, s.get(self.url + path) as r:
            r.raise_for_status()
            return await r.json()

    async def _stored_where(self, keep: Callable[[dict[str, Any]], bool]) -> dict[str, StoredFile]:
        return {
            f["path"]: StoredFile(f["path"], f["size"], f["md5"], f["uploads"])
            for f in await self._get("/_emulator/files")
            if keep(f)
        }

    async def request_counts(self) -> dict[str, int]:
        return dict((await self._get("/_emulator/stats"))["requests"])

    def _in_destination(self, document: Mapping[str, Any]) -> bool:
        """Whether a ``/_emulator/documents`` entry belongs to this deployment's destination."""
        return True

    def _platform_config(self) -> Any:
        """The target settings ``add_foreign_document`` / ``delete_behind_our_back`` use."""
        return self.target_config

    async def documents(self) -> list[dict[str, Any]]:
        return [d for d in await self._get("/_emulator/documents") if self._in_destination(d)]

    @asynccontextmanager
    async def target(self) -> AsyncIterator[Any]:
        """The platform's target, opened, for calls a run does not make (``list_documents``, ``delete``)."""
        from ingest.platforms.base import TargetContext
        from ingest.platforms.registry import build_target

        target = build_target(self._platform_config(), TargetContext(connections=4))
        try:
            await target.open()
            yield target
        finally:
            await target.aclose()

    async def add_foreign_document(self, rel_path: str, data: bytes) -> str:
        from ingest.models import FileItem

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "body"
            path.write_bytes(data)
            item = FileItem(rel_path, path, len(data), path.stat().st_mtime_ns)
            async with self.target() as target:
                (receipt,) = await target.submit([item], dedup=False)
        if receipt.error is not None or receipt.remote_id is None:
            raise AssertionError(f"the platform refused {rel_path}: {receipt.error}")
        return str(receipt.remote_id)

    async def delete_behind_our_back(self, remote_id: str) -> None:
        async with self.target() as target:
            gone = await target.delete([remote_id])
        if gone != [remote_id]:
            raise AssertionError(f"the platform did not delete {remote_id}")

    def set_faults(self, **changes: Any) -> None:
        state = self._state()
        for key, value in changes.items():
            if key in self.state_fields:
                setattr(state, self.state_fields[key], value)
            else:
                setattr(state.faults.settings, key, value)

    async def run(self, config: Any) -> Any:
        import ingest

        return await ingest.run(config)

    async def retry_failed(self, config: Any) -> Any:
        import ingest

        return await ingest.retry_failed(config)


class _CommandLine:
    """How the crash tests spell one run on the command line; ``command`` says what differs per harness."""

    #: Bodies go over the wire from here: mid-body kills and resets apply.
    streams_bodies = True
    #: The flags of the engine's worker count and batch size.
    concurrency_flag = "--concurrency"
    batch_flag = "--batch-files"
    default_batch: int | None = None

    def command(self, url: str, source: Path) -> tuple[list[str], dict[str, str]]:
        """The command reading ``source`` into the deployment at ``url``, and its environment."""
        raise NotImplementedError

    def run_args(
        self,
        url: str,
        cwd: Path,
        source: str,
        manifest: str,
        *,
        concurrency: int,
        batch_files: int | None = None,
        read_chunk_size: str | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """The command line of one run of ``cwd/source`` (and its environment), for the crash tests."""
        args, env = self.command(url, cwd / source)
        args += ["--manifest", manifest, self.concurrency_flag, str(concurrency)]
        if (batch := batch_files or self.default_batch) is not None:
            args += [self.batch_flag, str(batch)]
        if read_chunk_size is not None and self.streams_bodies:
            args += ["--read-chunk-size", read_chunk_size]
        return [*args, "-q"], env


class _RunsLocalTrees(_CommandLine):
    """A harness whose runs read a local tree: ``ingest run SOURCE`` with the target's flags."""

    def cli(self, url: str) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def command(self, url: str, source: Path) -> tuple[list[str], dict[str, str]]:
        flags, env = self.cli(url)
        return ["run", source.name, *flags], env


@dataclass
class MoiDeployment(_EmulatorHooks):
    """A running MOI emulator (see ``Deployment``)."""

    state_fields: ClassVar[Mapping[str, str]] = {"task_fail_rate": "task_fail_rate", "task_delay_ms": "task_delay_ms"}

    url: str
    app: Any
    volume_id: str
    api_key: str
    data_dir: Path
    target_config: MoiTargetConfig = field(init=False)
    cli_flags: list[str] = field(init=False)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.target_config = MoiTargetConfig(
            endpoint=self.url, api_key=SecretStr(self.api_key), volume_id=self.volume_id
        )
        self.cli_flags = ["--target", "moi", "--endpoint", self.url, "--volume-id", self.volume_id]
        self.env = {"MOI_KEY": self.api_key}

    def _state(self) -> Any:
        from ingest.emulators.moi import MOI_STATE

        return self.app[MOI_STATE]

    async def stored(self) -> dict[str, StoredFile]:
        return await self._stored_where(lambda f: str(f["volume_id"]) == self.volume_id)

    def _in_destination(self, document: Mapping[str, Any]) -> bool:
        return str(document["volume_id"]) == self.volume_id

    def _platform_config(self) -> Any:
        # Uploads into the volume, also for the load-task deployment (whose own target loads a bucket).
        return MoiTargetConfig(endpoint=self.url, api_key=SecretStr(self.api_key), volume_id=self.volume_id)


class MoiHarness(_RunsLocalTrees):
    name = "moi"
    api_key = "test-key"
    volume_id = "1001"

    @asynccontextmanager
    async def start(
        self, data_dir: Path, faults: Faults = Faults(), *, seed: int | None = 7, watch: Any = None
    ) -> AsyncIterator[MoiDeployment]:
        """``watch``: an aiohttp middleware put outermost, for a test that observes the requests as they
        arrive (a served app's middlewares cannot change once it has started)."""
        from ingest.emulators.kit.server import serve_in_background
        from ingest.emulators.moi import MoiEmulatorConfig, create_moi_app

        app = create_moi_app(
            MoiEmulatorConfig(
                data_dir=data_dir,
                api_key=self.api_key,
                volumes=(self.volume_id,),
                task_delay_ms=faults.task_delay_ms,
                latency_ms=faults.latency_ms,
                error_rate=faults.error_rate,
                rate_limit=faults.rate_limit,
                reset_rate=faults.reset_rate,
                task_fail_rate=faults.task_fail_rate,
                seed=seed,
            )
        )
        if watch is not None:
            app.middlewares.insert(0, watch)
        async with serve_in_background(app) as url:
            yield MoiDeployment(url, app, self.volume_id, self.api_key, data_dir)

    def serve_command(self, data_dir: Path, faults: Faults = Faults()) -> list[str]:
        """``ingest serve`` on a free port, for tests that kill the client process."""
        return [
            sys.executable, "-m", "ingest", "serve", "moi", "--port", "0", "--data-dir", str(data_dir),
            "--api-key", self.api_key, "--volume", self.volume_id, "--task-delay-ms", str(faults.task_delay_ms),
            "--latency-ms", str(faults.latency_ms),
        ]  # fmt: skip

    def cli(self, url: str) -> tuple[list[str], dict[str, str]]:
        return ["--target", "moi", "--endpoint", url, "--volume-id", self.volume_id], {"MOI_KEY": self.api_key}

    @staticmethod
    def stored_bodies(data_dir: Path, volume_id: str = volume_id) -> dict[str, bytes]:
        """Every file a stopped emulator's data dir holds in ``volume_id``, path -> body, read as the
        emulator reads them (a small body is a database row, not a file of its own)."""
        from ingest.emulators.moi.store import MoiStore

        store = MoiStore(data_dir, None)
        try:
            bodies = {}
            for f in store.stored_files():
                if f["volume_id"] == volume_id and (body := store.open_body(volume_id, f["path"])) is not None:
                    with body:
                        bodies[f["path"]] = body.read()
            return bodies
        finally:
            store.close()


MOI = MoiHarness()


@dataclass
class KeyueDeployment(_EmulatorHooks):
    state_fields: ClassVar[Mapping[str, str]] = {"task_fail_rate": "fail_rate", "task_delay_ms": "learn_delay_ms"}

    url: str
    app: Any
    harness: KeyueHarness
    target_config: KeyueTargetConfig = field(init=False)
    cli_flags: list[str] = field(init=False)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        h = self.harness
        self.target_config = KeyueTargetConfig(
            endpoint=self.url, token=SecretStr(h.token), uid=h.uid, username=h.username, dir_id="0", mirror_dirs=True
        )
        self.cli_flags, self.env = h.cli(self.url)

    def _state(self) -> Any:
        from ingest.emulators.keyue import KEYUE_STATE

        return self.app[KEYUE_STATE]

    async def stored(self) -> dict[str, StoredFile]:
        """Documents by directory path + name, below the default directory (the destination)."""
        return await self._stored_where(lambda f: True)


class KeyueHarness(_RunsLocalTrees):
    """Keyue with ``--mirror-dirs``: documents keep their folders, so stored paths match the source
    tree (without it, every file lands in one directory and equal names in different folders collide).
    Learning takes ``task_delay_ms``, then enhancement half as long (learnStatus 2 is waited out)."""

    name = "keyue"
    token = "test-token"
    uid = "u1"
    username = "alice"

    @asynccontextmanager
    async def start(
        self, data_dir: Path, faults: Faults = Faults(), *, seed: int | None = 7
    ) -> AsyncIterator[KeyueDeployment]:
        from ingest.emulators.keyue import KeyueEmulatorConfig, create_keyue_app
        from ingest.emulators.kit.server import serve_in_background

        app = create_keyue_app(
            KeyueEmulatorConfig(
                data_dir=data_dir,
                token=self.token,
                learn_delay_ms=faults.task_delay_ms,
                enhance_delay_ms=faults.task_delay_ms // 2,
                fail_rate=faults.task_fail_rate,
                latency_ms=faults.latency_ms,
                error_rate=faults.error_rate,
                rate_limit=faults.rate_limit,
                reset_rate=faults.reset_rate,
                seed=seed,
            )
        )
        async with serve_in_background(app) as url:
            yield KeyueDeployment(url, app, self)

    def serve_command(self, data_dir: Path, faults: Faults = Faults()) -> list[str]:
        """``ingest serve keyue`` on a free port, for tests that kill the client process."""
        return [
            sys.executable, "-m", "ingest", "serve", "keyue", "--port", "0", "--data-dir", str(data_dir),
            "--token", self.token, "--learn-delay-ms", str(faults.task_delay_ms),
            "--enhance-delay-ms", str(faults.task_delay_ms // 2), "--latency-ms", str(faults.latency_ms),
        ]  # fmt: skip

    def cli(self, url: str) -> tuple[list[str], dict[str, str]]:
        flags = ["--target", "keyue", "--endpoint", url, "--uid", self.uid, "--username", self.username]
        return [*flags, "--dir-id", "0", "--mirror-dirs"], {"KEYUE_TOKEN": self.token}


KEYUE = KeyueHarness()


class MotoS3:
    """One moto S3 server (``moto.server.ThreadedMotoServer``) on loopback for the whole test session,
    with the staging bucket, started on first use and stopped at exit.

    It runs in its own process: moto is pure Python, and sharing the test process's GIL with the engine
    and the emulator would slow every test that stages files. It outlives every client and emulator
    process a test starts (crash tests kill clients; staged objects must survive), and it stops when
    the test process ends even if that one is killed (it exits when its stdin closes).
    """

    bucket = "ingest-stage"
    region = "cn-beijing"
    _SERVER = (
        "import logging, sys\n"
        "import moto.backends\n"
        "from moto.server import ThreadedMotoServer\n"
        "logging.getLogger('werkzeug').setLevel(logging.WARNING)\n"
        # moto lists its own package folder on every request (half its time per request); list it once.
        "modules = tuple(moto.backends.list_of_moto_modules())\n"
        "moto.backends.list_of_moto_modules = lambda: modules\n"
        "server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
        "server.start()\n"
        "print('http://%s:%d' % server.get_host_and_port(), flush=True)\n"
        "sys.stdin.read()\n"
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._url: str | None = None

    def url(self) -> str:
        with self._lock:
            if self._url is None:
                import boto3

                proc = subprocess.Popen(
                    [sys.executable, "-c", self._SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
                assert proc.stdout is not None
                url = proc.stdout.readline().strip()
                if not url.startswith("http://"):
                    proc.kill()
                    raise RuntimeError(f"moto did not start: {url!r}")
                atexit.register(_stop, proc)
                s3 = boto3.client(
                    "s3", endpoint_url=url, region_name=self.region, aws_access_key_id="x", aws_secret_access_key="x"
                )
                s3.create_bucket(Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": self.region})
                self._url = url
            return self._url


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


MOTO = MotoS3()


@dataclass
class VikingDeployment(_EmulatorHooks):
    state_fields: ClassVar[Mapping[str, str]] = {"task_fail_rate": "fail_rate", "task_delay_ms": "process_delay_ms"}

    url: str
    app: Any
    harness: VikingHarness
    target_config: VikingTargetConfig = field(init=False)
    cli_flags: list[str] = field(init=False)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        h = self.harness
        self.target_config = VikingTargetConfig(
            endpoint=self.url,
            region=MOTO.region,
            access_key=SecretStr(h.access_key),
            secret_key=SecretStr(h.secret_key),
            collection_name=h.collection,
            staging={"endpoint": MOTO.url(), "bucket": MOTO.bucket},
        )
        self.cli_flags, self.env = h.cli(self.url)

    def _state(self) -> Any:
        from ingest.emulators.viking import VIKING_STATE

        return self.app[VIKING_STATE]

    async def stored(self) -> dict[str, StoredFile]:
        """Documents of the knowledge base by the source path the client recorded on the staged object."""
        return await self._stored_where(lambda f: f["collection"] == self.harness.collection)

    def _in_destination(self, document: Mapping[str, Any]) -> bool:
        return bool(document["collection"] == self.harness.collection)


class VikingHarness(_RunsLocalTrees):
    """VikingDB: files are staged in a moto S3 server (``MOTO``), which the emulator reads by tos_path.
    ``task_fail_rate`` makes documents end with process_status 1; the engine adds them again."""

    name = "viking"
    #: A VikingDB knowledge base holds at most this many documents (code 1001010): soaks stay below it.
    max_documents = 10_000
    access_key = "AKLTtestaccesskey"
    secret_key = "test-secret-key"
    collection = "kb1"

    @asynccontextmanager
    async def start(
        self, data_dir: Path, faults: Faults = Faults(), *, seed: int | None = 7
    ) -> AsyncIterator[VikingDeployment]:
        import anyio

        from ingest.emulators.kit.server import serve_in_background
        from ingest.emulators.viking import VikingEmulatorConfig, create_viking_app

        s3_url = await anyio.to_thread.run_sync(MOTO.url)
        app = create_viking_app(
            VikingEmulatorConfig(
                data_dir=data_dir,
                access_key=self.access_key,
                secret_key=self.secret_key,
                collections=(self.collection,),
                tos_endpoint=s3_url,
                process_delay_ms=faults.task_delay_ms,
                fail_rate=faults.task_fail_rate,
                latency_ms=faults.latency_ms,
                error_rate=faults.error_rate,
                rate_limit=faults.rate_limit,
                reset_rate=faults.reset_rate,
                seed=seed,
            )
        )
        async with serve_in_background(app) as url:
            yield VikingDeployment(url, app, self)

    def serve_command(self, data_dir: Path, faults: Faults = Faults()) -> list[str]:
        """``ingest serve viking`` on a free port, reading staged files from the shared moto server."""
        return [
            sys.executable, "-m", "ingest", "serve", "viking", "--port", "0", "--data-dir", str(data_dir),
            "--access-key", self.access_key, "--secret-key", self.secret_key, "--collection", self.collection,
            "--tos-endpoint", MOTO.url(), "--process-delay-ms", str(faults.task_delay_ms),
            "--latency-ms", str(faults.latency_ms),
        ]  # fmt: skip

    def cli(self, url: str) -> tuple[list[str], dict[str, str]]:
        flags = [
            "--target", "viking", "--endpoint", url, "--region", MOTO.region, "--collection", self.collection,
            "--staging-endpoint", MOTO.url(), "--staging-bucket", MOTO.bucket,
        ]  # fmt: skip
        return flags, {"VOLC_ACCESSKEY": self.access_key, "VOLC_SECRETKEY": self.secret_key}


VIKING = VikingHarness()
#: The targets ``ingest run`` sends local files to.
HARNESSES = [MOI, KEYUE, VIKING]


# ----- MOI load tasks: ``ingest migrate`` from a bucket behind a connector ------------------------------------


def stage_tree(bucket: str, root: Path | None) -> None:
    """Make bucket ``bucket`` on ``MOTO`` hold exactly the files under ``root`` (keys = relative paths;
    ``None``: no file)."""
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=MOTO.url(), region_name=MOTO.region, aws_access_key_id="x", aws_secret_access_key="x"
    )
    try:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": MOTO.region})
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    files = sorted(root.rglob("*")) if root is not None else []
    keys = {p.relative_to(root).as_posix(): p for p in files if root is not None and p.is_file()}
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    for gone in {o["Key"] for o in listed} - set(keys):
        s3.delete_object(Bucket=bucket, Key=gone)
    for key, path in keys.items():
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


async def create_connector(url: str, api_key: str, bucket: str) -> int:
    from ingest.platforms.moi.client import MoiClient
    from ingest.platforms.moi.wire import ConnectorCreate, S3Config, SourceType

    config = S3Config(
        endpoint=MOTO.url(),
        access_key_id="x",
        access_key_secret=SecretStr("x"),
        bucket_name=bucket,
        region=MOTO.region,
        path_style=True,
    )
    async with MoiClient(url, api_key) as client:
        created = await client.create_connector(ConnectorCreate(name=bucket, source_type=SourceType.S3, config=config))
    return created.id


_buckets = iter(range(1, 1 << 30))


@dataclass
class LoadTaskDeployment(MoiDeployment):
    """A running MOI emulator fed from a moto bucket: a run stages its local tree into the bucket, then
    loads the bucket with ``ingest migrate``. ``target_config`` is the load-task target's settings."""

    bucket: str = ""
    connector_id: int = 0

    def __post_init__(self) -> None:
        from ingest.platforms.moi.loadtask_target import LoadTaskTargetConfig

        super().__post_init__()
        self.target_config = LoadTaskTargetConfig(  # type: ignore[assignment]
            endpoint=self.url,
            api_key=SecretStr(self.api_key),
            connector_id=self.connector_id,
            volume_id=self.volume_id,
            uris_per_task=LoadTaskHarness.uris_per_task,
        )

    async def run(self, config: Any) -> Any:
        return await self._migrate(config, only_failed=False)

    async def retry_failed(self, config: Any) -> Any:
        return await self._migrate(config, only_failed=True)

    async def _migrate(self, config: Any, *, only_failed: bool) -> Any:
        """``config`` (a ``RunConfig``) as a migration: its tree staged into the bucket, its engine settings."""
        import anyio

        from ingest.platforms.moi.loadtasks import MigrateConfig, migrate

        await anyio.to_thread.run_sync(stage_tree, self.bucket, config.source.path)
        target, engine = config.target, config.engine
        migration = MigrateConfig(
            endpoint=target.endpoint,
            api_key=target.api_key,
            connector_id=target.connector_id,
            volume_id=target.volume_id,
            manifest=config.manifest,
            report=config.report,
            uris_per_task=engine.batch_files or target.uris_per_task,
            max_attempts=engine.max_attempts,
            max_tasks=engine.concurrency,
            request_retries=engine.request_retries,
            task_timeout=engine.task_timeout,
            poll_initial=engine.poll_initial,
            poll_max=engine.poll_max,
            quiet=config.quiet,
            progress=config.progress,
        )
        return await migrate(migration, only_failed=only_failed)


class LoadTaskHarness(_CommandLine):
    """``ingest migrate``: MOI loads a connector's bucket (on ``MOTO``) into the volume with load tasks.

    The local tree a test makes is staged into the bucket before each run, so the same behaviours can be
    checked. Nothing is streamed from here (MOI reads the bucket itself): behaviours of request bodies
    do not apply (``streams_bodies``)."""

    name = "moi-loadtask"
    api_key = MOI.api_key
    volume_id = MOI.volume_id
    #: Small tasks, so that a few dozen files make many of them (the crash points count tasks).
    uris_per_task = 5
    streams_bodies = False
    concurrency_flag = "--max-tasks"
    batch_flag = "--uris-per-task"
    default_batch = uris_per_task

    @asynccontextmanager
    async def start(
        self, data_dir: Path, faults: Faults = Faults(), *, seed: int | None = 7
    ) -> AsyncIterator[LoadTaskDeployment]:
        import anyio

        async with MOI.start(data_dir, faults, seed=seed) as moi:
            bucket = f"loadtask-{os.getpid()}-{next(_buckets)}"
            await anyio.to_thread.run_sync(stage_tree, bucket, None)
            connector = await create_connector(moi.url, self.api_key, bucket)
            yield LoadTaskDeployment(moi.url, moi.app, moi.volume_id, moi.api_key, data_dir, bucket, connector)

    def serve_command(self, data_dir: Path, faults: Faults = Faults()) -> list[str]:
        return MOI.serve_command(data_dir, faults)

    def command(self, url: str, source: Path) -> tuple[list[str], dict[str, str]]:
        """Stage ``source`` into a new bucket behind a new connector; ``ingest migrate`` of it."""
        import anyio

        bucket = f"loadtask-{os.getpid()}-{next(_buckets)}"
        stage_tree(bucket, source)
        connector = anyio.run(create_connector, url, self.api_key, bucket)
        args = ["migrate", "--endpoint", url, "--connector", str(connector), "--volume-id", self.volume_id]
        return args, {"MOI_KEY": self.api_key}


MOI_LOADTASK = LoadTaskHarness()
#: Every target the engine drives, ``ingest migrate``'s load tasks included: the crash and conformance suites.
ENGINE_HARNESSES: list[Any] = [*HARNESSES, MOI_LOADTASK]


class ServerProcess:
    """An emulator in its own process (``ingest serve``), read back through its test hooks."""

    def __init__(self, command: list[str], *, env: dict[str, str] | None = None) -> None:
        # stderr goes to a file: an undrained pipe would block the server once it filled up.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env={**os.environ, **(env or {})}
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "http://" not in line:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)  # usually it has ended: then its last words are all in the file
            said = self.stderr()  # before stop() closes the file
            self.stop()
            raise RuntimeError(f"emulator did not start: {line!r} {said}")
        self.url = line[line.index("http://") :].split()[0]

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def run_cli(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m ingest ARGS`` in a subprocess, with a clean environment plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if k not in (*SECRET_ENV, "INGEST_FAILPOINT")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout
    )
