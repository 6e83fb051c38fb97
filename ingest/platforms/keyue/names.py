"""Names several files share in one Keyue directory: without ``--mirror-dirs`` every file is imported
into the destination directory under its base name, so ``a/x.txt`` and ``b/x.txt`` become two documents
both named ``x.txt`` that nobody can tell apart. The target warns once, before the first upload.

The count is one names-only pass over the local folder, in bounded memory: a set of name hashes (64-bit,
so a false match is out of reach) up to ``MAX_NAMES`` distinct names, the text of the first
``KEPT_NAMES`` shared names only. Beyond ``MAX_NAMES`` new names are no longer counted and the warning
says "at least".
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass

__all__ = ["KEPT_NAMES", "MAX_NAMES", "SharedNames", "count_shared_names", "shared_names_warning"]

#: Distinct names remembered (about 100 bytes each: some 50 MB at most, freed when the pass ends).
MAX_NAMES = 500_000
#: Shared names whose text is kept, among which the most shared are shown.
KEPT_NAMES = 1_000
#: Shared names shown in the warning.
SHOWN = 5


@dataclass(frozen=True, slots=True)
class SharedNames:
    #: Names held by more than one file.
    names: int
    #: Files holding those names.
    files: int
    #: The most shared names with their number of files, most shared first (at most ``SHOWN``).
    examples: list[tuple[str, int]]
    #: ``False``: more than ``MAX_NAMES`` distinct names; repeats of the later ones went uncounted.
    complete: bool = True


async def count_shared_names(names: AsyncIterable[str]) -> SharedNames | None:
    """The names that occur more than once in ``names``, or ``None`` when none does."""
    seen: set[int] = set()
    extra: dict[int, int] = {}  # hash of a shared name → its files beyond the first
    text: dict[int, str] = {}
    complete = True
    async for name in names:
        key = hash(name)
        if key in seen:
            extra[key] = extra.get(key, 0) + 1
            if key not in text and len(text) < KEPT_NAMES:
                text[key] = name
        elif len(seen) < MAX_NAMES:
            seen.add(key)
        else:
            complete = False
    if not extra:
        return None
    ranked = sorted(((n + 1, name) for key, name in text.items() if (n := extra[key])), key=lambda c: (-c[0], c[1]))
    return SharedNames(
        names=len(extra),
        files=sum(extra.values()) + len(extra),
        examples=[(name, count) for count, name in ranked[:SHOWN]],
        complete=complete,
    )


def shared_names_warning(shared: SharedNames, dir_id: str) -> str:
    """``warning: 2 names are shared by 5 files in Keyue directory 0 (x.txt ×3, y.md ×2); …``"""
    at_least = "" if shared.complete else "at least "
    names = f"{at_least}{shared.names} name{'s are' if shared.names != 1 else ' is'}"
    shown = ", ".join(f"{name} ×{count}" for name, count in shared.examples)
    more = shared.names - len(shared.examples)
    if more > 0:
        shown += f", and {more} more"
    return (
        f"warning: {names} shared by {shared.files} files in Keyue directory {dir_id} ({shown}): each file becomes "
        "a document of its base name there, so documents of the same name cannot be told apart; "
        "use --mirror-dirs to keep folders apart"
    )
