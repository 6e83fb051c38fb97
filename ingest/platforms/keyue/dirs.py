"""Keyue knowledge directories as the target sees them: the destination check and ``--mirror-dirs``.

Keyue versions its directory list as a whole: a create must quote the version last read, and a stale
one is answered with 4000526. So creations are serialised (one lock for the tree: workers of this run
never race each other into conflicts, and each folder is created once), and a conflict, caused by
someone else changing the tree, is handled by re-reading the list, reusing the directory if the
other party just created it, and trying again with the new version.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import anyio

from ingest.errors import PermanentError, TransientError, VersionConflict
from ingest.platforms.keyue.api import KeyueApi

__all__ = ["ROOT_DIR", "DirectoryTree", "KnownDirectory"]

log = logging.getLogger("ingest.platforms.keyue.target")

#: The default directory: always there, never listed.
ROOT_DIR = "0"
#: Conflicts in a row before creating one directory is given up for this attempt (the engine retries).
MAX_CONFLICTS = 8


@dataclass(frozen=True, slots=True)
class KnownDirectory:
    id: str
    name: str
    parent_id: str
    has_perm: bool


def _newest_version(entries: list[dict[str, Any]]) -> Any:
    """The list's version as the listing reports it (echoed back as is); 0 for an empty tree."""
    versions = [e["version"] for e in entries if e.get("version") is not None]
    if not versions:
        return 0
    numbers = [v for v in versions if isinstance(v, int) and not isinstance(v, bool)]
    return max(numbers) if len(numbers) == len(versions) else versions[0]


class DirectoryTree:
    """The directory listing, cached, and the local folders mapped to directory ids below ``root``."""

    def __init__(self, api: KeyueApi, root: str) -> None:
        self._api = api
        self.root = root
        self._known: dict[str, KnownDirectory] = {}
        self._children: dict[tuple[str, str], str] = {}
        self._version: Any = 0
        #: Local folder (relative POSIX path, "" = the source root) -> directory id.
        self._folders: dict[str, str] = {"": root}
        #: Folders whose directory the platform refused to create: their files fail at once.
        self._refused: dict[str, str] = {}
        self._lock = anyio.Lock()

    async def load(self) -> None:
        """Read the whole directory list (one request); also what proves the credentials work."""
        entries = await self._api.directories()
        known: dict[str, KnownDirectory] = {}
        children: dict[tuple[str, str], str] = {}
        for e in entries:
            d = KnownDirectory(
                str(e["id"]), str(e.get("name", "")), str(e.get("parentId", ROOT_DIR)), e.get("hasPerm") is not False
            )
            known[d.id] = d
            children.setdefault((d.parent_id, d.name), d.id)  # duplicate names: the first listed wins
        self._known, self._children, self._version = known, children, _newest_version(entries)

    def get(self, dir_id: str) -> KnownDirectory | None:
        return self._known.get(dir_id)

    def subtree(self) -> list[tuple[str, str]]:
        """``(directory id, folder path)`` of the root and every directory below it, as last loaded;
        the root's folder path is ""."""
        children: dict[str, list[KnownDirectory]] = {}
        for d in self._known.values():
            children.setdefault(d.parent_id, []).append(d)
        found, todo = [], [(self.root, "")]
        seen = {self.root}
        while todo:
            dir_id, path = todo.pop()
            found.append((dir_id, path))
            for child in sorted(children.get(dir_id, []), key=lambda d: d.name):
                if child.id not in seen:  # a cycle in a broken listing must not loop forever
                    seen.add(child.id)
                    todo.append((child.id, f"{path}/{child.name}" if path else child.name))
        return found

    def lookup(self, folder: str) -> str | None:
        """The directory of a local folder if it exists already; never creates anything."""
        if folder in self._folders:
            return self._folders[folder]
        parent = self.root
        for name in folder.split("/"):
            found = self._children.get((parent, name))
            if found is None:
                return None
            parent = found
        return parent

    async def ensure(self, folder: str) -> str:
        """The directory of a local folder, creating it (and its parents) under the root if needed."""
        known = self._folders.get(folder)
        if known is not None:
            return known
        async with self._lock:
            parent, path = self.root, ""
            for name in folder.split("/"):
                path = f"{path}/{name}" if path else name
                if path in self._refused:  # checked under the lock: files that waited for it fail too
                    raise PermanentError(self._refused[path])
                dir_id = self._folders.get(path) or self._children.get((parent, name))
                if dir_id is None:
                    try:
                        dir_id = await self._create(parent, name, path)
                    except PermanentError as exc:
                        self._refused[path] = exc.detail
                        raise
                self._folders[path] = dir_id
                parent = dir_id
            return parent

    async def _create(self, parent: str, name: str, path: str) -> str:
        for attempt in range(1, MAX_CONFLICTS + 1):
            try:
                data = await self._api.create_directory(name, parent, self._version)
            except VersionConflict:
                log.debug("directory list changed while creating %s (attempt %d); re-reading", path, attempt)
                await self.load()
                existing = self._children.get((parent, name))
                if existing is not None:
                    return existing  # someone else created it meanwhile
                await anyio.sleep(random.uniform(0, 0.05 * attempt))  # let the other writer finish
                continue
            except PermanentError as exc:
                # A refusal may mean it exists already (created by another client since our read).
                await self.load()
                existing = self._children.get((parent, name))
                if existing is not None:
                    return existing
                text = f"cannot create Keyue directory for folder {path!r}: {exc.detail}"
                raise PermanentError(text, status=exc.status, code=exc.code, detail=text) from None
            return await self._created(data, parent, name, path)
        raise TransientError(
            f"creating Keyue directory for folder {path!r}: the directory list kept changing"
            f" (4000526, {MAX_CONFLICTS} times in a row)"
        )

    async def _created(self, data: Any, parent: str, name: str, path: str) -> str:
        """Record a directory just created; its id comes from the reply or, failing that, the list."""
        new_id = data.get("id") if isinstance(data, dict) else data if isinstance(data, (str, int)) else None
        if isinstance(data, dict) and data.get("version") is not None:
            self._version = data["version"]
        if new_id not in (None, "") and not isinstance(new_id, bool):
            dir_id = str(new_id)
            self._known[dir_id] = KnownDirectory(dir_id, name, parent, True)
            self._children[(parent, name)] = dir_id
            return dir_id
        await self.load()  # the reply did not say: the list does, with the new version too
        existing = self._children.get((parent, name))
        if existing is None:
            raise TransientError(f"Keyue created the directory for folder {path!r} but does not list it yet")
        return existing
