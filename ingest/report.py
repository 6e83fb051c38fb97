"""The per-file JSON report (``--report FILE.json``) and the end-of-run summary."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.errors import ConfigError
from ingest.manifest.base import Manifest

__all__ = ["RunSummary", "write_report"]


@dataclass(slots=True)
class RunSummary:
    """What one run did. ``exit_code`` follows the CLI contract: 0 all done, 1 some failed."""

    destination: str
    #: The manifest file, or a PostgreSQL location without its password.
    manifest: Path | str
    done: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    resumed: int = 0
    sent_files: int = 0
    sent_bytes: int = 0
    #: Failed files the platform was asked to redo (or that were sent again).
    platform_retries: int = 0
    elapsed: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    stopped_reason: str | None = None
    report: Path | None = None
    stored_at: Path | None = None  # where a local destination (the embedded default) keeps the files
    #: Files the walk passed over on purpose, by reason ("hidden", "excluded", …): not failures.
    passed_over: dict[str, int] = field(default_factory=dict)
    #: Earlier versions of changed files deleted on the platform (replace on change).
    replaced: int = 0
    #: Documents of files no longer in the source deleted on the platform (``--delete``).
    deleted: int = 0
    #: Files no longer in the source whose documents stay on the platform (no ``--delete``).
    removed_kept: int = 0
    #: Failed files no longer in the source: no longer failed, and not sent again.
    gone_failures: int = 0
    #: Files of the manifest the filters now leave out: kept on the platform.
    excluded_kept: int = 0
    #: Walked files the manifest already knew, and whether the walk went to its end: when every file
    #: the manifest knew was walked, none can have left the source (not reported; see converge.py).
    walk_known: int = 0
    walk_finished: bool = False
    #: Deletions the platform did not confirm (a transient error): the next run resumes them.
    delete_pending: int = 0
    #: The request budget (``--max-rps``) this run kept, if any; the requests sent and how many of
    #: them waited for their turn; the platform's 429s, and the rate the run settled at after them.
    max_rps: float | None = None
    budget_requests: int = 0
    budget_waits: int = 0
    rate_limited: int = 0
    settled_rps: float | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.stopped_reason else 0

    @property
    def files_per_second(self) -> float:
        return (self.done + self.failed) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def mb_per_second(self) -> float:
        return self.sent_bytes / 1e6 / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "manifest": str(self.manifest),
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "resumed": self.resumed,
            "sent_files": self.sent_files,
            "sent_bytes": self.sent_bytes,
            "elapsed_s": round(self.elapsed, 3),
            "files_per_s": round(self.files_per_second, 1),
            "mb_per_s": round(self.mb_per_second, 2),
            "stopped_reason": self.stopped_reason,
            "passed_over": self.passed_over,
            "replaced": self.replaced,
            "deleted": self.deleted,
            "removed_kept": self.removed_kept,
            "gone_failures": self.gone_failures,
            "excluded_kept": self.excluded_kept,
            "delete_pending": self.delete_pending,
            "max_rps": self.max_rps,
            "budget_requests": self.budget_requests,
            "budget_waits": self.budget_waits,
            "rate_limited": self.rate_limited,
            "settled_rps": round(self.settled_rps, 1) if self.settled_rps is not None else None,
            "failures": [{"path": p, "error": e} for p, e in self.failures[:100]],
        }

    def lines(self, *, max_failures: int = 20) -> list[str]:
        out = [
            f"{self.done} done, {self.failed} failed, {self.skipped} skipped (unchanged)"
            + (f", {self.resumed} resumed" if self.resumed else "")
            + f" -> {self.destination}",
            f"sent {_human_bytes(self.sent_bytes)} in {self.elapsed:.1f}s "
            f"({self.files_per_second:.1f} files/s, {self.mb_per_second:.1f} MB/s)",
        ]
        if any(self.passed_over.values()):
            reasons = ", ".join(f"{n} {why}" for why, n in self.passed_over.items() if n)
            out.append(f"passed over: {reasons}")
        if self.replaced or self.deleted or self.delete_pending:
            out.append(
                f"deleted {self.replaced} earlier versions of changed files, {self.deleted} documents of removed files"
                + (f"; {self.delete_pending} deletions left for the next run" if self.delete_pending else "")
            )
        if self.removed_kept:
            out.append(
                f"{self.removed_kept} files no longer in the source stay on the platform (delete them with --delete)"
            )
        if self.gone_failures:
            out.append(
                f"{self.gone_failures} failed files are no longer in the source: recorded as gone, no longer failed"
            )
        if self.excluded_kept:
            out.append(f"{self.excluded_kept} files now excluded by the filters stay on the platform")
        if self.max_rps:
            out.append(
                f"request budget: at most {self.max_rps:g} requests/s; {self.budget_requests} requests, "
                f"{self.budget_waits} of them waited their turn"
            )
        if self.rate_limited:
            settled = f"; sending slowed to {self.settled_rps:.0f} requests/s" if self.settled_rps else ""
            out.append(f"the platform rate-limited {self.rate_limited} requests (HTTP 429){settled}")
        if self.stored_at is not None:
            out.append(f"files stored by {self.destination} under {self.stored_at}")
        if self.stopped_reason:
            out.append(f"stopped sending: {self.stopped_reason}")
        if self.failures:
            out.append("failed files:")
            out.extend(f"  {path}: {reason}" for path, reason in self.failures[:max_failures])
            if self.failed > max_failures:
                out.append(
                    f"  … and {self.failed - max_failures} more (ingest status --manifest {self.manifest} --failed)"
                )
            out.append(f"re-send only the failed files with: ingest retry-failed --manifest {self.manifest}")
        out.append(f"manifest: {self.manifest}" + (f", report: {self.report}" if self.report else ""))
        return out


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def check_report_path(path: Path) -> None:
    """Refuse a ``--report`` that could not be written, before the run rather than after it."""
    if path.is_dir():
        raise ConfigError(f"--report {path} is a folder; name a file, e.g. {path / 'report.json'}")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise ConfigError(f"--report {path}: {parent} is a file, not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"--report {path} is read-only")
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--report {path}: cannot create files in {parent} (permission denied)")


def write_report(manifest: Manifest, run_id: int, path: Path) -> None:
    """One JSON record per file in the manifest, streamed (memory stays flat for millions of files).

    ``this_run`` tells the files this run touched from those it skipped as already done.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("[\n")
            first = True
            for record in manifest.iter_files():
                entry = record.to_json()
                entry["this_run"] = record.run_id == run_id
                f.write(("" if first else ",\n") + json.dumps(entry, ensure_ascii=False))
                first = False
            f.write("\n]\n")
    except OSError as exc:
        raise ConfigError(f"cannot write report {path}: {exc.strerror or exc}") from None
