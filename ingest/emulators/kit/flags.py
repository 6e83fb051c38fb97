"""The command-line pieces every emulator shares: argparse value types and the fault-injection flags.

Each emulator's ``add_*_arguments`` declares its own flags with these types. The fault flags drive the
shared ``_faults.FaultInjector``, so they mean the same on every platform and are declared once, here;
only the words for what a fault looks like on the wire are the platform's.
"""

from __future__ import annotations

import argparse
from typing import TypedDict

from ingest.config import parse_size

__all__ = [
    "FaultOptions",
    "add_fault_arguments",
    "fault_options",
    "fraction",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "size",
]


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
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_fault_arguments(
    parser: argparse.ArgumentParser, *, server_error: str, rate_limited: str, resettable: str
) -> None:
    """``--latency-ms``, ``--error-rate``, ``--rate-limit``, ``--reset-rate`` and ``--seed``.

    The help names each fault as the platform answers it: ``server_error`` (``"500 ErrServer"``),
    ``rate_limited`` (``"429 with Retry-After"``) and ``resettable``, the requests whose connection
    may be dropped (``"uploads"``).
    """
    parser.add_argument(
        "--latency-ms", type=non_negative_int, default=0, metavar="N",
        help="milliseconds added to every request (default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--error-rate", type=fraction, default=0.0, metavar="F",
        help=f"fraction of requests answered {server_error}, 0-1 (default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--rate-limit", type=positive_float, default=None, metavar="RPS",
        help=f"requests per second allowed; excess gets {rate_limited} (default: unlimited)",
    )  # fmt: skip
    parser.add_argument(
        "--reset-rate", type=fraction, default=0.0, metavar="F",
        help=f"fraction of {resettable} whose connection is dropped mid-body, 0-1 (default: 0)",
    )  # fmt: skip
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
    than straight into ``FaultSettings``; the app then reads them back with ``_faults.fault_settings``.
    """
    return FaultOptions(
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        rate_limit=args.rate_limit,
        reset_rate=args.reset_rate,
        seed=args.seed,
    )
