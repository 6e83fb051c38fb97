"""The shape of the package: no import cycles, no private names across packages, one home per platform.

The import graph is read from the source with ``ast`` (every ``import``, also those inside functions,
which is where cycles used to hide), so these tests fail on the commit that introduces a problem, not
on the first run that trips over it.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.emulators import emulator_specs
from ingest.platforms.registry import BUILTIN_PLATFORMS, get_spec
from tests.harness import HARNESSES

PACKAGE = Path(__file__).resolve().parent.parent / "ingest"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> Iterator[tuple[str, str | None, int]]:
    """``(module imported, name taken from it or None, line)`` for every ``ingest`` import in a module."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    package = name if is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ingest"):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if not base.startswith("ingest"):
                continue
            for alias in node.names:
                # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` the module mod.
                if f"{base}.{alias.name}" in MODULES:
                    yield f"{base}.{alias.name}", None, node.lineno
                else:
                    yield base, alias.name, node.lineno


def graph() -> dict[str, set[str]]:
    return {name: {target for target, _, _ in imports_of(name) if target in MODULES} for name in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in edges:
        if node not in index:
            visit(node)
    return found


def owner(name: str) -> str:
    """The package a module belongs to (itself, for a package's ``__init__``)."""
    return name if is_package(name) else name.rpartition(".")[0]


def test_there_are_no_import_cycles() -> None:
    """No module reaches itself through imports, counting imports made inside functions."""
    assert cycles(graph()) == []


def test_no_private_name_is_imported_from_another_package() -> None:
    """A ``_private`` module or name is used only inside the package that defines it."""
    offenders = []
    for name in MODULES:
        for target, taken, line in imports_of(name):
            private_module = next((p for p in target.split(".") if p.startswith("_")), None)
            if private_module is not None:
                home = target[: target.index(private_module)].rstrip(".")
                if not name.startswith(home):
                    offenders.append(f"{name}:{line} imports {target}")
            if taken and taken.startswith("_") and not taken.startswith("__") and owner(name) != owner(target):
                offenders.append(f"{name}:{line} imports {taken} from {target}")
    assert offenders == []


def test_emulators_import_no_client_side_code() -> None:
    """An emulator checks requests on its own: it imports no platform client, config or error code.

    The one exception is VikingDB's V4 signing algorithm, which the official SDKs' signatures verify
    against in tests/test_viking_sdks.py (so the emulator's check is not merely the client's own).
    """
    allowed = {"ingest.platforms.viking.signing"}
    offenders = [
        f"{name}:{line} imports {target}"
        for name in MODULES
        if name.startswith("ingest.emulators")
        for target, _, line in imports_of(name)
        if not target.startswith("ingest.emulators") and target not in allowed
    ]
    assert offenders == []


def test_nothing_outside_a_platform_imports_its_internals() -> None:
    """The engine, sources, manifest, CLI and shared modules reach platforms only through the registry."""
    offenders = [
        f"{name}:{line} imports {target}"
        for name in MODULES
        if not name.startswith(("ingest.platforms", "ingest.emulators")) and name != "ingest"
        for target, _, line in imports_of(name)
        if target.startswith("ingest.platforms.")
        and target.split(".")[2] in BUILTIN_PLATFORMS
        and target.split(".")[2] not in name.split(".")
    ]
    assert offenders == []


@pytest.mark.parametrize("platform", BUILTIN_PLATFORMS)
def test_every_platform_package_has_the_same_shape(platform: str) -> None:
    """Each platform has its registration, target, API client, emulator and conformance harness."""
    package = f"ingest.platforms.{platform}"
    assert f"{package}.spec" in MODULES
    assert f"{package}.target" in MODULES
    assert {f"{package}.client", f"{package}.api"} & set(MODULES), "an API client module (client.py or api.py)"
    spec = get_spec(platform)
    assert spec.name == platform
    assert importlib.import_module(f"{package}.spec").SPEC is spec
    assert f"ingest.emulators.{platform}" in MODULES, "an emulator package"
    assert platform in emulator_specs(), "the emulator is served by `ingest serve`"
    assert platform in {h.name for h in HARNESSES}, "a conformance harness in tests/harness.py"


def test_ingest_run_imports_no_emulator() -> None:
    """Starting the CLI (for `ingest run`) loads no emulator module: they cost start-up time."""
    code = "import sys, ingest.cli; print('\\n'.join(m for m in sys.modules if m.startswith('ingest.emulators')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.split() == []
