"""``ingest run --ray``: worker actors on a real, local Ray cluster (``ray.init(num_cpus=2)``, one for the
whole session: Ray takes seconds to start). The emulator runs in its own process and tells how many
times each file was stored: every file exactly once, the manifest all done, also when Ray has to
restart an actor that was killed mid-run (the restarted worker, or the other one, takes its claims
over once their leases expire).

Behind the ``ray`` marker: the default ``pytest`` run deselects them, ``.ci/run`` runs them explicitly.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from ingest.config import EngineConfig, RunConfig, SourceConfig
from ingest.manifest import open_manifest, parse_location
from ingest.platforms.moi.target import MoiTargetConfig
from ingest.report import RunSummary
from tests.conftest import make_tree
from tests.harness import MOI, Faults, ServerProcess, run_cli
from tests.test_scale import assert_exactly_once, counts, wait_until

# One cluster per session: in a parallel run, both tests go to the same worker (and its one cluster).
pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]
ray = pytest.importorskip("ray")


def test_ray_cli_two_actors_store_every_file_once(ray_cluster: str, tmp_path: Path) -> None:
    """The real command, ``ingest run … --ray ADDRESS --workers 2``, on the session's cluster: two worker
    actors share one SQLite job; every file stored once, one summary, two workers in the manifest."""
    expected = make_tree(tmp_path / "docs", 60)
    server = ServerProcess(MOI.serve_command(tmp_path / "data", Faults(task_delay_ms=50, latency_ms=10)))
    try:
        flags, env = MOI.cli(server.url)
        args = ["run", "docs", *flags, "--manifest", "m.db", "--ray", ray_cluster, "--workers", "2",
                "--concurrency", "2", "--batch-files", "1", "--json", "-q"]  # fmt: skip
        result = run_cli(args, env=env, cwd=tmp_path, timeout=240)
        assert result.returncode == 0, result.stdout + result.stderr
        assert_exactly_once(server.url, expected)
    finally:
        server.stop()
    assert '"done": 60' in result.stdout  # the combined summary of both actors
    assert counts(str(tmp_path / "m.db"))["done"] == 60
    with open_manifest(tmp_path / "m.db") as m:
        assert len(m.workers()) == 2
        assert sum(w.done for w in m.workers()) == 60


def test_ray_actor_killed_mid_run_is_restarted_and_the_job_converges(ray_cluster: str, pg: Any, tmp_path: Path) -> None:
    """Two actors on one PostgreSQL job; one is killed mid-run (``ray.kill(actor, no_restart=False)``).
    Ray restarts it and retries its call; the killed worker's claims are taken over after their lease:
    every file stored once, all done, and the manifest shows the dead worker (never stopped) besides
    the two live ones."""
    from ingest.cli import fanout
    from ingest.engine.ray_workers import run_actors

    expected = make_tree(tmp_path / "docs", 120)
    location = pg.url(f"ray-{uuid.uuid4().hex[:8]}")
    server = ServerProcess(MOI.serve_command(tmp_path / "data", Faults(task_delay_ms=150, latency_ms=30)))
    try:
        config = RunConfig(
            source=SourceConfig(path=tmp_path / "docs"),
            target=MoiTargetConfig(endpoint=server.url, api_key=SecretStr(MOI.api_key), volume_id=MOI.volume_id),
            engine=EngineConfig(concurrency=2, batch_files=1, poll_initial=0.05, poll_max=0.2),
            manifest=location,
            lease=2,
            quiet=True,
        )
        result: list[RunSummary | BaseException] = []

        def drive() -> None:
            try:
                result.append(fanout.run_on_ray(config, 2, None))
            except BaseException as exc:  # handed to the test thread
                result.append(exc)

        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        wait_until(lambda: bool(result) or _done(location) >= 15, "the actors to be mid-run", timeout=120)
        assert not result, result  # still running: the kill lands mid-run
        victim = run_actors.actors[0]  # type: ignore[attr-defined]
        ray.kill(victim, no_restart=False)
        killed_at = time.monotonic()
        driver.join(240)
        assert not driver.is_alive(), "the job did not converge after the kill"
        stored_once = _stored(server.url, expected)
    finally:
        server.stop()
    summary = result[0]
    assert isinstance(summary, RunSummary), summary
    assert summary.failed == 0
    assert stored_once
    assert counts(location) == {"pending": 0, "uploading": 0, "processing": 0, "done": 120, "failed": 0}
    with open_manifest(parse_location(location)) as m:
        workers = m.workers()
        assert m.walk_state().done
    assert len(workers) == 3, workers  # the two first actors and the restarted one
    assert [w.stopped for w in workers].count(False) == 1  # the killed one never said goodbye
    assert sum(w.takeovers for w in workers) > 0  # the killed actor's claims were taken over
    assert time.monotonic() - killed_at < 240


def _done(location: str) -> int:
    try:
        return counts(location)["done"]
    except Exception:
        return 0  # the job is not created yet


def _stored(url: str, expected: dict[str, str]) -> bool:
    assert_exactly_once(url, expected)
    return True
