"""``ingest serve PLATFORM``: run a local emulator of a platform's API until Ctrl-C or SIGTERM.

The emulators (and aiohttp's server) are imported only when ``serve`` is on the command line.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import anyio

from ingest._aio import first_leaf
from ingest.cli import output
from ingest.cli.exits import EXIT_OK
from ingest.cli.options import add_command, add_subcommands
from ingest.errors import ConfigError

__all__ = ["add_parser", "command"]

EPILOG = """\
examples:
  ingest serve moi --port 8080 --data-dir ./moi-data --api-key devkey --volume 1001
  ingest serve keyue --data-dir ./ky --token devtoken --port 0 --fail-rate 0.1
                                             a free port; one document in ten fails to learn
  ingest serve viking --data-dir ./vk --access-key ak --secret-key sk --latency-ms 50 --error-rate 0.05
                                             slow and flaky, for soak tests
"""


def add_parser(commands: Any, *, with_emulators: bool) -> None:
    """``with_emulators=False`` leaves the platforms out, sparing other commands the emulators' import."""
    p = add_command(
        commands,
        "serve",
        help="run a local emulator of a platform's API",
        description="Serve a faithful local emulator of a platform's API, for tests, benchmarks and trying "
        "ingest without an account. Stop it with Ctrl-C.",
        epilog=EPILOG,
    )
    platforms = add_subcommands(p, "platform", "PLATFORM")
    if not with_emulators:
        return
    from ingest.emulators import emulator_specs

    for name, spec in emulator_specs().items():
        sp = platforms.add_parser(name, help=spec.help, description=spec.help)
        sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        sp.add_argument("--port", type=_port, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
        spec.add_arguments(sp)
        sp.set_defaults(handler=command)


def _port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range (0-65535; 0 picks a free one)")
    return value


def command(args: argparse.Namespace) -> int:
    from ingest.emulators import emulator_specs
    from ingest.emulators.kit.server import serve_forever

    spec = emulator_specs()[args.platform]
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ConfigError(f"--data-dir {data_dir} is a file; name a folder (it is created if missing)")
    try:
        app = spec.build_app(args)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise ConfigError(f"cannot prepare --data-dir{where}: {exc.strerror or exc}") from None

    def ready(url: str) -> None:
        output.say(f"{spec.name} emulator listening on {url} (Ctrl-C to stop)")

    async def serve_until_signalled() -> None:
        # SIGINT and SIGTERM both stop the server cleanly (its state store is closed on the way out),
        # also when a non-interactive shell started it in the background with SIGINT ignored.
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve_forever(app, args.host, args.port, on_ready=ready))
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

    try:
        anyio.run(serve_until_signalled)
    except KeyboardInterrupt:
        pass  # Ctrl-C before the signal receiver is in place: stopping the server is what was asked
    except (OSError, BaseExceptionGroup) as raised:
        # The server's task group wraps what binding the port raised (address in use, no permission).
        leaf = first_leaf(raised, (OSError,)) if isinstance(raised, BaseExceptionGroup) else raised
        if not isinstance(leaf, OSError):
            raise leaf from None
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {leaf.strerror or leaf}") from None
    return EXIT_OK
