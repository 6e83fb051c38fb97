"""The manifest contract: what the engine asks of the record of a run, and the one resume rule.

A manifest is the single source of truth for "what happened to this file": one record per file
(``FileRecord``), one per run, and meta entries binding it to one source and one destination. Every
backend keeps the same states (``FileState``) and answers to the same ``decide`` rule, so resuming
means the same thing wherever the manifest lives. ``ingest.manifest.sqlite`` is the embedded default.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ingest.models import FileItem, FileState, Receipt

__all__ = [
    "Decision",
    "FileRecord",
    "JsonObject",
    "Manifest",
    "Owner",
    "StoredState",
    "decide",
    "done_and_unchanged",
    "states_by_range",
]


class JsonObject(Mapping[str, str]):
    """A JSON object stored as text, parsed the first time it is read.

    A rerun of a large unchanged tree reads every record only to compare size and mtime: parsing each
    record's ``extra`` there cost as much as the rest of the comparison (benchmarks/README.md).
    """

    __slots__ = ("_parsed", "_text")

    def __init__(self, text: str | None) -> None:
        self._text = text
        self._parsed: dict[str, str] | None = None if text else {}

    def _value(self) -> dict[str, str]:
        if self._parsed is None:
            loaded = json.loads(self._text or "{}")
            self._parsed = loaded if isinstance(loaded, dict) else {}
        return self._parsed

    def __getitem__(self, key: str) -> str:
        return self._value()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._value())

    def __len__(self) -> int:
        return len(self._value())

    def __repr__(self) -> str:
        return repr(self._value())


@dataclass(frozen=True, slots=True)
class FileRecord:
    path: str
    size: int | None
    mtime_ns: int | None
    md5: str | None
    state: FileState
    remote_id: str | None
    task_id: str | None
    #: A ``JsonObject`` as read from a manifest: parsed only when a caller looks inside.
    extra: Mapping[str, str]
    attempts: int
    last_error: str | None
    run_id: int | None
    updated_at: float

    def receipt(self) -> Receipt:
        return Receipt(self.path, self.remote_id, self.task_id, None, dict(self.extra))

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "state": self.state.value,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "md5": self.md5,
            "remote_id": self.remote_id,
            "task_id": self.task_id,
            "attempts": self.attempts,
            "error": self.last_error,
            "updated_at": self.updated_at,
        }


class Decision(enum.Enum):
    """What a run does with one walked file, given its manifest record."""

    SKIP = "skip"  # done and unchanged: no network call at all
    POLL = "poll"  # accepted by the platform earlier and unchanged: only polling remains
    SEND_DEDUP = "send-dedup"  # may have reached the platform before a crash: send with dedup
    SEND = "send"  # new, changed, or failed before: send


def decide(record: FileRecord | None, item: FileItem) -> Decision:
    """The resume rule, in one place."""
    if record is None:
        return Decision.SEND
    unchanged = record.size == item.size and record.mtime_ns == item.mtime_ns
    if not unchanged:
        # A changed file is a new version: send it. If the old version was mid-upload, dedup by
        # name+md5 still cannot match the new content, so dedup costs nothing and stays safe.
        return Decision.SEND_DEDUP if record.state is FileState.UPLOADING else Decision.SEND
    if record.state is FileState.DONE:
        return Decision.SKIP
    if record.state is FileState.PROCESSING and (record.remote_id or record.task_id):
        return Decision.POLL
    if record.state is FileState.UPLOADING:
        return Decision.SEND_DEDUP
    return Decision.SEND


#: What ``decide`` reads of a record, as the manifest stores it: ``(path, size, mtime_ns, state)``, the state
#: as its text. Read with ``Manifest.lookup_states`` without building a ``FileRecord``.
StoredState = tuple[str, int | None, int | None, str]


def done_and_unchanged(stored: StoredState, size: int, mtime_ns: int) -> bool:
    """``decide(record, item) is Decision.SKIP`` for the record stored as ``stored`` and a walked file of
    ``size`` and ``mtime_ns``, without building the record (nor the item: ``ingest.sources.base.RowSource``).

    Not a second rule: it is ``decide``'s own SKIP condition (recorded, same size and change token, done),
    read off the stored fields, for the files a rerun finds unchanged (on a no-op rerun all of them, where
    building a ``FileRecord`` per file was a quarter of the time). Anything else still goes to ``decide``
    with the full record; tests/test_manifest.py checks the two agree on every state and change.
    """
    return stored[3] == "done" and stored[1] == size and stored[2] == mtime_ns


#: Fewest paths ``states_by_range`` reads as one range of the manifest's path index.
RANGE_MIN = 32


def states_by_range(
    paths: Sequence[str],
    read_range: Callable[[str, str, int], Iterable[StoredState]],
    read_in: Callable[[Sequence[str]], dict[str, StoredState]],
) -> dict[str, StoredState]:
    """``Manifest.lookup_states`` for a batch of the walk, whose paths are mostly a run of neighbours in
    path order (one folder's files, sorted): one range read of the path index between the least and the
    greatest (0.7 against 1.1-1.5 µs a file for the ``IN`` list, benchmarks/README.md Issue 11 item 12),
    kept to the paths asked for. The range is read ``limit`` rows at most (a subfolder's files may lie
    within it), and whatever it did not find (new files, a cut-off range, another collation's order) is
    read with ``read_in``: the answer is ``read_in(paths)``'s, whatever the range held."""
    if len(paths) < RANGE_MIN:
        return read_in(paths)
    wanted = set(paths)
    found = {r[0]: r for r in read_range(min(paths), max(paths), 2 * len(wanted) + 64) if r[0] in wanted}
    if len(found) < len(wanted):
        found.update(read_in([p for p in wanted if p not in found]))
    return found


@dataclass(frozen=True, slots=True)
class Owner:
    """Who writes to a shared manifest: the worker's id and the fence of each file it holds (see
    ``ingest.manifest.jobs``). A write to a file whose owner or fence changed is refused."""

    worker: str
    fences: Mapping[str, int]


class Manifest(Protocol):
    """The record of a run as the engine, the runner and the status commands use it.

    Reads are synchronous and cheap. Writes are coroutines that return once the transaction carrying
    them is committed (group commit): the intent (``mark_uploading``) is durable before any byte is
    sent. ``writer()`` runs the committing writer for the duration of a block and drains it on exit,
    cancellation included.

    Writes return the paths they could not change because this process no longer holds them (another
    worker took the file over when this one's lease expired, see ``ingest.manifest.jobs``): the engine
    drops those files. A manifest only one process uses never loses a file and returns an empty set.
    """

    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def bind(self, source: str, target: str) -> None: ...
    def start_run(self, command: str) -> int: ...
    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None: ...
    def runs(self) -> list[dict[str, Any]]: ...
    def lookup(self, path: str) -> FileRecord | None: ...
    def lookup_many(self, paths: Sequence[str]) -> dict[str, FileRecord]:
        """The records of those of ``paths`` the manifest knows, in one query per few hundred paths."""
        ...

    def lookup_states(self, paths: Sequence[str]) -> dict[str, StoredState]:
        """``lookup_many``, reduced to what ``done_and_unchanged`` reads: one tuple per known path."""
        ...

    def is_empty(self) -> bool: ...
    def counts(self) -> dict[str, int]: ...
    def file_count(self) -> int:
        """Every file the manifest holds, whatever its state: ``sum(counts().values())`` without grouping
        (a no-op rerun asks it to find that no file left; over 100,000 rows 0.6 against 7.5 ms)."""
        ...

    def iter_files(
        self, *, states: Sequence[FileState] = (), run_id: int | None = None, page: int = 1000
    ) -> Iterator[FileRecord]: ...
    def writer(self) -> AbstractAsyncContextManager[Any]: ...
    async def mark_uploading(self, items: Sequence[FileItem], run_id: int, *, dedup: bool) -> set[str]: ...
    async def mark_processing(self, receipts: Sequence[Receipt], run_id: int, *, retried: bool = False) -> set[str]: ...
    async def mark_done(self, paths: Sequence[str], run_id: int) -> set[str]: ...
    async def mark_failed(self, failures: Sequence[tuple[str, str]], run_id: int) -> set[str]: ...
    async def note_error(self, path: str, reason: str) -> None: ...
    async def confirm(self, paths: Sequence[str]) -> set[str]:
        """Just before bytes are sent: the paths this process no longer holds (always none when one
        process owns the manifest)."""
        ...

    def close(self) -> None: ...
