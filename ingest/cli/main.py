"""The ``ingest`` command: the parser, assembled from the command modules, and ``main()``.

``main()`` is the one place where an exception becomes an exit code (a contract scripts rely on):
0 every file done, 1 some files failed (listed) or the platform refused an operation, 2 usage or
configuration error (``ConfigError`` and its subclasses, argument errors included), 130 interrupted
(the manifest is consistent; rerun to resume). The machine's own failures (a full disk, a read-only
file) are exit 2 as well, in one line (``ingest.cli.environment``); a closed stdout pipe (``| head``)
exits quietly. Commands, the platforms' own included, return ``EXIT_OK`` or ``EXIT_FAILED`` and raise
``IngestError`` for everything else.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

from ingest import __version__
from ingest.cli import output, retry, run, serve, status
from ingest.cli.environment import environment_message
from ingest.cli.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from ingest.cli.options import HelpFormatter, Parser, add_subcommands, config_from_args
from ingest.errors import ConfigError, IngestError, InterruptedRun
from ingest.platforms.registry import target_specs

__all__ = ["build_parser", "config_from_args", "entry", "main"]

#: Objects made (less those freed) between two collections of the youngest generation (CPython's default:
#: 700), in the ``ingest`` process (``entry``).
YOUNG_COLLECTION_THRESHOLD = 10_000

#: The reader of stdout went away (``| head``): the shell's code for a process ended by SIGPIPE.
EXIT_BROKEN_PIPE = 141


def build_parser(*, with_emulators: bool = True, command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line. ``with_emulators=False`` leaves ``serve``'s platforms out, which spares
    every other command the import of the emulators and aiohttp's server (a noticeable start-up cost).
    ``command``: the command about to run; when it is one of ingest's own, the platforms' commands
    (``ingest moi …``, their wire models) are left out too: a tenth of a no-op rerun's start-up."""
    parser = Parser(
        prog="ingest",
        description="Bulk-ingest directory trees into knowledge-base platforms, resumably.",
        epilog=run.EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ingest {__version__}")
    commands = add_subcommands(parser, "command", "COMMAND")
    run.add_parser(commands)
    retry.add_parser(commands)
    status.add_parser(commands)
    from ingest.cli import sync, verify

    sync.add_plan_parser(commands)
    verify.add_parser(commands)
    serve.add_parser(commands, with_emulators=with_emulators)
    if command is not None and command in commands.choices:
        return parser
    for spec in target_specs():
        if spec.add_commands is not None:
            spec.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = 0
    try:
        args = build_parser(with_emulators="serve" in argv, command=argv[0] if argv else None).parse_args(argv)
        verbose = getattr(args, "verbose", 0)
        logging.basicConfig(
            level=logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
        args.argv = argv  # fan-out commands start workers with the same arguments
        return int(args.handler(args))
    except InterruptedRun as exc:
        output.error(str(exc))
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        output.error("interrupted")
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        output.error(f"error: {exc}")
        return EXIT_USAGE
    except IngestError as exc:
        output.error(f"error: {exc}")
        return EXIT_FAILED
    except BrokenPipeError:
        # `ingest status … | head`: the reader has what it wanted. Nothing more may reach stdout, not
        # even at exit (the interpreter's final flush would complain), and nothing is an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        message = environment_message(exc)
        if message is not None:
            output.error(f"error: {message}")
            return EXIT_USAGE
        if verbose:
            raise
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        output.error(
            f"unexpected error: {type(exc).__name__}: {first_line} (rerun with -v for details, and please report it)"
        )
        return EXIT_FAILED


def entry() -> int:
    """``main()`` as the ``ingest`` process runs it (``python -m ingest``, the ``ingest`` script), not as a
    test or another program calls it: two settings of the garbage collector, for the process only.

    ``gc.freeze()``: what the imports built (modules, classes, pydantic's schemas: most of the objects of a
    no-op rerun) lives until the process exits, and each full collection, the interpreter's at exit included,
    traversed it again; the exit alone took 0.13-0.25 s, 0.03-0.04 s frozen. Objects made after this point
    (the run's) are collected and finalized as before. ``threshold0`` 10,000 instead of 700: a walk makes and
    drops a few tuples per file, and 700 set off ~130 young collections per 100,000 files (~45 ms of CPU,
    ~6 ms at 10,000); a few thousand young objects more between collections is no memory to speak of.
    (benchmarks/README.md, Issue 11 item 18.)
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)
    return main()


if __name__ == "__main__":
    sys.exit(entry())
