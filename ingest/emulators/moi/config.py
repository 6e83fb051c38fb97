"""How to run the MOI emulator: ``MoiEmulatorConfig`` and its ``ingest serve moi`` flags."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from ingest.emulators.kit import flags as _cli
from ingest.emulators.kit.app import EmulatorConfig

__all__ = ["VOLUME_ID_RE", "MoiEmulatorConfig", "add_moi_arguments", "config_from_args"]

VOLUME_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class MoiEmulatorConfig(EmulatorConfig):
    """How to run the MOI emulator. Fault rates are fractions in [0, 1]; the fault fields are the kit's."""

    api_key: str
    #: Volume ids that exist from the start (named after their id), e.g. ``("1001",)``.
    volumes: tuple[str, ...] = ()
    #: Time a task file takes from waiting through uploading to its final state.
    task_delay_ms: int = 200
    #: Fraction of task files that end failed (status 4) with a reason.
    task_fail_rate: float = 0.0
    #: Files per upload request (MOI 5.0 documents 20).
    max_files_per_request: int = 20
    #: Bytes per file; ``None`` = no limit, as in the seed document (MOI 5.0 documents 200 MiB).
    max_file_size: int | None = None
    #: How much faster than real time periodic load tasks come round: 60 makes an "hourly" task run
    #: every minute. Only the schedule is sped up; copies take the time they take.
    clock_speed: float = 1.0
    #: Files load tasks copy at the same time, over all tasks.
    load_concurrency: int = 4
    #: Whether connectors may name other machines. Off: validate, file listings and load tasks connect
    #: only to localhost, 127.0.0.0/8 and ::1 (``kit.netguard``), so a request cannot reach the user's network.
    allow_remote_sources: bool = False
    #: Further API keys, each limited to the volumes it names: ``(("k2", ("1001",)),)``. Using another
    #: volume, or creating one, is 403 ``ErrForbidden`` (``access``).
    restricted_keys: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: Tasks carry MOI 5.0's ``success_file_count`` / ``failed_file_count``; off answers in the seed's form.
    task_counts: bool = True

    def problems(self) -> list[str]:
        """Every invalid setting, one sentence each (empty when the config is usable)."""
        found = super().problems()
        if not self.api_key:
            found.append("api_key is empty")
        if not 0.0 <= self.task_fail_rate <= 1.0:
            found.append(f"task_fail_rate must be between 0 and 1, got {self.task_fail_rate}")
        if self.task_delay_ms < 0:
            found.append("task_delay_ms must not be negative")
        if not self.clock_speed > 0:
            found.append(f"clock_speed must be positive, got {self.clock_speed}")
        if self.load_concurrency < 1:
            found.append(f"load_concurrency must be at least 1, got {self.load_concurrency}")
        if self.max_files_per_request < 1 or (self.max_file_size is not None and self.max_file_size < 1):
            found.append("max_files_per_request and max_file_size must be at least 1")
        found.extend(
            f"volume id {volume!r} must be 1-64 letters, digits, '_' or '-'"
            for volume in self.volumes
            if not VOLUME_ID_RE.fullmatch(volume)
        )
        for key, volumes in self.restricted_keys:
            if not key or key == self.api_key or not volumes:
                found.append("a restricted key must be non-empty, differ from api_key and name at least one volume")
            found.extend(
                f"volume id {volume!r} must be 1-64 letters, digits, '_' or '-'"
                for volume in volumes
                if not VOLUME_ID_RE.fullmatch(volume)
            )
        return found


# --- command line (``ingest serve moi``) ------------------------------------------------------------------


def _volume_id(text: str) -> str:
    if not VOLUME_ID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"volume id must be 1-64 letters, digits, '_' or '-', got {text!r}")
    return text


def _restricted_key(text: str) -> tuple[str, tuple[str, ...]]:
    key, sep, volumes = text.rpartition(":")
    ids = tuple(v.strip() for v in volumes.split(",") if v.strip())
    if not sep or not key or not ids:
        raise argparse.ArgumentTypeError("expected KEY:VOLUME[,VOLUME...], e.g. reader-key:1001,1002")
    return key, tuple(_volume_id(v) for v in ids)


def add_moi_arguments(parser: argparse.ArgumentParser) -> None:
    """The MOI emulator's flags (``--host``/``--port`` are the CLI's)."""
    _cli.add_data_dir_argument(parser, holds="uploaded files")
    _cli.add_secret_argument(
        parser, "--api-key", env="MOI_KEY", metavar="KEY", help="API key clients must send in moi-key or X-API-Key"
    )
    parser.add_argument(
        "--volume", dest="volumes", action="append", type=_volume_id, default=[], metavar="ID",
        help="create a volume with this id at start-up (repeatable), e.g. --volume 1001",
    )  # fmt: skip
    _cli.add_delay_argument(
        parser,
        "--task-delay-ms",
        default=200,
        help="milliseconds a task file takes to go waiting -> uploading -> done",
    )
    _cli.add_rate_argument(parser, "--task-fail-rate", help="fraction of task files that end failed with a reason")
    _cli.add_max_file_size_argument(
        parser, help="largest file accepted, e.g. 200MiB as MOI 5.0 documents (default: no limit, as the seed document)"
    )
    parser.add_argument(
        "--max-files-per-request", type=_cli.positive_int, default=20, metavar="N",
        help="files accepted in one upload request (default: 20, as MOI 5.0 documents)",
    )  # fmt: skip
    parser.add_argument(
        "--clock-speed", type=_cli.positive_float, default=1.0, metavar="F",
        help="run periodic load tasks F times faster than real time, e.g. 3600 makes 'hourly' every second"
        " (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--load-concurrency", type=_cli.positive_int, default=4, metavar="N",
        help="files connector load tasks copy at the same time (default: 4)",
    )  # fmt: skip
    parser.add_argument(
        "--restricted-key", dest="restricted_keys", action="append", type=_restricted_key, default=[],
        metavar="KEY:VOLUME[,VOLUME...]",
        help="accept KEY too, but only for these volumes: others (and creating volumes) answer 403 ErrForbidden"
        " (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-remote-sources", action="store_true",
        help="let connectors (validate, file lists, load tasks) connect to other machines; by default the"
        " emulator connects only to localhost, 127.0.0.0/8 and ::1",
    )  # fmt: skip
    parser.add_argument(
        "--no-task-counts", dest="task_counts", action="store_false",
        help="answer /task/get and /task/list in the seed document's form, without MOI 5.0's"
        " success_file_count and failed_file_count",
    )  # fmt: skip
    _cli.add_fault_arguments(
        parser, server_error="500 ErrServer", rate_limited="429 with Retry-After", resettable="uploads"
    )
    _cli.add_stall_arguments(parser)


def config_from_args(args: argparse.Namespace) -> MoiEmulatorConfig:
    """The config for parsed ``add_moi_arguments`` flags."""
    return MoiEmulatorConfig(
        data_dir=args.data_dir,
        api_key=args.api_key,
        volumes=tuple(args.volumes),
        task_delay_ms=args.task_delay_ms,
        task_fail_rate=args.task_fail_rate,
        max_file_size=args.max_file_size,
        max_files_per_request=args.max_files_per_request,
        clock_speed=args.clock_speed,
        load_concurrency=args.load_concurrency,
        allow_remote_sources=args.allow_remote_sources,
        restricted_keys=tuple(args.restricted_keys),
        task_counts=args.task_counts,
        **_cli.fault_options(args),
        **_cli.stall_options(args),
    )
