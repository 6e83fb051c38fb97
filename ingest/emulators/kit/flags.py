"""The command-line pieces every emulator shares: argparse value types and the fault-injection flags.

Each emulator's ``add_*_arguments`` declares its own flags with these types. The fault flags drive the
shared ``faults.FaultInjector``, so they mean the same on every platform and are declared once, here;
only the words for what a fault looks like on the wire are the platform's. ``--data-dir`` and the
secret flags that default to an environment variable are declared alike everywhere, so they are here too.

Sizes are parsed here, not with the client's own ``parse_size``: the emulators take nothing
from the client side (same notation, ``500KB``/``64MiB``/``4096``, written again in a few lines).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TypedDict

__all__ = [
    "FaultOptions",
    "StallOptions",
    "add_data_dir_argument",
    "add_delay_argument",
    "add_fault_arguments",
    "add_max_file_size_argument",
    "add_rate_argument",
    "add_secret_argument",
    "add_stall_arguments",
    "fault_options",
    "fraction",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "size",
    "stall_options",
]

#: A byte count: a number, then optionally K/M/G/T (powers of 1000) or KiB/MiB/… (powers of 1024).
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(i)?)?b?", re.IGNORECASE)
_POWERS = "kmgt"


def fraction(text: str) -> float:
    """A rate from 0 to 1. The range test is negated (as in ``positive_float``) so that NaN fails it too."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _whole_number(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected a number >= {low}, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def size(text: str) -> int:
    """A byte count as ``ingest run`` takes one: ``500KB``, ``64MiB``, ``4096``."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 500KB, 64MiB or 2GB")
    number, unit, binary = m.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** (_POWERS.index(unit.lower()) + 1 if unit else 0))


def add_data_dir_argument(parser: argparse.ArgumentParser, *, holds: str) -> None:
    """``--data-dir``, required: where the emulator keeps ``holds`` and its state."""
    parser.add_argument(
        "--data-dir", type=Path, required=True, metavar="PATH",
        help=f"directory for {holds} and the emulator's state; reuse it to keep state across restarts",
    )  # fmt: skip


def add_secret_argument(parser: argparse.ArgumentParser, flag: str, *, env: str, metavar: str, help: str) -> None:
    """A credential flag that defaults to ``$env`` and is required only when that is unset."""
    default = os.environ.get(env)
    parser.add_argument(
        flag, default=default, required=default is None, metavar=metavar, help=f"{help} (default: ${env})"
    )


def add_delay_argument(parser: argparse.ArgumentParser, flag: str, *, default: int, help: str) -> None:
    """A time in milliseconds, ``help`` saying what takes that long."""
    parser.add_argument(flag, type=non_negative_int, default=default, metavar="N", help=f"{help} (default: {default})")


def add_rate_argument(parser: argparse.ArgumentParser, flag: str, *, help: str) -> None:
    """A fraction from 0 to 1, off by default; ``help`` says a fraction of what."""
    parser.add_argument(flag, type=fraction, default=0.0, metavar="F", help=f"{help}, 0-1 (default: 0)")


def add_max_file_size_argument(parser: argparse.ArgumentParser, *, help: str) -> None:
    """``--max-file-size``: the largest file an upload may carry (no limit by default)."""
    parser.add_argument("--max-file-size", type=size, default=None, metavar="SIZE", help=help)


def add_fault_arguments(
    parser: argparse.ArgumentParser, *, server_error: str, rate_limited: str, resettable: str
) -> None:
    """``--latency-ms``, ``--error-rate``, ``--rate-limit``, ``--reset-rate`` and ``--seed``.

    The help names each fault as the platform answers it: ``server_error`` (``"500 ErrServer"``),
    ``rate_limited`` (``"429 with Retry-After"``) and ``resettable``, the requests whose connection
    may be dropped (``"uploads"``).
    """
    add_delay_argument(parser, "--latency-ms", default=0, help="milliseconds added to every request")
    add_rate_argument(parser, "--error-rate", help=f"fraction of requests answered {server_error}")
    parser.add_argument(
        "--rate-limit", type=positive_float, default=None, metavar="RPS",
        help=f"requests per second allowed; excess gets {rate_limited} (default: unlimited)",
    )  # fmt: skip
    add_rate_argument(parser, "--reset-rate", help=f"fraction of {resettable} whose connection is dropped mid-body")
    parser.add_argument(
        "--seed", type=int, default=None, metavar="N",
        help="seed for the fault and failure draws, for reproducible runs",
    )  # fmt: skip


class FaultOptions(TypedDict):
    """The fault settings as every emulator config names its fields."""

    latency_ms: int
    error_rate: float
    rate_limit: float | None
    reset_rate: float
    seed: int | None


def fault_options(args: argparse.Namespace) -> FaultOptions:
    """The parsed ``add_fault_arguments`` flags, to pass to an emulator config as ``**fault_options(args)``.

    They go through the platform's config (which validates them and is what tests build directly) rather
    than straight into ``FaultSettings``; the app then reads them back with ``faults.fault_settings``.
    """
    return FaultOptions(
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        rate_limit=args.rate_limit,
        reset_rate=args.reset_rate,
        seed=args.seed,
    )


def add_stall_arguments(parser: argparse.ArgumentParser) -> None:
    """``--header-timeout``, ``--body-idle-timeout`` and ``--max-slow-connections`` (see ``stalls.StallGuard``).

    The defaults are far beyond what a working client takes, so only a stalled or hostile one meets them.
    """
    parser.add_argument(
        "--header-timeout", type=positive_float, default=10.0, metavar="SECONDS",
        help="close a connection (408) whose request line and headers take longer than this (default: 10)",
    )  # fmt: skip
    parser.add_argument(
        "--body-idle-timeout", type=positive_float, default=30.0, metavar="SECONDS",
        help="close a connection (408) whose request body sends nothing for this long (default: 30)",
    )  # fmt: skip
    parser.add_argument(
        "--max-slow-connections", type=positive_int, default=256, metavar="N",
        help="connections still sending their headers after a second that are kept; further ones are closed"
        " (503) (default: 256)",
    )  # fmt: skip


class StallOptions(TypedDict):
    """The stall limits as every emulator config names its fields."""

    header_timeout: float
    body_idle_timeout: float
    max_slow_connections: int


def stall_options(args: argparse.Namespace) -> StallOptions:
    """The parsed ``add_stall_arguments`` flags, to pass to an emulator config as ``**stall_options(args)``."""
    return StallOptions(
        header_timeout=args.header_timeout,
        body_idle_timeout=args.body_idle_timeout,
        max_slow_connections=args.max_slow_connections,
    )
