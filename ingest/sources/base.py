"""The contract every source implements: where the files of a run come from.

The engine drives a source through three calls and knows nothing else about it::

    entries()        the files to send, lazily, in a stable order (a ``FileItem`` each), or ``Rejected``
                     for a file that was found but cannot be sent (the engine records it as failed)
    refresh(item)    look at one file again just before it is sent: the walk may be minutes old
    lookup(path)     one file by its relative path (``retry-failed`` re-reads the manifest's failures)

plus ``identity()`` (bound in the manifest with the destination), ``describe()`` for humans and
``passed_over()`` (what the walk left out on purpose, for the summary: not failures).

Edge cases every implementation must honour:

- ``entries`` never holds the whole source in memory: it yields as it lists, and the consumer's
  backpressure slows the listing down.
- Two listings of an unchanged source yield the same relative paths in the same order.
- ``refresh`` returns the item with its current size and change token, or a one-line reason when the
  file cannot be sent any more (gone, unreadable); it never raises for one file's problem.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from ingest.models import FileItem

__all__ = ["BatchedSource", "Rejected", "Row", "RowSource", "Source", "batched"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A path the source found but cannot send; the engine records it as failed with ``reason``.

    ``gone`` is true only when the source says for certain that the file is not there (a missing file,
    a 404): a file that merely could not be looked up (a 403, a network error) is not gone, and nothing
    that converges the platform to the source (``--delete``, dropping stale failures) may act on it.
    """

    rel_path: str
    reason: str
    gone: bool = False


class Source(Protocol):
    """Where the files of a run come from (a local folder, a MOI connector's bucket, …)."""

    def identity(self) -> str:
        """A stable string naming the source; a manifest belongs to one source and one destination."""
        ...

    def describe(self) -> str:
        """Where files come from, for humans. Never contains secrets."""
        ...

    def entries(self) -> AsyncIterator[FileItem | Rejected]:
        """Every file to send, lazily, in a stable order."""
        ...

    async def refresh(self, item: FileItem) -> FileItem | str:
        """The item as it is now, or why it cannot be sent any more."""
        ...

    async def lookup(self, rel_path: str) -> FileItem | Rejected:
        """One file by its relative path, as ``entries`` would yield it."""
        ...

    def passed_over(self) -> Mapping[str, int]:
        """Files left out on purpose, by reason with the flag that includes them; read after the walk."""
        ...


@runtime_checkable
class BatchedSource(Protocol):
    """A source whose files come in batches that must be decided as soon as each arrives.

    The planner decides walked files in chunks (one manifest query per chunk). A source that waits
    between its batches (a shared-job worker waiting for files to claim) must not have its files held
    back until a chunk fills: they are already claimed by this worker, and nobody else may send them.
    """

    def entry_batches(self) -> AsyncIterator[list[FileItem | Rejected]]:
        """The files of ``entries``, a batch at a time, each batch as soon as it is available."""
        ...


#: A walked file before its ``FileItem`` is built: ``(relative path, size, change token, ...)``, the rest
#: being what its source needs to build the item (``RowSource.item``).
Row = tuple[Any, ...]


@runtime_checkable
class RowSource(Protocol):
    """A source that hands the planner its files as raw rows, so a file the planner skips (done and
    unchanged: on a no-op rerun every file) costs no ``FileItem``: building one, with its pin and path,
    was a third of a no-op rerun's time per file (benchmarks/README.md, Issue 11 item 12)."""

    def row_batches(self, *, expected: int = 0) -> AsyncGenerator[list[Row | Rejected], None]:
        """The files of ``entries`` in the same order, as rows, a batch at a time. ``expected``: about how
        many files the walk will meet (those the manifest holds), for a source that lists a large source
        otherwise than a small one."""
        ...

    def item(self, row: Row) -> FileItem:
        """The ``FileItem`` ``entries`` would have yielded for ``row`` (the same pin: the file the walk saw)."""
        ...


async def batched(entries: AsyncIterator[T], size: int) -> AsyncIterator[list[T]]:
    """``entries`` in lists of up to ``size``, in order."""
    batch: list[T] = []
    async for entry in entries:
        batch.append(entry)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
