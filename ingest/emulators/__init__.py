"""Local emulators of the destination platforms, and the registry ``ingest serve NAME`` reads.

Each emulator is an ``aiohttp.web.Application`` that is strict about the platform's documented fields,
error codes and auth, stores uploaded bodies on disk, and can inject faults. The CLI knows nothing
platform-specific: it looks a name up here, lets the spec add its flags, and serves the app it builds::

    spec = emulator_specs()["moi"]
    spec.add_arguments(parser)              # then the CLI adds --host/--port
    app = spec.build_app(parser.parse_args())
    await serve_forever(app, host, port, on_ready=print)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from ingest.emulators.keyue import app as keyue
from ingest.emulators.kit.server import serve_forever, serve_in_background
from ingest.emulators.moi import app as moi
from ingest.emulators.viking import app as viking

__all__ = ["EmulatorSpec", "emulator_specs", "serve_forever", "serve_in_background"]


@dataclass(frozen=True)
class EmulatorSpec:
    """One platform emulator as the CLI sees it."""

    #: The ``ingest serve NAME`` name.
    name: str
    #: One line for ``ingest serve --help``.
    help: str
    #: Adds the platform-specific flags to the ``serve NAME`` sub-parser.
    add_arguments: Callable[[argparse.ArgumentParser], None]
    #: Builds the app from the parsed flags.
    build_app: Callable[[argparse.Namespace], web.Application]


def emulator_specs() -> dict[str, EmulatorSpec]:
    """Every available emulator by name, in the order ``--help`` should list them."""
    specs = [
        EmulatorSpec(
            name="moi",
            help="MatrixOne Intelligence (MOI): volumes, /connectors/upload, tasks",
            add_arguments=moi.add_moi_arguments,
            build_app=moi.build_moi_app,
        ),
        EmulatorSpec(
            name="keyue",
            help="Baidu Keyue (客悦): knowledge directories, llm_document_import, document learning",
            add_arguments=keyue.add_keyue_arguments,
            build_app=keyue.build_keyue_app,
        ),
        EmulatorSpec(
            name="viking",
            help="Volcengine VikingDB knowledge base: signed doc/add (tos, url), doc/info|list|delete, task/info",
            add_arguments=viking.add_viking_arguments,
            build_app=viking.build_viking_app,
        ),
    ]
    return {spec.name: spec for spec in specs}
