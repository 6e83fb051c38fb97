"""MOI emulator: ``POST /connectors/upload``, the multipart upload of local files into a volume.

The form (``file`` x N, ``VolumeID``, ``meta``, ``dedup``, ``file_types``, ``path_regex``, …) is read
part by part; file parts are streamed to ``<data_dir>/.staging`` while their md5 is computed (small ones,
up to ``KEEP_IN_MEMORY`` bytes per request in all, are kept in memory instead), and stored (``MoiStore``:
small bodies in its database, others at ``<data_dir>/<volume>/<path>``) only once the whole request is
valid, as one new upload task, committed together with the uploads waiting at that moment.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from aiohttp import BodyPartReader, web

from ingest.emulators.kit.common import ApiError, relative_path_problem
from ingest.emulators.kit.multipart import PartNames, receive_form, receive_part
from ingest.emulators.kit.store import discard_staged
from ingest.emulators.moi.access import check_unrestricted, check_volume
from ingest.emulators.moi.connfiles import keep_connector_files
from ingest.emulators.moi.filetypes import TYPE_NUMBERS, file_type
from ingest.emulators.moi.state import MoiState, state_of
from ingest.emulators.moi.store import Dedup, FileResult, IncomingFile
from ingest.emulators.moi.wire import NOT_FOUND, bad, check_keys, ok, short

__all__ = ["upload"]

#: Largest non-file form field (``meta`` of 20 files is a few KiB).
TEXT_FIELD_LIMIT = 1 << 20
_TEXT_FIELDS = frozenset(
    {"VolumeID", "meta", "dedup", "file_types", "path_regex", "unzip_keep_structure", "table_config"}
)
_FILE_FIELD = "file"
#: The seed's "upload files to a connector" sends its files in parts named "data" and nothing else (kept as
#: connector files, ``connfiles``); with a VolumeID and without meta they are stored under their own names.
_DATA_FIELD = "data"
_EMPTY_FIELD = "__empty"
_DEDUP_KEYS = frozenset({"name", "md5"})
_DEDUP_STRATEGIES = {"skip": "skip", "replace": "replace", "overwrite": "replace"}
#: Bytes of ``file`` parts one request may keep in memory instead of staging them (``receive_part``):
#: a batch of small files costs no staging file each, and a request never holds more than this (plus
#: one write buffer) whatever it sends.
KEEP_IN_MEMORY = 1 << 20


# --- receiving the multipart body -------------------------------------------------------------------------


@dataclass
class _StagedPart:
    #: Staged on disk, or the bytes themselves for a small ``file`` part.
    body: Path | bytes
    size: int
    md5: str
    field: str = _FILE_FIELD
    filename: str = ""


@dataclass
class _Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[_StagedPart] = field(default_factory=list)
    #: What is left of ``KEEP_IN_MEMORY`` for this request.
    keep_allowance: int = KEEP_IN_MEMORY


async def _receive_form(request: web.Request, state: MoiState, staged: list[Path]) -> _Form:
    """Parse the multipart body, streaming ``file`` parts to staging (their paths go to ``staged``)."""
    form = _Form()

    async def on_other(part: BodyPartReader, name: str | None, filename: str | None) -> None:
        if name in (_FILE_FIELD, _DATA_FIELD):
            if len(form.files) >= state.config.max_files_per_request:
                raise bad(f"too many files: at most {state.config.max_files_per_request} per request")
            form.files.append(await _stage_file(part, (name, filename), form, state, staged))
        elif name == _EMPTY_FIELD:
            await part.release()  # the SDK's placeholder that keeps an upload without files multipart
        else:
            known = ", ".join(sorted({*_TEXT_FIELDS, _FILE_FIELD, _DATA_FIELD}))
            raise bad(f"unknown form field {short(name or '')!r}; expected one of: {known}")

    await receive_form(request, form.fields, on_other, text_fields=_TEXT_FIELDS, text_limit=TEXT_FIELD_LIMIT, fail=bad)
    return form


async def _stage_file(
    part: BodyPartReader, names: PartNames, form: _Form, state: MoiState, staged: list[Path]
) -> _StagedPart:
    """Stream one file part to staging (or keep it, when small), hashing as it goes."""
    limit, index = state.config.max_file_size, len(form.files)
    # ``data`` parts may become connector files, which are kept as staged files: only ``file`` parts stay
    # in memory.
    keep = form.keep_allowance if names[0] == _FILE_FIELD else -1
    body, size, md5 = await receive_part(
        part,
        state.store.staging_dir,
        staged,
        limit=limit,
        too_large=lambda: bad(f"file part {index} is larger than the {limit}-byte limit"),
        keep_up_to=keep,
    )
    if isinstance(body, bytes):
        form.keep_allowance -= size
    return _StagedPart(body, size, md5, names[0] or _FILE_FIELD, names[1] or "")


# --- validating the fields ------------------------------------------------------------------------

_SEED_META_KEYS = {"file_name", "file_size", "mime_type"}
_SDK_META_KEYS = {"filename", "path"}


@dataclass(frozen=True, slots=True)
class _MetaEntry:
    dest: str
    #: What ``path_regex`` is matched against: the SDK form's ``path``, else the destination.
    source_path: str
    declared_size: int | None


def _parse_json_field(fields: Mapping[str, str], name: str) -> Any:
    try:
        return json.loads(fields[name])
    except json.JSONDecodeError as exc:
        raise bad(f"form field {name} is not valid JSON ({exc})") from None
    except RecursionError:
        raise bad(f"form field {name} is nested too deeply") from None


def _parse_meta(fields: Mapping[str, str], file_count: int) -> list[_MetaEntry]:
    if "meta" not in fields:
        if file_count:
            raise bad("form field meta is required when files are sent (a JSON array, one entry per file)")
        return []
    value = _parse_json_field(fields, "meta")
    if not isinstance(value, list):
        raise bad("form field meta must be a JSON array with one object per file")
    if len(value) != file_count:
        raise bad(f"form field meta has {len(value)} entries but {file_count} file parts were sent")
    entries = [_parse_meta_entry(index, entry) for index, entry in enumerate(value)]
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.dest in seen:
            raise bad(f"meta[{index}]: {entry.dest!r} is also the destination of meta[{seen[entry.dest]}]")
        seen[entry.dest] = index
    return entries


def _data_part_entry(index: int, part: _StagedPart) -> _MetaEntry:
    """A ``data`` part without meta goes to the volume under its own file name."""
    problem = relative_path_problem(part.filename) if part.filename else "is missing"
    if problem is not None:
        raise bad(f"data part {index}: the file name {short(part.filename)!r} {problem}; send meta instead")
    return _MetaEntry(part.filename, part.filename, None)


def _parse_meta_entry(index: int, entry: Any) -> _MetaEntry:
    where = f"meta[{index}]"
    if not isinstance(entry, dict):
        raise bad(f"{where} must be a JSON object")
    if "file_name" in entry and "filename" in entry:
        raise bad(f"{where} has both file_name and filename; use one form")
    if "file_name" in entry:
        check_keys(entry, _SEED_META_KEYS, where)
        dest = _meta_dest(entry, "file_name", where)
        size = entry.get("file_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad(f"{where} ({short(dest)}): file_size is required and must be a non-negative integer")
        if not isinstance(entry.get("mime_type", ""), str):
            raise bad(f"{where} ({short(dest)}): mime_type must be a string")
        return _MetaEntry(dest, dest, size)
    if "filename" in entry:
        check_keys(entry, _SDK_META_KEYS, where)
        name = entry.get("filename")
        if not isinstance(name, str) or not name:
            raise bad(f"{where}: filename must be a non-empty string")
        source = entry.get("path", name)
        if not isinstance(source, str):
            raise bad(f"{where} ({short(name)}): path must be a string")
        return _MetaEntry(_sdk_dest(where, name, source), source, None)
    raise bad(f"{where} needs file_name (with file_size) or filename")


def _sdk_dest(where: str, filename: str, path: str) -> str:
    """Where a file of the SDK/5.0 form (``filename`` + ``path``) is kept in the volume.

    MOI 5.0 says ``path`` records the source path (and is what ``path_regex`` matches) and that the request
    has no destination-folder field. The emulator keeps the file at that recorded path when it is a clean
    relative path ending in ``filename`` (so a tree stays a tree, and two ``README.md`` in different folders
    stay two files), and at ``filename`` otherwise (the SDK's table import sends ``"path": "/"``).
    """
    if relative_path_problem(path) is None and posixpath.basename(path) == filename:
        return path
    problem = relative_path_problem(filename)
    if problem is not None:
        raise bad(f"{where}: filename {short(filename)!r} {problem}")
    return filename


def _meta_dest(entry: Mapping[str, Any], key: str, where: str) -> str:
    dest = entry.get(key)
    if not isinstance(dest, str):
        raise bad(f"{where}: {key} must be a string")
    problem = relative_path_problem(dest)
    if problem is not None:
        raise bad(f"{where}: {key} {short(dest)!r} {problem}")
    return dest


def _parse_dedup(fields: Mapping[str, str]) -> Dedup | None:
    if "dedup" not in fields:
        return None
    value = _parse_json_field(fields, "dedup")
    if not isinstance(value, dict):
        raise bad('form field dedup must be a JSON object like {"by": ["name", "md5"], "strategy": "skip"}')
    check_keys(value, {"by", "strategy"}, "form field dedup")
    by = value.get("by")
    if not isinstance(by, list) or not by or not all(isinstance(key, str) and key in _DEDUP_KEYS for key in by):
        raise bad('dedup.by must be a non-empty array of "name" and/or "md5"')
    strategy = value.get("strategy")
    if strategy not in _DEDUP_STRATEGIES:
        raise bad('dedup.strategy must be "skip", "replace" or "overwrite"')
    return Dedup(frozenset(by), _DEDUP_STRATEGIES[strategy])


def _parse_file_types(fields: Mapping[str, str]) -> frozenset[int] | None:
    if "file_types" not in fields:
        return None
    value = _parse_json_field(fields, "file_types")
    valid = TYPE_NUMBERS
    if not isinstance(value, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and t in valid for t in value
    ):
        raise bad(f"form field file_types must be a JSON array of file type numbers {min(valid)}-{max(valid)}")
    return frozenset(value) or None  # an empty list filters nothing


def _parse_path_regex(fields: Mapping[str, str]) -> re.Pattern[str] | None:
    if "path_regex" not in fields or not fields["path_regex"]:
        return None
    try:
        return re.compile(fields["path_regex"])
    except re.error as exc:
        raise bad(f"form field path_regex is not a valid regular expression ({exc})") from None


def _check_minor_fields(fields: Mapping[str, str]) -> None:
    """Fields accepted for compatibility and validated, but with no effect in the emulator."""
    if fields.get("unzip_keep_structure", "true").lower() not in ("true", "false"):
        raise bad("form field unzip_keep_structure must be true or false")
    if "table_config" in fields and not isinstance(_parse_json_field(fields, "table_config"), dict):
        raise bad("form field table_config must be a JSON object")


def _volume_id_field(fields: Mapping[str, str]) -> str:
    volume_id = fields.get("VolumeID", "").strip()
    if not volume_id:
        raise bad("form field VolumeID is required")
    return volume_id


def _filter_problem(
    entry: _MetaEntry, file_types: frozenset[int] | None, path_regex: re.Pattern[str] | None
) -> str | None:
    """Why ``file_types``/``path_regex`` exclude this file (it is then refused alone), or ``None``."""
    kind = file_type(entry.dest)
    if file_types is not None and kind not in file_types:
        return f"skipped: file type {kind} is not in file_types"
    if path_regex is not None and not path_regex.search(entry.source_path):
        return "skipped: path does not match path_regex"
    return None


# --- the handler ----------------------------------------------------------------------------------


async def upload(request: web.Request) -> web.Response:
    state = state_of(request)
    staged: list[Path] = []
    try:
        form = await _receive_form(request, state, staged)
        return await _accept_upload(request, state, form)
    finally:
        # Whatever happened (invalid request, dropped connection, cancellation), no staged body survives.
        discard_staged(staged)


async def _accept_upload(request: web.Request, state: MoiState, form: _Form) -> web.Response:
    fields = form.fields
    if not fields and form.files and all(part.field == _DATA_FIELD for part in form.files):
        # The seed's "upload files to a connector": data parts and nothing else (see ``connfiles``).
        check_unrestricted(request, "upload connector files")
        parts = [(_on_disk(part), part.filename) for part in form.files]
        return ok(request, await anyio.to_thread.run_sync(keep_connector_files, state.store, parts))
    volume_id = _volume_id_field(fields)
    check_volume(request, volume_id)
    if not state.store.volume_known(volume_id) and await state.store.run(lambda: state.store.volume(volume_id)) is None:
        raise ApiError(404, NOT_FOUND, f"volume {short(volume_id)} not found")
    if "meta" not in fields and form.files and all(p.field == _DATA_FIELD for p in form.files):
        entries = [_data_part_entry(index, part) for index, part in enumerate(form.files)]
    else:
        entries = _parse_meta(fields, len(form.files))
    for index, (entry, part) in enumerate(zip(entries, form.files, strict=True)):
        if entry.declared_size is not None and entry.declared_size != part.size:
            raise bad(
                f"meta[{index}] ({short(entry.dest)}): file_size is {entry.declared_size}"
                f" but {part.size} bytes were received"
            )
    dedup = _parse_dedup(fields)
    file_types = _parse_file_types(fields)
    path_regex = _parse_path_regex(fields)
    _check_minor_fields(fields)
    if not form.files and "table_config" not in fields:
        raise bad("no files: send at least one file part (or table_config)")

    refusals = [_filter_problem(entry, file_types, path_regex) for entry in entries]
    accepted = [
        IncomingFile(entry.dest, part.body, part.size, part.md5)
        for entry, part, refusal in zip(entries, form.files, refusals, strict=True)
        if refusal is None
    ]
    # In a worker thread, never on the loop: creating the files can wait on the file system's journal
    # (milliseconds each on a busy disk, measured), which would stall every other request. Grouped with
    # the uploads waiting meanwhile: one hop and one commit for them all.
    task_id, stored = await state.store.grouped(
        lambda: state.store.commit_upload(
            volume_id, accepted, dedup, delay_ms=state.task_delay_ms, fail_rate=state.task_fail_rate
        )
    )
    results = _merge_results(refusals, stored)
    return ok(request, _upload_data(task_id, results))


def _on_disk(part: _StagedPart) -> Path:
    """A ``data`` part's staged file (they are never kept in memory, see ``_stage_file``)."""
    if not isinstance(part.body, Path):
        raise TypeError("a data part was kept in memory")
    return part.body


def _merge_results(refusals: list[str | None], stored: list[FileResult]) -> list[FileResult]:
    """Results in request order: refused files in their place, the others from the store."""
    pending = iter(stored)
    return [next(pending) if refusal is None else FileResult(False, "", refusal) for refusal in refusals]


def _upload_data(task_id: str, results: list[FileResult]) -> dict[str, Any]:
    accepted = [r for r in results if r.success]
    skipped = sum(r.message.startswith("skipped: duplicate") for r in accepted)
    return {
        "success": True,
        "file_id": accepted[0].file_id if accepted else "",
        "task_id": task_id,
        "message": f"{len(accepted) - skipped} file(s) uploaded, {skipped} skipped as duplicates,"
        f" {len(results) - len(accepted)} refused",
        "results": [r.to_json() for r in results],
    }
