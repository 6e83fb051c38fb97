"""A MOI connector's source (a bucket) as an engine ``Source``: the files ``ingest migrate`` loads.

``entries`` lists the connector's files once (``/connectors/files/list``, filtered by ``file_types``;
folders, ``type`` 10 or a uri ending in ``/``, are left out) and yields them in the listing's order as
``FileItem(rel_path=uri, size, mtime_ns=0)``: MOI lists no modification time, so a changed size is what
makes a file new. Nothing is read locally: MOI reads the bucket itself, so ``refresh`` returns the item
as it is and ``abs_path`` is only the uri.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from ingest.errors import ConfigError, PermanentError
from ingest.models import FileItem
from ingest.platforms.moi.client import MoiClient
from ingest.platforms.moi.filetypes import FileType
from ingest.platforms.moi.wire import SourceFile
from ingest.sources.base import Rejected

__all__ = ["ConnectorSource", "connector_identity"]


def connector_identity(endpoint: str, connector_id: int) -> str:
    """The source a migration manifest is bound to (unchanged since migrations had their own loop)."""
    return f"moi-connector:{endpoint.rstrip('/')}/connector/{connector_id}"


class ConnectorSource:
    """The files of MOI connector ``connector_id`` (see the module docstring). ``client`` is the caller's."""

    def __init__(self, client: MoiClient, connector_id: int, file_types: Sequence[int] = ()) -> None:
        self.client = client
        self.connector_id = connector_id
        self.file_types = tuple(file_types)
        self._by_uri: dict[str, FileItem] | None = None

    def identity(self) -> str:
        return connector_identity(self.client.endpoint, self.connector_id)

    def describe(self) -> str:
        return f"MOI connector {self.connector_id} at {self.client.endpoint}"

    async def entries(self) -> AsyncIterator[FileItem | Rejected]:
        for f in await self._list():
            yield _item(f)

    async def refresh(self, item: FileItem) -> FileItem | str:
        return item

    async def lookup(self, rel_path: str) -> FileItem | Rejected:
        if self._by_uri is None:
            self._by_uri = {f.uri: _item(f) for f in await self._list()}
        found = self._by_uri.get(rel_path)
        if found is None:
            return Rejected(rel_path, f"MOI connector {self.connector_id} no longer lists it", gone=True)
        return found

    def passed_over(self) -> Mapping[str, int]:
        return {}

    async def _list(self) -> list[SourceFile]:
        try:
            files = await self.client.connector_files(self.connector_id, self.file_types)
        except PermanentError as exc:
            if exc.status == 404:
                raise ConfigError(
                    f"MOI has no connector {self.connector_id}; see `ingest moi connectors list`"
                ) from None
            raise ConfigError(str(exc)) from None
        return [f for f in files if f.type != FileType.DIR and not f.uri.endswith("/")]


def _item(f: SourceFile) -> FileItem:
    return FileItem(f.uri, Path(f.uri), f.size, 0)
