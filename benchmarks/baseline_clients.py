"""Minimal clients for MOI, Keyue and VikingDB: the baselines of issue 11's goals 1-2 (and 8 for VikingDB).

Each one sends the requests ``ingest run`` sends for one file per request (MOI: or in ingest's batches),
at the same concurrency, end to end including status polling until every document is done, and nothing
else: no manifest, no retries, no validation, no preflight (``ingest run``'s one to three opening requests
are left out).

  moi      per request: ``POST /connectors/upload`` with ``--batch-files`` files (1, or 20 as ingest's
           default batching: consecutive files in name order), the form ingest sends (``VolumeID``, the
           ``meta`` array of ``filename`` and ``path``, then one ``file`` part each, typed by
           ``mimetypes``). Small files (every file of the request up to 64 KiB) are read whole and the
           body encoded as one buffer, as ``ingest.formdata`` does (read on the loop up to 64 KiB a
           request, in a thread above); any other request streams its files through aiohttp's
           ``FormData``. Then the tasks the uploads made are followed as ``MoiTarget.poll`` does: with two
           or more due, ``GET /task/list`` pages (newest first, ``TaskOrder``'s page size, at most 5
           pages, ``tasklist.verdict``'s rule); a task the list does not settle, or a lone one, by its
           ``GET /task/files``, 8 at a time. Polling rounds start at most every 0.1 s (sooner when every
           followed task is due), as the engine's.
  keyue    per file: ``POST …/task/create/llm_document_import?dirId=…`` (multipart ``file`` streamed from
           disk by aiohttp, then ``taskExtend``); then ``GET …/llm/document/list`` pages of the directory,
           newest first, until every document sought is seen, as ``KeyueTarget.poll`` does.
  viking   per file: the staging PUT into the bucket (path style, ``Content-MD5``, user metadata) as one
           aiohttp request signed with ``ingest.platforms.viking.s3put.sign_s3``, as ``ingest`` sends it
           (same signer, so the ratio measures the engine, not a cheaper S3 client), then
           ``POST /api/knowledge/doc/add`` (``add_type: tos``, signed with
           ``ingest.platforms.viking.signing``); then ``doc/list`` with ``doc_id_list`` filters of 100,
           8 at a time, as ``VikingTarget.poll`` does. A file above 8 MiB (the staging part size) goes up
           through boto3's ``upload_file`` instead: s3transfer with its defaults, 8 MiB parts, 10 at a
           time, what ``aws s3 cp`` does (the goal 8 baseline; ingest sends one part at a time).

Polling follows the engine's schedule: a document is first asked about 0.1 s after it was accepted, then
1.5 times later each time, at most every 5 s; due documents are asked about together. Usage::

    MOI_KEY=… python benchmarks/baseline_clients.py moi DIR --endpoint URL --volume-id V [--batch-files N]
    KEYUE_TOKEN=… python benchmarks/baseline_clients.py keyue DIR --endpoint URL --uid U --username N
    VOLC_ACCESSKEY=… VOLC_SECRETKEY=… python benchmarks/baseline_clients.py viking DIR --endpoint URL \\
        --region R --collection C --staging-endpoint URL --staging-bucket B

Prints ``{"files": N, "done": N, "seconds": S}``; exit 1 with one line on stderr when a file fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import math
import mimetypes
import os
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # for ingest.platforms.viking.signing when run from a checkout

#: The engine's poll schedule (``RunConfig.poll_initial`` / ``poll_max``, ×1.5 per round).
POLL_INITIAL, POLL_MAX, POLL_GROWTH = 0.1, 5.0, 1.5
#: ``KeyueApi.documents``' page size; ``VikingTarget``'s ids per ``doc/list`` and such calls at once.
KEYUE_PAGE, VIKING_CHUNK, VIKING_PARALLEL = 100, 100, 8
#: ``StagingConfig.part_size``'s default: up to it one PUT, above it a multipart upload.
PART_SIZE = 8 * 1024 * 1024
KEYUE_API = "/open/v1/api/v2"


class Failed(Exception):
    """A file the platform refused or failed: the baseline stops (it has no retries)."""


class Poller:
    """Documents accepted and not yet done, asked about on the engine's schedule.

    ``round_every``: rounds start at least this far apart, as the engine's poller does (``poll_initial``),
    so documents accepted one after another are asked about together; sooner only when every followed
    document is due (waiting could group nothing more: the engine's ``all_due`` / ``next_start``), which
    is what ends a run without a late last round. MOI's baseline uses it (its ``/task/list`` page answers
    for a whole round); Keyue's and VikingDB's were measured without it (0, a round whenever a document
    is due) and are left as they were."""

    def __init__(self, check: Callable[[list[str]], Awaitable[set[str]]], *, round_every: float = 0.0) -> None:
        self._check = check  # due ids -> the ids now done (raises Failed)
        self._round_every = round_every
        self._pending: dict[str, tuple[float, float, int]] = {}  # id -> (next poll, interval, files)
        self._arrived = asyncio.Event()
        self.uploads_done = False
        self.done = 0  # files

    def add(self, doc_id: str, files: int = 1) -> None:
        """Follow ``doc_id`` (a MOI task carries ``files`` files; a document is one)."""
        self._pending[doc_id] = (time.monotonic() + POLL_INITIAL, POLL_INITIAL, files)
        self._arrived.set()

    async def run(self) -> None:
        next_round = 0.0
        while not (self.uploads_done and not self._pending):
            now = time.monotonic()
            times = [at for at, _, _ in self._pending.values()]
            all_due = bool(times) and max(times) <= now
            due = [d for d, (at, _, _) in self._pending.items() if at <= now] if now >= next_round or all_due else []
            if not due:
                # The next start: when a document is due, no sooner than the spacing, unless all are due before.
                start = min(max(next_round, min(times)), max(times)) if times else now + 1.0
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), max(0.0, start - now))
                except TimeoutError:
                    pass
                continue
            next_round = now + self._round_every
            finished = await self._check(due)
            now = time.monotonic()
            for doc_id in due:
                _, interval, files = self._pending[doc_id]
                if doc_id in finished:
                    del self._pending[doc_id]
                    self.done += files
                else:
                    interval = min(interval * POLL_GROWTH, POLL_MAX)
                    self._pending[doc_id] = (now + interval, interval, files)


File = tuple[Path, int]  # a path and its size
Item = TypeVar("Item")


def _one(_: object) -> int:
    return 1


async def run_all(
    items: Sequence[Item],
    concurrency: int,
    send: Callable[[Item], Awaitable[str]],
    poller: Poller,
    files: Callable[[Item], int] = _one,
) -> None:
    """``concurrency`` workers sending ``items`` (a file, or MOI's group of files: ``files`` counts them;
    ``send`` returns the document or task id to follow) while ``poller`` runs."""
    queue = list(reversed(items))

    async def worker() -> None:
        while queue:
            item = queue.pop()
            poller.add(await send(item), files(item))

    polling = asyncio.create_task(poller.run())
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        poller.uploads_done = True
        await polling
    finally:
        polling.cancel()


def _envelope(body: Any, what: str, ok: Callable[[Any], bool]) -> Any:
    if not isinstance(body, dict) or not ok(body):
        raise Failed(f"{what}: {json.dumps(body)[:300]}")
    return body.get("data")


# ----- MOI -------------------------------------------------------------------------------------------------

#: ``ingest.smallfiles.SMALL_FILE_MAX`` and ``ingest.formdata.READ_ON_LOOP_MAX``: files up to 64 KiB are read
#: whole, on the loop when the request's files add up to 64 KiB at most, else in one thread hop.
SMALL_FILE_MAX = READ_ON_LOOP_MAX = 64 * 1024
#: ``tasklist``: tasks per ``/task/list`` page at most and at least, room for other writers' tasks, pages
#: per poll; ``MoiTarget``: tasks a poll needs before it lists, ``/task/files`` in flight and page size.
MOI_LIST_PAGE, MOI_LIST_PAGE_MIN, MOI_LIST_SLACK, MOI_LIST_MAX_PAGES = 100, 20, 0.5, 5
MOI_LIST_MIN_TASKS, MOI_FILES_PARALLEL, MOI_FILES_PAGE = 2, 8, 1000
#: MOI's task status while it runs, pauses or is paused (``wire.TaskStatus``), and finished; a file's
#: status in ``/task/files`` (the seed's table, ingest's default ``file_status_table``).
MOI_TASK_RUNNING, MOI_TASK_FINISHED = frozenset({1, 2, 3}), 4
MOI_FILE_FAILED, MOI_FILE_DONE = 4, 5


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _read_whole(paths: Sequence[Path]) -> list[bytes]:
    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def _multipart(fields: Sequence[tuple[str, str]], files: Sequence[tuple[str, str, bytes]], boundary: str) -> bytes:
    """The body as ``ingest.formdata._encode`` writes it (and aiohttp's ``MultipartWriter``): text fields, then
    ``(filename, content type, bytes)`` as ``file`` parts."""
    dash = f"--{boundary}\r\n".encode()
    out = bytearray()
    for name, value in fields:
        out += dash + b"Content-Type: text/plain; charset=utf-8\r\n"
        out += f"Content-Disposition: form-data; name={_quote(name)}\r\n\r\n".encode() + value.encode() + b"\r\n"
    for filename, content_type, data in files:
        out += dash + f'Content-Type: {content_type}\r\nContent-Disposition: form-data; name="file"; '.encode()
        out += f"filename={_quote(filename)}\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


async def moi(args: argparse.Namespace, files: Sequence[File]) -> int:
    endpoint = args.endpoint.rstrip("/")
    headers = {"moi-key": os.environ["MOI_KEY"], "User-Agent": "ingest/0.1 (+moi)"}
    groups = [list(files[i : i + args.batch_files]) for i in range(0, len(files), args.batch_files)]
    files_of: dict[str, int] = {}  # task id -> files its upload carried
    made: dict[str, int] = {}  # task id -> its rank among the tasks made, while followed (``TaskOrder``)
    ranks = itertools.count(1)
    last = 0  # the rank of the newest task made
    # ``HttpClient``'s pool as ``ingest run`` sizes it (--concurrency + 8).
    connector = aiohttp.TCPConnector(limit=args.concurrency + 8, limit_per_host=args.concurrency + 8)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as http:

        def ok(body: Any) -> bool:
            return str(body.get("code", "")).lower() == "ok"

        async def get(path: str, params: dict[str, str], what: str) -> Any:
            async with http.get(endpoint + path, params=params) as r:
                return _envelope(json.loads(await r.read()), what, ok)

        async def send(group: list[File]) -> str:
            nonlocal last
            meta = [{"filename": path.name, "path": path.name} for path, _ in group]
            fields = [("VolumeID", args.volume_id), ("meta", json.dumps(meta, ensure_ascii=False))]
            types = [mimetypes.guess_type(path.name)[0] or "application/octet-stream" for path, _ in group]
            paths = [path for path, _ in group]
            what = f"upload of {paths[0].name}"
            if all(size <= SMALL_FILE_MAX for _, size in group):
                if sum(size for _, size in group) <= READ_ON_LOOP_MAX:
                    contents = _read_whole(paths)
                else:
                    contents = await asyncio.to_thread(_read_whole, paths)
                boundary = uuid.uuid4().hex
                body = _multipart(fields, [(p.name, t, c) for p, t, c in zip(paths, types, contents, strict=True)],
                                  boundary)  # fmt: skip
                content_type = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
                async with http.post(endpoint + "/connectors/upload", data=body, headers=content_type) as r:
                    data = _envelope(json.loads(await r.read()), what, ok)
            else:
                with contextlib.ExitStack() as stack:
                    form = aiohttp.FormData(quote_fields=False)
                    for name, value in fields:
                        form.add_field(name, value)
                    for path, mime in zip(paths, types, strict=True):
                        f = stack.enter_context(open(path, "rb"))  # noqa: ASYNC230 (aiohttp reads it in its executor)
                        form.add_field("file", f, filename=path.name, content_type=mime)
                    async with http.post(endpoint + "/connectors/upload", data=form) as r:
                        data = _envelope(json.loads(await r.read()), what, ok)
            refused = [res for res in data.get("results") or [] if not res.get("success")]
            if refused or not data.get("task_id"):
                raise Failed(f"{what}: {json.dumps(data)[:300]}")
            task_id = str(data["task_id"])
            files_of[task_id] = len(group)
            made[task_id] = last = next(ranks)
            return task_id

        async def listed(wanted: set[str], size: int) -> dict[str, dict[str, Any]]:
            """``tasklist.listed_tasks``: the newest pages until every wanted task is seen, the list ends, a
            page holds only older tasks, or ``MOI_LIST_MAX_PAGES`` were read."""
            oldest = min((int(t) for t in wanted if t.isdigit()), default=None)
            seen: dict[str, dict[str, Any]] = {}
            for page_no in range(1, MOI_LIST_MAX_PAGES + 1):
                params = {"is_desc": "true", "order_by": "created_at", "page": str(page_no), "page_size": str(size)}
                page = await get("/task/list", params, "task list")
                ids = [str(t["id"]) for t in page.get("tasks") or []]
                for task_id, task in zip(ids, page.get("tasks") or [], strict=True):
                    if task_id in wanted:
                        seen.setdefault(task_id, task)
                if (
                    len(seen) == len(wanted)
                    or len(ids) < size
                    or page_no * size >= int(page.get("total") or 0)
                    or (oldest is not None and all(i.isdigit() and int(i) < oldest for i in ids))
                ):
                    break
            return seen

        def listed_done(task: dict[str, Any] | None, files: int) -> bool | None:
            """``tasklist.verdict``: done, still running (False), or ask its files (None)."""
            if task is None:
                return None
            status = int(task.get("status") or 0)
            if status in MOI_TASK_RUNNING:
                return False
            success, failed = task.get("success_file_count"), task.get("failed_file_count")
            if status == MOI_TASK_FINISHED and failed is not None and int(failed) == 0 and success is not None:
                return int(success) >= files or None
            return None

        async def task_done(task_id: str) -> bool:
            params = {"task_id": task_id, "page": "1", "page_size": str(MOI_FILES_PAGE)}
            page = await get("/task/files", params, f"files of task {task_id}")
            statuses = [int(f.get("status") or 0) for f in page.get("files") or []]
            if MOI_FILE_FAILED in statuses:
                raise Failed(f"MOI task {task_id} failed a file: {json.dumps(page)[:300]}")
            return len(statuses) >= files_of[task_id] and all(s == MOI_FILE_DONE for s in statuses)

        async def check(due: list[str]) -> set[str]:
            done: set[str] = set()
            ask = due
            if len(due) >= MOI_LIST_MIN_TASKS:
                # ``TaskOrder.page_size``: our tasks made since the oldest due one, half as many again.
                ours = last - min(made[t] for t in due) + 1
                size = min(MOI_LIST_PAGE, max(MOI_LIST_PAGE_MIN, math.ceil(ours * (1 + MOI_LIST_SLACK))))
                seen = await listed(set(due), size)
                ask = []
                for task_id in due:
                    verdict = listed_done(seen.get(task_id), files_of[task_id])
                    if verdict is None:
                        ask.append(task_id)
                    elif verdict:
                        done.add(task_id)
            for start in range(0, len(ask), MOI_FILES_PARALLEL):
                chunk = ask[start : start + MOI_FILES_PARALLEL]
                for task_id, finished in zip(chunk, await asyncio.gather(*map(task_done, chunk)), strict=True):
                    if finished:
                        done.add(task_id)
            for task_id in done:
                del made[task_id]  # ``TaskOrder.settled``
            return done

        poller = Poller(check, round_every=POLL_INITIAL)
        await run_all(groups, args.concurrency, send, poller, files=len)
        return poller.done


# ----- Keyue -----------------------------------------------------------------------------------------------


async def keyue(args: argparse.Namespace, files: Sequence[File]) -> int:
    base = args.endpoint.rstrip("/") + KEYUE_API
    headers = {"token": os.environ["KEYUE_TOKEN"], "uid": args.uid, "username": args.username}
    connector = aiohttp.TCPConnector(limit=args.concurrency + KEYUE_PAGE)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as http:

        def ok(body: Any) -> bool:
            return bool(body.get("code") == 200)

        async def send(file: File) -> str:
            path = file[0]
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            # One open per file; aiohttp reads the body in chunks in its executor, as ingest's FileBody does.
            with open(path, "rb") as f:  # noqa: ASYNC230
                form = aiohttp.FormData(quote_fields=False)
                form.add_field("file", f, filename=path.name, content_type=mime)
                form.add_field("taskExtend", "{}")
                url = base + "/task/create/llm_document_import"
                async with http.post(url, params={"dirId": args.dir_id}, data=form) as r:
                    data = _envelope(await r.json(content_type=None), f"import of {path.name}", ok)
            return str(data["id"])

        async def check(due: list[str]) -> set[str]:
            """Pages of the directory, newest first, until every id in ``due`` is seen."""
            want, done, pn = set(due), set(), 1
            while want:
                params = {"dirId": args.dir_id, "pn": str(pn), "ps": str(KEYUE_PAGE)}
                async with http.get(base + "/llm/document/list", params=params) as r:
                    page = _envelope(await r.json(content_type=None), "document list", ok)
                docs = page.get("list") or []
                for d in docs:
                    doc_id = str(d.get("id"))
                    if doc_id in want:
                        want.discard(doc_id)
                        if d.get("learnStatus") in (-1, -2):
                            raise Failed(f"Keyue failed document {doc_id}: {d.get('errorMsg')}")
                        if d.get("learnStatus") == 1:
                            done.add(doc_id)
                if len(docs) < KEYUE_PAGE:
                    break
                pn += 1
            return done

        poller = Poller(check)
        await run_all(files, args.concurrency, send, poller)
        return poller.done


# ----- VikingDB --------------------------------------------------------------------------------------------

_NOT_WORD = re.compile(r"[^A-Za-z0-9]+")


async def viking(args: argparse.Namespace, files: Sequence[File]) -> int:
    from yarl import URL

    from ingest.platforms.viking.s3put import UNSIGNED_PAYLOAD, sign_s3
    from ingest.platforms.viking.signing import Credentials, sign

    access, secret = os.environ["VOLC_ACCESSKEY"], os.environ["VOLC_SECRETKEY"]
    credentials = Credentials(access, secret, args.region)
    endpoint = args.endpoint.rstrip("/")
    host = endpoint.split("://", 1)[1].split("/", 1)[0]
    staging = args.staging_endpoint.rstrip("/")
    staging_host = staging.split("://", 1)[1].split("/", 1)[0]
    kb = {"collection_name": args.collection, "project": "default"}
    s3_args = {
        "endpoint_url": args.staging_endpoint, "region_name": args.region,
        "aws_access_key_id": access, "aws_secret_access_key": secret,
    }  # fmt: skip
    connector = aiohttp.TCPConnector(limit=args.concurrency + VIKING_PARALLEL)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def put(key: str, body: bytes, metadata: dict[str, str]) -> None:
            path = quote(f"/{args.staging_bucket}/{key}", safe="/~")
            md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
            headers = {"host": staging_host, "content-md5": md5, "content-length": str(len(body))}
            headers.update({f"x-amz-meta-{k}": v for k, v in metadata.items()})
            payload = UNSIGNED_PAYLOAD if staging.startswith("https:") else hashlib.sha256(body).hexdigest()
            headers.update(sign_s3("PUT", path, headers, payload, access_key=access, secret_key=secret,
                                   region=args.region))  # fmt: skip
            async with http.put(URL(staging + path, encoded=True), data=body, headers=headers) as r:
                if r.status != 200:
                    raise Failed(f"staging PUT of {key}: HTTP {r.status}: {(await r.text())[:200]}")
                await r.read()

        def ok(body: Any) -> bool:
            return bool(body.get("code") == 0)

        async def call(path: str, body: dict[str, Any], what: str) -> Any:
            raw = json.dumps(body, ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json", "Host": host}
            headers.update(sign("POST", path, [], headers, raw, credentials))
            async with http.post(endpoint + path, data=raw, headers=headers) as r:
                return _envelope(await r.json(content_type=None), what, ok)

        async def send(file: File) -> str:
            path, size = file
            doc_id = "b_" + _NOT_WORD.sub("_", path.name)
            key = f"{args.prefix}{doc_id}/{path.name}"
            metadata = {"doc_id": doc_id, "source-path": path.name}
            if size <= PART_SIZE:
                body = await asyncio.to_thread(path.read_bytes)  # ingest reads up to one part, too
                await put(key, body, metadata)
            else:
                await asyncio.to_thread(_upload_file, s3_args, path, args.staging_bucket, key, metadata)
            doc_type = {".txt": "txt", ".pdf": "pdf", ".md": "markdown"}.get(path.suffix.lower(), "txt")
            fields = {"add_type": "tos", "doc_id": doc_id, "doc_name": path.name, "doc_type": doc_type}
            fields["tos_path"] = f"{args.staging_bucket}/{key}"
            await call("/api/knowledge/doc/add", {**kb, **fields}, f"doc/add of {path.name}")
            return doc_id

        async def check_chunk(ids: list[str]) -> set[str]:
            body = {**kb, "offset": 0, "limit": VIKING_CHUNK, "filter": {"doc_id_list": ids}}
            data = await call("/api/knowledge/doc/list", body, "doc/list")
            done = set()
            for d in data.get("doc_list") or []:
                status = (d.get("status") or {}).get("process_status")
                if status == 1:
                    raise Failed(f"VikingDB failed {d.get('doc_id')}: {d.get('status')}")
                if status == 0:
                    done.add(str(d.get("doc_id")))
            return done

        async def check(due: list[str]) -> set[str]:
            chunks = [due[i : i + VIKING_CHUNK] for i in range(0, len(due), VIKING_CHUNK)]
            done: set[str] = set()
            for start in range(0, len(chunks), VIKING_PARALLEL):
                for found in await asyncio.gather(*map(check_chunk, chunks[start : start + VIKING_PARALLEL])):
                    done |= found
            return done

        poller = Poller(check)
        await run_all(files, args.concurrency, send, poller)
        return poller.done


def _upload_file(s3_args: dict[str, str], path: Path, bucket: str, key: str, metadata: dict[str, str]) -> None:
    """A big file the way ``aws s3 cp`` sends it: boto3's s3transfer, its default 8 MiB parts, 10 threads."""
    import boto3

    client = boto3.client("s3", **s3_args)
    client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": metadata})


# ----- main ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = p.add_subparsers(dest="platform", required=True)
    m = sub.add_parser("moi", help="MOI /connectors/upload + /task/list and /task/files polling")
    m.add_argument("--volume-id", required=True)
    m.add_argument("--batch-files", type=int, default=1, help="files per upload request (ingest's default: 20)")
    k = sub.add_parser("keyue", help="Keyue llm_document_import + document list polling")
    k.add_argument("--uid", required=True)
    k.add_argument("--username", required=True)
    k.add_argument("--dir-id", default="0")
    v = sub.add_parser("viking", help="VikingDB staging PUT + doc/add + doc/list polling")
    v.add_argument("--region", required=True)
    v.add_argument("--collection", required=True)
    v.add_argument("--staging-endpoint", required=True)
    v.add_argument("--staging-bucket", required=True)
    v.add_argument("--prefix", default="baseline/")
    for s in (m, k, v):
        s.add_argument("folder", type=Path, help="the files to send (the folder's own files, not below)")
        s.add_argument("--endpoint", required=True)
        s.add_argument("--concurrency", type=int, default=32)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    files = sorted((p, p.stat().st_size) for p in args.folder.iterdir() if p.is_file())
    started = time.perf_counter()
    try:
        done = asyncio.run({"moi": moi, "keyue": keyue, "viking": viking}[args.platform](args, files))
    except (Failed, aiohttp.ClientError, OSError, KeyError, ValueError) as exc:
        print(f"baseline {args.platform}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"files": len(files), "done": done, "seconds": round(time.perf_counter() - started, 3)}))
    return 0 if done == len(files) else 1


if __name__ == "__main__":
    sys.exit(main())
