"""The contract every destination platform implements, and the registry of targets.

A target is built as ``Target(config, context)`` from its validated settings; the engine drives it
through six calls and knows nothing else about it::

    open()            check settings and connectivity before anything is sent
    preflight(source) look the source over before anything is sent (optional: a warning to give first)
    submit(items)     send files (one, or a batch when ``features.max_batch_files > 1``)
    poll(receipts)    ask how submitted files are doing
    retry(receipts)   ask the platform to redo failed files (when ``features.server_retry``)
    find_existing()   look a file up remotely (resume without server-side dedup)
    list_documents()  every document the destination holds, paged (when ``features.can_list``)
    delete(ids)       remove documents by id (when ``features.can_delete``)
    aclose()          release connections

Edge cases every implementation must honour (the conformance suite checks them):

- ``submit`` returns exactly one ``Receipt`` per item, in order. A file the platform refused while
  accepting the request gets ``Receipt.error``; a refusal of the whole request raises.
- ``submit`` re-opens every file it sends: a streamed body cannot be replayed, so the engine calls it
  again from scratch on retry. It never reads a whole body into memory.
- ``submit(dedup=True)`` must not store a second copy of a file the platform already holds (the resume
  path after a crash mid-upload). Targets without ``server_dedup`` are asked ``find_existing`` instead.
- ``poll`` returns a ``RemoteStatus`` for each receipt it has news of. A receipt left out of the answer
  (say its lookup hit a transient error while the others succeeded) is polled again later, until the
  task timeout; a receipt the platform does not know is ``FAILED`` with a reason.
- ``list_documents`` yields every document in the destination, this manifest's or not, in pages: it
  never holds the listing in memory. ``RemoteDocument.remote_id`` is the id ``Receipt.remote_id``
  carries and ``delete`` takes.
- ``delete`` is idempotent: an id the platform no longer knows counts as deleted. It returns the ids
  that are gone; an id left out (a transient error on its request) is still there and is asked again.
- ``features.version_ids`` says how a changed file's new version meets the old one: ``"new"`` (the new
  version gets its own id, both exist until the old is deleted: make before break) or ``"same"`` (the
  platform reuses the id: the old version must be deleted before the new one is added).
- Errors are ``ingest.errors`` types: ``TransientError`` (retried by the engine),
  ``PermanentError`` (recorded), ``AuthError``/``ConfigError`` (stop the run).
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

from ingest.models import FileItem, Receipt, RemoteState, RemoteStatus

if TYPE_CHECKING:
    from ingest.ratelimit import RequestBudget
    from ingest.report import RunSummary
    from ingest.sources.base import Source

__all__ = ["RemoteDocument", "Target", "TargetConfigBase", "TargetContext", "TargetFeatures"]


class TargetConfigBase(BaseModel):
    """What every target's settings have: the platform's name and its API endpoint.

    Each target module subclasses this (``MoiTargetConfig`` in ``ingest.platforms.moi.target``, …);
    ``RunConfig`` picks the subclass by ``type`` through the target registry.
    """

    # ``defer_build``: every platform's settings model is defined when the CLI lists the platforms, and only
    # the chosen one is ever validated; the others' validators are not built (benchmarks/README.md, Issue 11).
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    type: str
    endpoint: str

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL; write e.g. http://127.0.0.1:8080")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _secrets_fit_in_a_header(self) -> Self:
        """A secret travels in a header: a line break (``$(cat keyfile)`` keeps none, a pasted one may)
        or another control character would be refused by the HTTP library mid-run."""
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if info.annotation in (SecretStr, SecretStr | None) and isinstance(value, SecretStr):
                if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value.get_secret_value()):
                    raise ValueError(
                        f"{name} contains a line break or another control character; set it without one "
                        "(secrets are sent in HTTP headers)"
                    )
        return self

    def public_dump(self) -> dict[str, Any]:
        """The settings without secrets (every ``SecretStr`` field is left out)."""
        data = self.model_dump(mode="json")
        for name, info in type(self).model_fields.items():
            if info.annotation in (SecretStr, SecretStr | None):
                data.pop(name, None)
        return data


@dataclass(frozen=True, slots=True)
class RemoteDocument:
    """One document the destination holds, as its listing shows it."""

    #: The id ``delete`` takes (the ``Receipt.remote_id`` of the upload that made it).
    remote_id: str
    #: The platform's name for it (a file name, a doc name).
    name: str
    #: Where it sits, in the platform's terms (a MOI folder, a Keyue directory id), if anywhere.
    folder: str | None = None
    size: int | None = None
    md5: str | None = None
    #: ``PENDING`` while the platform processes it, ``FAILED`` when it gave up on it.
    state: RemoteState = RemoteState.DONE
    reason: str | None = None
    #: When the platform made it (seconds since the epoch), if it says.
    created: float | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TargetFeatures:
    """Optional abilities of a platform, which the engine adapts to."""

    #: Files one ``submit`` may carry; 1 disables batching.
    max_batch_files: int = 1
    #: Total bytes one batched ``submit`` should carry.
    max_batch_bytes: int = 0
    #: Files larger than this are never batched with others.
    max_batched_file_size: int = 0
    #: ``submit(dedup=True)`` skips files the platform already holds.
    server_dedup: bool = False
    #: ``retry`` re-runs failed files on the platform without re-sending bodies.
    server_retry: bool = False
    #: A batch waits for ``max_batch_files`` files until the walk is over instead of lingering briefly:
    #: for platforms where each ``submit`` makes a lasting object users see (a MOI load task).
    full_batches: bool = False
    #: ``list_documents`` is available (``ingest verify``, ``--dry-run --remote``).
    can_list: bool = False
    #: ``delete`` is available (replace on change, ``--delete``).
    can_delete: bool = False
    #: ``"new"``: each version of a file is a document of its own id; ``"same"``: the id is reused.
    version_ids: Literal["new", "same"] = "new"


class Target(abc.ABC):
    """A destination platform at run time. Its registration (settings model, flags, secrets, commands)
    is a ``TargetSpec`` in ``ingest.platforms.registry``."""

    #: The ``--target`` name.
    name: ClassVar[str]
    features: TargetFeatures

    @abc.abstractmethod
    async def open(self) -> None:
        """Check credentials, destination and connectivity before anything is sent.

        Raises ``ConfigError``/``AuthError`` for what the user must fix, ``TransientError`` for what
        may pass (the caller retries, then reports the platform as unreachable).
        """

    async def preflight(self, source: Source) -> None:  # noqa: B027 - optional hook
        """Look ``source`` over before anything is sent, for what the user should hear first (say, names
        that will collide on the platform), told through ``context.on_message``.

        Called once per run after ``open``, before the manifest is touched; not for ``retry-failed`` nor
        a quiet run. It must keep memory flat (the source may hold millions of files), must not disturb
        the source (its ``passed_over`` counts the run's own walk), and should skip a source whose
        listing is costly (a remote bucket). A problem here is a warning, never an error.
        """

    @abc.abstractmethod
    async def submit(self, items: Sequence[FileItem], *, dedup: bool) -> list[Receipt]:
        """Send ``items``; one receipt per item, in order."""

    @abc.abstractmethod
    async def poll(self, receipts: Sequence[Receipt]) -> list[RemoteStatus]:
        """Current state of each receipt."""

    async def retry(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        """Ask the platform to redo failed files; returns the (possibly new) receipts of those it took.

        A receipt left out (a transient error on its request) is still failed on the platform; the
        engine finds it so at the next poll and asks again.
        """
        raise NotImplementedError(f"target {self.name} has no server-side retry")

    async def find_existing(self, item: FileItem) -> Receipt | None:
        """The platform's receipt for a file it already holds, or ``None``."""
        return None

    def list_documents(self) -> AsyncIterator[RemoteDocument]:
        """Every document in the destination, paged (flat memory), in any order."""
        raise NotImplementedError(f"target {self.name} cannot list its documents")

    async def delete(self, remote_ids: Sequence[str]) -> list[str]:
        """Delete documents by id; returns the ids that are gone (unknown ids included)."""
        raise NotImplementedError(f"target {self.name} cannot delete documents")

    def add_to_summary(self, summary: RunSummary) -> None:  # noqa: B027 - optional hook
        """Add what the platform counted itself (say, tasks created) to the run's summary; called
        once the engine is done, before the summary is recorded."""

    def refuse(self, item: FileItem) -> str | None:
        """Why the platform cannot take this file (type, size, name), or ``None``.

        Called before anything is recorded or sent, so an unsupported file fails at once with a clear
        reason instead of after an upload.
        """
        return None

    def may_refuse(self) -> bool:
        """Whether ``refuse`` can say no to any file: when not, the planner skips a done, unchanged file
        without building the ``FileItem`` that ``refuse`` takes (ingest.sources.base.RowSource)."""
        return type(self).refuse is not Target.refuse

    @abc.abstractmethod
    def describe(self) -> str:
        """Where files go, for humans: ``MOI volume 1001 at http://…``. Never contains secrets."""

    @abc.abstractmethod
    def identity(self) -> str:
        """A stable string naming the destination; a manifest belongs to one source and one identity."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, deliberately a no-op by default
        """Release connections. Idempotent."""

    async def __aenter__(self) -> Target:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class ForwardingTarget(Target):
    """A target that hands every call to ``inner``: the base of wrappers that change a few of them
    (``ingest.engine.converge.SameIdTarget``, ``ingest.engine.deferred.StartedOnFirstUse``)."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.features = inner.features
        self.name = inner.name  # type: ignore[misc]

    async def open(self) -> None:
        await self.inner.open()

    async def preflight(self, source: Source) -> None:
        await self.inner.preflight(source)

    async def submit(self, items: Sequence[FileItem], *, dedup: bool) -> list[Receipt]:
        return await self.inner.submit(items, dedup=dedup)

    async def poll(self, receipts: Sequence[Receipt]) -> list[RemoteStatus]:
        return await self.inner.poll(receipts)

    async def retry(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        return await self.inner.retry(receipts)

    async def find_existing(self, item: FileItem) -> Receipt | None:
        return await self.inner.find_existing(item)

    def list_documents(self) -> AsyncIterator[RemoteDocument]:
        return self.inner.list_documents()

    async def delete(self, remote_ids: Sequence[str]) -> list[str]:
        return await self.inner.delete(remote_ids)

    def add_to_summary(self, summary: RunSummary) -> None:
        self.inner.add_to_summary(summary)

    def refuse(self, item: FileItem) -> str | None:
        return self.inner.refuse(item)

    def may_refuse(self) -> bool:
        return type(self).refuse is not ForwardingTarget.refuse or self.inner.may_refuse()

    def describe(self) -> str:
        return self.inner.describe()

    def identity(self) -> str:
        return self.inner.identity()

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(frozen=True, slots=True)
class TargetContext:
    """What the engine lends a target: connection budget, body chunking, a byte counter and a line
    for the user (shown once, with the progress)."""

    connections: int = 64
    chunk_size: int = 1024 * 1024
    on_bytes: Callable[[int], None] | None = None
    on_message: Callable[[str], None] | None = None
    request_timeout: float = 300.0
    #: ``--max-rps``: the token bucket every platform request takes from (``ingest.ratelimit``).
    budget: RequestBudget | None = None
