"""How to run the Keyue emulator: ``KeyueEmulatorConfig`` and its ``ingest serve keyue`` flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ingest.emulators.kit import flags as _cli
from ingest.emulators.kit.app import EmulatorConfig

__all__ = ["KeyueEmulatorConfig", "add_keyue_arguments", "config_from_args"]


@dataclass(frozen=True)
class KeyueEmulatorConfig(EmulatorConfig):
    """How to run the Keyue emulator. Fault rates are fractions in [0, 1]; the fault fields are the kit's."""

    token: str
    #: When set, requests must carry exactly this ``uid`` / ``username``; otherwise any non-empty value.
    uid: str | None = None
    username: str | None = None
    #: Time a document spends learning (``learnStatus`` 0) before it fails or is enhanced.
    learn_delay_ms: int = 500
    #: Time a learned document spends in knowledge enhancement (``learnStatus`` 2).
    enhance_delay_ms: int = 0
    #: Fraction of documents (and retrains) whose learning fails (``learnStatus`` -1).
    fail_rate: float = 0.0
    max_file_size: int | None = None
    agent_name: str = "ingest emulator"

    def problems(self) -> list[str]:
        """Every invalid setting, one sentence each (empty when the config is usable)."""
        found = super().problems()
        if not self.token:
            found.append("token is empty")
        if not 0.0 <= self.fail_rate <= 1.0:
            found.append(f"fail_rate must be between 0 and 1, got {self.fail_rate}")
        found.extend(
            f"{name} must not be negative"
            for name, value in (("learn_delay_ms", self.learn_delay_ms), ("enhance_delay_ms", self.enhance_delay_ms))
            if value < 0
        )
        if self.max_file_size is not None and self.max_file_size < 1:
            found.append("max_file_size must be at least 1")
        return found


# --- command line (``ingest serve keyue``) ----------------------------------------------------------------


def add_keyue_arguments(parser: argparse.ArgumentParser) -> None:
    """The Keyue emulator's flags (``--host``/``--port`` are the CLI's)."""
    _cli.add_data_dir_argument(parser, holds="imported documents")
    _cli.add_secret_argument(
        parser, "--token", env="KEYUE_TOKEN", metavar="TOKEN",
        help="the robot API key clients must send in the token header",
    )  # fmt: skip
    parser.add_argument("--uid", default=None, help="require this uid header (default: any non-empty uid)")
    parser.add_argument(
        "--username", default=None, help="require this username header (default: any non-empty username)"
    )
    _cli.add_delay_argument(
        parser,
        "--learn-delay-ms",
        default=500,
        help="milliseconds a document spends learning (learnStatus 0)",
    )
    _cli.add_delay_argument(
        parser,
        "--enhance-delay-ms",
        default=0,
        help="milliseconds a learned document spends in knowledge enhancement (learnStatus 2)",
    )
    _cli.add_rate_argument(parser, "--fail-rate", help="fraction of documents whose learning fails (learnStatus -1)")
    _cli.add_max_file_size_argument(
        parser, help="largest document accepted, e.g. 100MiB (default: no limit; Keyue's own is undocumented)"
    )
    _cli.add_fault_arguments(parser, server_error="500", rate_limited="429 with Retry-After", resettable="imports")
    _cli.add_stall_arguments(parser)


def config_from_args(args: argparse.Namespace) -> KeyueEmulatorConfig:
    """The config for parsed ``add_keyue_arguments`` flags."""
    return KeyueEmulatorConfig(
        data_dir=args.data_dir,
        token=args.token,
        uid=args.uid,
        username=args.username,
        learn_delay_ms=args.learn_delay_ms,
        enhance_delay_ms=args.enhance_delay_ms,
        fail_rate=args.fail_rate,
        max_file_size=args.max_file_size,
        **_cli.fault_options(args),
        **_cli.stall_options(args),
    )
