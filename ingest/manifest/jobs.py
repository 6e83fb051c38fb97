"""The shared-job contract: many engine processes, on one machine or many, working one job.

A job is one source into one destination, recorded in one manifest (a SQLite file, or one named job
in a PostgreSQL database). Work moves through the manifest, never between processes::

    planner (elected) ── walk ──► pending rows ──► claim (batch, lease) ──► engine ──► fenced writes
                                                      ▲        │ heartbeat extends the lease
                                                      └────────┘ an expired lease is taken over

- **Claims.** ``claim`` hands out up to N unfinished rows nobody holds (or whose holder's lease
  expired), stamping each with the claimant (``owner``), a lease expiry and a new ``fence`` (a counter
  bumped by every claim). ``heartbeat`` extends the leases of everything a live worker holds.
- **Fencing.** Every state change a worker makes carries ``Owner`` (its id and the fence of each of
  its files) and only applies when both still match: a worker that lost a lease (paused, partitioned)
  cannot overwrite the one that took over. The paths a write could not change are returned; the
  engine drops those files.
- **Takeover.** A taken-over row keeps its state, so the one resume rule (``base.decide``) applies:
  ``uploading`` is sent again with the platform's dedup (or ``find_existing``), ``processing`` polled.
- **One walk per job.** One process at a time holds the planner role (a PostgreSQL advisory lock; a
  lease row in SQLite) and records the walk as pending rows with its position, so a successor resumes
  where it stopped; workers claim while the walk goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ingest.manifest.base import FileRecord, Manifest, Owner
from ingest.models import FileItem, Receipt

__all__ = ["TERMINAL", "UNFINISHED", "Claim", "JobStore", "Owner", "WalkState", "WorkerInfo"]

#: States a claim can pick up (nobody has finished them) and states nobody touches again this walk.
UNFINISHED = ("pending", "uploading", "processing")
TERMINAL = ("done", "failed")


@dataclass(frozen=True, slots=True)
class Claim:
    """One row handed to a worker: the record as it was, its new fence, and whether it was taken over
    from a worker whose lease had expired."""

    record: FileRecord
    fence: int
    taken_over: bool


@dataclass(frozen=True, slots=True)
class WalkState:
    """The planner's position: the last path recorded, how many entries so far, whether it finished."""

    walk: int
    last_path: str | None
    walked: int
    done: bool
    fingerprint: str | None
    planner: str | None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_age: float
    claimed: int
    done: int
    takeovers: int
    lost: int
    stopped: bool


class JobStore(Manifest, Protocol):
    """A manifest that many processes share. Writes of ``Manifest`` take an optional ``owner``."""

    #: The job's name (a SQLite manifest holds one job; a PostgreSQL database any number).
    job: str

    def describe(self) -> str:
        """The manifest's location for humans and logs: never contains a password."""
        ...

    # The writes of ``Manifest``, fenced when ``owner`` is given.
    async def mark_uploading(
        self, items: Sequence[FileItem], run_id: int, *, dedup: bool, owner: Owner | None = None
    ) -> set[str]: ...
    async def mark_processing(
        self, receipts: Sequence[Receipt], run_id: int, *, retried: bool = False, owner: Owner | None = None
    ) -> set[str]: ...
    async def mark_done(self, paths: Sequence[str], run_id: int, *, owner: Owner | None = None) -> set[str]: ...
    async def mark_failed(
        self, failures: Sequence[tuple[str, str]], run_id: int, *, owner: Owner | None = None
    ) -> set[str]: ...
    async def note_error(self, path: str, reason: str, *, owner: Owner | None = None) -> None: ...

    async def register_worker(self, worker: str, host: str, pid: int) -> None: ...
    async def heartbeat(self, worker: str, lease: float, *, claimed: int, done: int, lost: int) -> int:
        """Extend the leases of every unfinished row ``worker`` holds; return how many were extended."""
        ...

    async def stop_worker(self, worker: str) -> None:
        """Release every unfinished row ``worker`` holds (a clean exit) and mark it stopped."""
        ...

    async def claim(self, worker: str, limit: int, lease: float) -> list[Claim]: ...
    async def confirm_lease(self, owner: Owner, paths: Sequence[str], lease: float) -> set[str]:
        """Check (and extend) the lease on ``paths`` just before bytes are sent; return those lost."""
        ...

    def unfinished(self, *, besides: str) -> int:
        """Unfinished rows of this job not held by ``besides``: work that is still someone's to do."""
        ...

    def workers(self) -> list[WorkerInfo]: ...

    # The planner role.
    async def try_lead(self, worker: str, lease: float) -> bool:
        """Become (or stay) the planner; False while another live process holds the role."""
        ...

    def walk_state(self) -> WalkState: ...
    async def begin_walk(self, worker: str, fingerprint: str, *, fresh: bool) -> WalkState:
        """Record the source fingerprint; ``fresh`` starts a new walk from the top (a finished job run
        again), otherwise the walk continues from the recorded position."""
        ...

    def lookup_many(self, paths: Sequence[str]) -> dict[str, FileRecord]: ...
    async def record_walk(
        self,
        pending: Sequence[FileItem],
        failed: Sequence[tuple[str, str]],
        *,
        run_id: int,
        last_path: str,
        walked: int,
    ) -> None:
        """Record a stretch of the walk in one transaction: files to send (pending, unless someone is
        already working on them), files the walk rejected, and the position reached."""
        ...

    async def finish_walk(self, walked: int) -> None: ...
    def __enter__(self) -> JobStore: ...
    def __exit__(self, *exc_info: object) -> None: ...
