"""MOI emulator: the seed's "upload files to a connector" (上传文件到连接器) form of ``POST /connectors/upload``.

The seed documents it with one parameter, ``data`` ("multi-file data and request parameters"), and the
example ``files={'data': open('example.txt', 'rb')}`` and nothing else: no ``VolumeID``, no ``meta``. It
sits among the connector APIs, not the volume loads, so the files go to the connector's temporary
storage, as MOI's ``/connectors/file/upload`` does (API-NOTES: it answers ``{conn_file_ids, file_ids}``;
the 5.0 reference calls them the temporary files a structured import names in ``table_config``).

The seed shows no answer for this form; the emulator answers that of ``/connectors/file/upload``. Each
file is kept at ``<data_dir>/.connector-files/<conn_file_id>/<file name>``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ingest.emulators.kit.common import relative_path_problem, short
from ingest.emulators.moi.store import MoiStore
from ingest.emulators.moi.wire import bad

__all__ = ["CONNECTOR_FILES_DIR", "keep_connector_files"]

CONNECTOR_FILES_DIR = ".connector-files"


def keep_connector_files(store: MoiStore, parts: list[tuple[Path, str]]) -> dict[str, list[str]]:
    """Move each staged ``(path, file name)`` into the connector's temporary storage. Blocking."""
    for index, (_, name) in enumerate(parts):
        problem = relative_path_problem(name) if name else "is missing"
        if problem is None and "/" in name:
            problem = "names a folder; send the file's own name"
        if problem is not None:
            raise bad(f"data part {index}: the file name {short(name)!r} {problem}")
    ids: list[str] = []
    for staged, name in parts:
        conn_file_id = store.ids.next_id()
        folder = store.data_dir / CONNECTOR_FILES_DIR / conn_file_id
        folder.mkdir(parents=True)
        os.replace(staged, folder / name)
        ids.append(conn_file_id)
    return {"conn_file_ids": ids, "file_ids": list(ids)}
