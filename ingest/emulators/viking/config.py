"""How to run the VikingDB emulator: ``VikingEmulatorConfig`` and its ``ingest serve viking`` flags."""

from __future__ import annotations

import argparse
import importlib.util
import re
from dataclasses import dataclass

from ingest.emulators.kit import flags as _cli
from ingest.emulators.kit.app import EmulatorConfig

__all__ = ["COLLECTION_NAME_RE", "FAILED_MESSAGES", "VikingEmulatorConfig", "add_viking_arguments", "config_from_args"]

#: ``failed_code`` values a document can end with, and their meaning (API-NOTES section 2, doc/info).
FAILED_MESSAGES = {
    10001: "download timeout",
    10002: "download failed",
    10003: "url verification failed",
    10005: "lark document access error",
    30001: "file over size limit",
    40004: "more than 10000 chunks",
    45002: "more than 200 pages",
}

COLLECTION_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_HTTP_URL_RE = re.compile(r"^https?://[^/\s]+")


@dataclass(frozen=True)
class VikingEmulatorConfig(EmulatorConfig):
    """How to run the VikingDB emulator. Fault rates are fractions in [0, 1]; the fault fields are the kit's."""

    access_key: str
    secret_key: str
    #: The region requests must be signed for; ``None`` accepts any.
    region: str | None = "cn-beijing"
    #: Knowledge bases that exist from the start, in ``project``.
    collections: tuple[str, ...] = ()
    project: str = "default"
    #: The S3-compatible store ``add_type: tos`` reads from; ``None`` refuses tos adds.
    tos_endpoint: str | None = None
    #: Credentials for reading it (default: the access key pair above), and its region.
    tos_access_key: str | None = None
    tos_secret_key: str | None = None
    tos_region: str | None = None
    #: Time a document takes to be processed (and to be deleted).
    process_delay_ms: int = 200
    #: Fraction of documents that end failed, with a ``failed_code`` drawn from ``fail_codes``.
    fail_rate: float = 0.0
    fail_codes: tuple[int, ...] = tuple(FAILED_MESSAGES)
    #: Documents per knowledge base; one more is refused with 1001010 (the seed says 10000).
    max_docs: int = 10000
    #: Further access key pairs, each limited to the knowledge bases it names:
    #: ``(("AK2", "SK2", ("kb1",)),)``. Any other knowledge base answers 403 with 1000002 (no permission).
    restricted_keys: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def problems(self) -> list[str]:
        """Every invalid setting, one sentence each (empty when the config is usable)."""
        found = super().problems()
        if not self.access_key or not self.secret_key:
            found.append("access_key and secret_key must not be empty")
        if not 0.0 <= self.fail_rate <= 1.0:
            found.append(f"fail_rate must be between 0 and 1, got {self.fail_rate}")
        if self.process_delay_ms < 0:
            found.append("process_delay_ms must not be negative")
        if self.max_docs < 1:
            found.append("max_docs must be at least 1")
        if any(not ak or not sk or not kbs or ak == self.access_key for ak, sk, kbs in self.restricted_keys):
            found.append("a restricted key needs an access key (not the main one), a secret and a knowledge base")
        found.extend(
            f"fail code {code} is not a documented failed_code"
            for code in self.fail_codes
            if code not in FAILED_MESSAGES
        )
        found.extend(
            f"collection name {name!r} must start with a letter and hold 1-64 letters, digits or '_'"
            for name in self.collections
            if not COLLECTION_NAME_RE.fullmatch(name)
        )
        if self.tos_endpoint is not None and not _HTTP_URL_RE.match(self.tos_endpoint):
            found.append(f"tos_endpoint {self.tos_endpoint!r} is not an http(s) URL")
        return found


# --- command line (``ingest serve viking``) ---------------------------------------------------------------


def _collection_name(text: str) -> str:
    if not COLLECTION_NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"collection name must start with a letter and hold 1-64 letters, digits or '_', got {text!r}"
        )
    return text


def _fail_codes(text: str) -> tuple[int, ...]:
    try:
        codes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated failed_code numbers, got {text!r}") from None
    unknown = [code for code in codes if code not in FAILED_MESSAGES]
    if unknown or not codes:
        known = ", ".join(str(c) for c in FAILED_MESSAGES)
        raise argparse.ArgumentTypeError(f"failed codes must be among {known}")
    return codes


