"""Progress display: the only module that imports tqdm.

Two bars (files and bytes, each with rate and ETA) and a postfix with the files in flight on the
platform. Totals grow while the walk is still discovering files, so the ETA firms up once the walk
ends. Everything is a no-op when disabled (not a terminal, or ``--quiet``).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["Progress"]


class Progress:
    def __init__(self, enabled: bool, *, quiet: bool = False) -> None:
        self.enabled = enabled and not quiet
        self.quiet = quiet
        self._files: Any = None
        self._bytes: Any = None
        if self.enabled:
            from tqdm import tqdm

            self._files = tqdm(
                total=0,
                desc="files",
                unit="file",
                dynamic_ncols=True,
                position=0,
                file=sys.stderr,
                leave=True,
            )
            self._bytes = tqdm(
                total=0,
                desc="bytes",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                dynamic_ncols=True,
                position=1,
                file=sys.stderr,
                leave=True,
            )

    def discovered(self, size: int) -> None:
        """A file was queued to be sent: the totals grow."""
        if self.enabled:
            self._files.total += 1
            self._bytes.total += size
            self._files.refresh()

    def sent(self, nbytes: int) -> None:
        if self.enabled:
            self._bytes.update(nbytes)

    def unsent(self, nbytes: int) -> None:
        """Bytes counted for a send that failed and will be repeated."""
        if self.enabled:
            self._bytes.total += nbytes

    def finished(self, count: int = 1) -> None:
        if self.enabled:
            self._files.update(count)

    def in_flight(self, n: int) -> None:
        if self.enabled:
            self._files.set_postfix_str(f"processing on platform: {n}", refresh=False)

    def message(self, line: str) -> None:
        """Print a line above the bars (or plainly when bars are off); nothing when quiet."""
        if self.quiet:
            return
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.enabled:
            self._files.close()
            self._bytes.close()
            self.enabled = False
