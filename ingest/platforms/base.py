"""The contract every destination platform implements, and the registry of targets.

The engine drives a target through six calls and knows nothing else about it::

    open()            check settings and connectivity before anything is sent
    submit(items)     send files (one, or a batch when ``features.max_batch_files > 1``)
    poll(receipts)    ask how submitted files are doing
    retry(receipts)   ask the platform to redo failed files (when ``features.server_retry``)
    find_existing()   look a file up remotely (resume without server-side dedup)
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
- Errors are ``ingest.errors`` types: ``TransientError`` (retried by the engine),
  ``PermanentError`` (recorded), ``AuthError``/``ConfigError`` (stop the run).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ingest.models import FileItem, Receipt, RemoteStatus

__all__ = [
    "CliOption",
    "Target",
    "TargetContext",
    "TargetFeatures",
    "get_target_class",
    "register_target",
    "registered_targets",
]


@dataclass(frozen=True, slots=True)
class TargetFeatures:
    """Optional abilities of a platform, which the engine adapts to."""

    #: Files one ``submit`` may carry; 1 disables batching.
    max_batch_files: int = 1
    #: Total bytes one batched ``submit`` should carry.
    max_batch_bytes: int = 0
    #: Files larger than this are never batched with others.
    max_batched_file_size: int = 0
    #: ``poll`` answers many receipts at the cost of few requests.
    batch_poll: bool = False
    #: ``submit(dedup=True)`` skips files the platform already holds.
    server_dedup: bool = False
    #: ``retry`` re-runs failed files on the platform without re-sending bodies.
    server_retry: bool = False


class Target(abc.ABC):
    """A destination platform. Subclasses register themselves with ``@register_target``."""

    #: The ``--target`` name.
    name: ClassVar[str]
    features: TargetFeatures
    #: The pydantic model of ``[target]`` settings (a ``TargetConfigBase`` subclass).
    config_model: ClassVar[type[Any]]
    #: Secret config fields and the environment variables that supply them: ``{"api_key": "MOI_KEY"}``.
    secret_env: ClassVar[Mapping[str, str]] = {}
    #: Target-specific ``ingest run`` flags (``--endpoint`` and ``--target`` are common to all).
    cli_options: ClassVar[tuple[CliOption, ...]] = ()

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Any, context: TargetContext) -> Target:
        """Build the target from its validated config model."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Check credentials, destination and connectivity before anything is sent.

        Raises ``ConfigError``/``AuthError`` for what the user must fix, ``TransientError`` for what
        may pass (the caller retries, then reports the platform as unreachable).
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

    def refuse(self, item: FileItem) -> str | None:
        """Why the platform cannot take this file (type, size, name), or ``None``.

        Called before anything is recorded or sent, so an unsupported file fails at once with a clear
        reason instead of after an upload.
        """
        return None

    @classmethod  # noqa: B027 - optional hook, a no-op by default
    def add_commands(cls, commands: Any) -> None:
        """Add platform-specific subcommands (``ingest <name> …``) to the CLI's subparsers.

        Each subcommand sets ``handler=callable(args) -> exit code`` with ``set_defaults``.
        """

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


@dataclass(frozen=True, slots=True)
class CliOption:
    """One ``ingest run`` flag a target adds, mapped to a field of its config model.

    The CLI adds every registered target's options to ``ingest run --help`` and refuses an option
    that does not belong to the chosen ``--target``.
    """

    flag: str
    field: str
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    #: ``value`` takes an argument; ``switch`` is a boolean on/off; ``repeat`` collects a list.
    kind: Literal["value", "switch", "repeat"] = "value"
    convert: Callable[[str], Any] | None = None


@dataclass(frozen=True, slots=True)
class TargetContext:
    """What the engine lends a target: connection budget, body chunking and a byte counter."""

    connections: int = 64
    chunk_size: int = 1024 * 1024
    on_bytes: Callable[[int], None] | None = None
    request_timeout: float = 300.0


_REGISTRY: dict[str, type[Target]] = {}


def register_target(cls: type[Target]) -> type[Target]:
    """Class decorator: make ``cls`` available as ``--target cls.name``. Refuses duplicates."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"target {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_target_class(name: str) -> type[Target]:
    from ingest.platforms import load_builtin_targets

    load_builtin_targets()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        from ingest.errors import ConfigError

        raise ConfigError(f"unknown target {name!r}; choose one of: {known}") from None


def registered_targets() -> Sequence[str]:
    from ingest.platforms import load_builtin_targets

    load_builtin_targets()
    return sorted(_REGISTRY)