def _tos_endpoint(text: str) -> str:
    """An http(s) URL; refused at parse time when the S3 client that reads it is not installed."""
    if not _HTTP_URL_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL; write e.g. http://127.0.0.1:9000")
    if importlib.util.find_spec("aiobotocore") is None:
        raise argparse.ArgumentTypeError("needs the S3 client aiobotocore: pip install 'ingest[viking]'")
    return text.rstrip("/")


def _restricted_key(text: str) -> tuple[str, str, tuple[str, ...]]:
    ak, _, rest = text.partition(":")
    sk, _, kbs = rest.rpartition(":")
    names = tuple(k.strip() for k in kbs.split(",") if k.strip())
    if not ak or not sk or not names:
        raise argparse.ArgumentTypeError("expected AK:SK:KB[,KB...], e.g. AKreader:secret:docs")
    return ak, sk, names


def add_viking_arguments(parser: argparse.ArgumentParser) -> None:
    """The VikingDB emulator's flags (``--host``/``--port`` are the CLI's)."""
    _cli.add_data_dir_argument(parser, holds="documents")
    _cli.add_secret_argument(
        parser, "--access-key", env="VOLC_ACCESSKEY", metavar="AK", help="the access key clients sign with"
    )
    _cli.add_secret_argument(parser, "--secret-key", env="VOLC_SECRETKEY", metavar="SK", help="its secret key")
    parser.add_argument(
        "--region", default="cn-beijing", metavar="REGION",
        help="the region requests must be signed for (default: cn-beijing); 'any' accepts every region",
    )  # fmt: skip
    parser.add_argument(
        "--collection", dest="collections", action="append", type=_collection_name, default=[], metavar="NAME",
        help="create this knowledge base at start-up (repeatable), e.g. --collection kb1",
    )  # fmt: skip
    parser.add_argument(
        "--project", default="default", metavar="NAME", help="project of the --collection knowledge bases"
    )
    parser.add_argument(
        "--tos-endpoint", type=_tos_endpoint, default=None, metavar="URL",
        help="S3-compatible store that add_type tos reads <bucket>/<key> from, e.g. http://127.0.0.1:9000",
    )  # fmt: skip
    parser.add_argument(
        "--restricted-key", dest="restricted_keys", action="append", type=_restricted_key, default=[],
        metavar="AK:SK:KB[,KB...]",
        help="accept this access key pair too, but only for these knowledge bases: others answer 403 with"
        " 1000002 no permission (repeatable)",
    )  # fmt: skip
    parser.add_argument("--tos-access-key", default=None, metavar="AK", help="its access key (default: --access-key)")
    parser.add_argument("--tos-secret-key", default=None, metavar="SK", help="its secret key (default: --secret-key)")
    parser.add_argument("--tos-region", default=None, metavar="REGION", help="its region (default: --region)")
    _cli.add_delay_argument(
        parser,
        "--process-delay-ms",
        default=200,
        help="milliseconds a document takes to be processed or deleted",
    )
    _cli.add_rate_argument(parser, "--fail-rate", help="fraction of documents that end failed (process_status 1)")
    parser.add_argument(
        "--fail-codes", type=_fail_codes, default=tuple(FAILED_MESSAGES), metavar="LIST",
        help="failed_code values injected failures draw from, e.g. 10002,30001 (default: all documented)",
    )  # fmt: skip
    parser.add_argument(
        "--max-docs", type=_cli.positive_int, default=10000, metavar="N",
        help="documents per knowledge base before doc/add answers 1001010 (default: 10000)",
    )  # fmt: skip
    _cli.add_fault_arguments(
        parser,
        server_error="500 with code 1000028",
        rate_limited="429 with code 1000029",
        resettable="doc/add requests",
    )
    _cli.add_stall_arguments(parser)


def config_from_args(args: argparse.Namespace) -> VikingEmulatorConfig:
    """The config for parsed ``add_viking_arguments`` flags."""
    return VikingEmulatorConfig(
        data_dir=args.data_dir,
        access_key=args.access_key,
        secret_key=args.secret_key,
        region=None if args.region == "any" else args.region,
        collections=tuple(args.collections),
        project=args.project,
        tos_endpoint=args.tos_endpoint,
        tos_access_key=args.tos_access_key,
        tos_secret_key=args.tos_secret_key,
        restricted_keys=tuple(args.restricted_keys),
        tos_region=args.tos_region,
        process_delay_ms=args.process_delay_ms,
        fail_rate=args.fail_rate,
        fail_codes=args.fail_codes,
        max_docs=args.max_docs,
        **_cli.fault_options(args),
        **_cli.stall_options(args),
    )
