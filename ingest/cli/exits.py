"""The exit codes of ``ingest``, a contract scripts rely on (README, "Exit codes").

``ingest.cli.main.main`` is the one place that turns an exception into one of them.
"""

from __future__ import annotations

__all__ = ["EXIT_CODES_HELP", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE"]

#: Every file done (or the command did what it was asked).
EXIT_OK = 0
#: Some files failed (listed, with the platform's reason), or the platform refused the operation.
EXIT_FAILED = 1
#: A usage or configuration error: one line naming the flag or setting (``ConfigError``).
EXIT_USAGE = 2
#: Interrupted by SIGINT or SIGTERM; the manifest is consistent, so the same command resumes.
EXIT_INTERRUPTED = 130

#: The contract as the epilogs of ``--help`` state it.
EXIT_CODES_HELP = "exit codes: 0 all files done, 1 some failed, 2 usage/config error, 130 interrupted (rerun resumes)"
