"""Glob patterns for ``--include`` / ``--exclude``, matched against relative POSIX paths.

Rules (those of rsync and .gitignore, which users already know):

- a pattern without ``/`` matches the base name at any depth: ``*.pdf``, ``.git``;
- a pattern with ``/`` matches the whole relative path: ``docs/*.md``, ``build/**``;
- ``*`` and ``?`` never cross ``/``; ``**`` crosses any number of folders (``a/**/b`` matches ``a/b``);
- ``[abc]`` / ``[!abc]`` are character classes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

__all__ = ["GlobSet"]


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    anchored = "/" in pattern.rstrip("/")
    pattern = pattern.strip("/") if anchored else pattern.rstrip("/")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile(prefix + "".join(out) + r"\Z", re.DOTALL)


class GlobSet:
    """A set of patterns; ``matches(path)`` is true when any pattern matches."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(p for p in patterns if p)
        self._compiled = tuple(_compile(p) for p in self.patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, rel_path: str) -> bool:
        return any(rx.match(rel_path) for rx in self._compiled)
