"""A strict local emulator of the MatrixOne Intelligence (MOI) data-ingestion API.

Emulated (wire names as in the MOI document and ``API-NOTES.md`` section 4):

- ``POST /catalog/volume/create``, ``POST /catalog/volume/info`` (``volumes``)
- ``POST /connectors/upload`` (multipart: ``file`` x N, ``VolumeID``, ``meta``, ``dedup``, ...; ``uploads``)
- connectors: ``POST /connectors``, ``/connectors/validate``, ``GET /connectors/list``,
  ``/connectors/files/list``, ``/connectors/summary``, ``PUT|DELETE /connectors/{id}``
  (``connectors``; S3/OSS buckets are read for real through ``sources``)
- tasks: ``POST /task`` (connector load tasks, ``loadtasks``), ``GET /task/get``, ``/task/files``,
  ``/task/list``, ``POST /task/retry|pause|resume|update|delete``, answering for load tasks and upload
  tasks alike (``tasks``)
- test hooks without auth or faults: ``GET /_emulator/files``, ``GET /_emulator/stats``

Every answer uses the MOI envelope ``{"code","msg","data","request_id"}`` (``wire``). Volumes, stored
files, connectors and tasks live in SQLite (``store``), so a restarted emulator still answers for old
task ids. Load tasks are worked by one background worker per app, started and stopped with it. One
emulator per data dir is the intended use; a second one on the same dir is tolerated (ids and staged
bodies do not collide), except that a starting emulator restarts the load-task copies it finds in
flight, assuming they were cut short by a stop.

Status codes follow the MOI document: file 1 waiting, 2 uploading, 3 paused, 4 failed, 5 success,
6 retrying; task 1 running, 2 pausing, 3 paused, 4 finished.
"""

from __future__ import annotations

from ingest.emulators.moi.app import add_moi_arguments, build_moi_app, create_moi_app
from ingest.emulators.moi.config import MoiEmulatorConfig
from ingest.emulators.moi.state import MOI_STATE, MoiState
from ingest.emulators.moi.wire import FileStatus, TaskStatus

__all__ = [
    "MOI_STATE",
    "FileStatus",
    "MoiEmulatorConfig",
    "MoiState",
    "TaskStatus",
    "add_moi_arguments",
    "build_moi_app",
    "create_moi_app",
]
