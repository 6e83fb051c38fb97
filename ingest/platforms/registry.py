"""The registry of destination platforms: one ``TargetSpec`` record per platform.

A spec is everything the rest of ``ingest`` needs to know about a platform without importing its
internals: its ``--target`` name, its settings model, the environment variables that supply its
secrets, its ``ingest run`` flags, its own subcommands and, for the one platform that has it, the
embedded default destination. The runtime contract (``ingest.platforms.base.Target``) carries none
of this wiring.

The built-in platforms are loaded lazily by module name (``ingest.platforms.<name>.spec``), so
importing the registry imports no platform; ``register`` accepts more (a plugin) and refuses a name
registered twice, as rclone's backend registry does.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ingest.errors import ConfigError
from ingest.platforms.base import Target, TargetConfigBase, TargetContext

__all__ = [
    "BUILTIN_PLATFORMS",
    "CliOption",
    "EmbeddedDestination",
    "TargetSpec",
    "build_target",
    "embedded_spec",
    "get_spec",
    "register",
    "target_specs",
]

#: The platforms shipped with ``ingest``, in the order ``--help`` lists them.
BUILTIN_PLATFORMS = ("moi", "keyue", "viking")


@dataclass(frozen=True, slots=True)
class CliOption:
    """One ``ingest run`` flag a platform adds, mapped to a field of its settings model.

    The CLI adds every registered platform's options to ``ingest run --help`` and refuses an option
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
class EmbeddedDestination:
    """A local destination started for the length of a run (``ingest run DIR`` with no ``--target``)."""

    #: Settings that point a target at it.
    config: TargetConfigBase
    #: For humans: ``the embedded local MOI emulator``.
    description: str
    #: Stable across runs, so a rerun finds the same manifest: ``embedded-moi:/abs/.ingest/local``.
    identity: str
    #: Where the stored copies of the files can be seen, if anywhere.
    stored_at: Path | None = None
    #: Starts the destination; the runner calls it just before the first request (``ingest.engine.deferred``)
    #: so a run that sends nothing never starts it. ``None``: running from the start of the block.
    start: Callable[[], Awaitable[None]] | None = None


#: ``embedded(data_dir)``: an async context manager that runs the destination while the block runs.
EmbeddedFactory = Callable[[Path], AbstractAsyncContextManager[EmbeddedDestination]]


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One platform as the configuration, the CLI and the runner see it."""

    #: The ``--target`` and ``[target] type`` name.
    name: str
    #: One line for ``--help``.
    help: str
    #: The pydantic model of ``[target]`` settings.
    config_model: type[TargetConfigBase]
    #: Builds the runtime target from settings of ``config_model`` (usually the ``Target`` class itself).
    factory: Callable[[Any, TargetContext], Target]
    #: Secret settings and the environment variables that supply them: ``{"api_key": "MOI_KEY"}``.
    secret_env: Mapping[str, str] = field(default_factory=dict)
    #: The platform's own ``ingest run`` flags (``--target`` and ``--endpoint`` are common to all).
    cli_options: tuple[CliOption, ...] = ()
    #: Adds ``ingest <name> …`` subcommands to the CLI's subparsers; each sets ``handler=callable(args)``.
    add_commands: Callable[[Any], None] | None = None
    #: The embedded default destination, for the one platform that provides it.
    embedded: EmbeddedFactory | None = None


_REGISTRY: dict[str, TargetSpec] = {}


def register(spec: TargetSpec) -> TargetSpec:
    """Make ``spec`` available as ``--target spec.name``. Refuses a second, different spec of one name."""
    known = _REGISTRY.get(spec.name)
    if known is not None and known is not spec:
        raise RuntimeError(f"target {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    for name in BUILTIN_PLATFORMS:
        if name not in _REGISTRY:
            register(importlib.import_module(f"ingest.platforms.{name}.spec").SPEC)


def target_specs() -> Sequence[TargetSpec]:
    """Every registered platform: the built-in ones first, in their ``--help`` order."""
    _load_builtin()
    return list(_REGISTRY.values())


def get_spec(name: str) -> TargetSpec:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise ConfigError(f"unknown target {name!r}; choose one of: {known}") from None


def build_target(config: TargetConfigBase, context: TargetContext) -> Target:
    """The runtime target for validated settings, by their ``type``."""
    spec = get_spec(config.type)
    if not isinstance(config, spec.config_model):
        raise TypeError(f"target {spec.name} needs {spec.config_model.__name__}, not {type(config).__name__}")
    return spec.factory(config, context)


def embedded_spec() -> TargetSpec:
    """The platform whose emulator is the embedded default destination."""
    for spec in target_specs():
        if spec.embedded is not None:
            return spec
    raise RuntimeError("no registered platform provides an embedded default destination")
