"""Minimal clients for Keyue and VikingDB: the baselines of issue 11's goal 1 (and goal 8 for VikingDB).

Each one sends the requests ``ingest run`` sends for one file per request, at the same concurrency, end
to end including status polling until every document is done, and nothing else: no manifest, no
retries, no validation, no preflight (``ingest run``'s one to three opening requests are left out).

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

    KEYUE_TOKEN=… python benchmarks/baseline_clients.py keyue DIR --endpoint URL --uid U --username N
    VOLC_ACCESSKEY=… VOLC_SECRETKEY=… python benchmarks/baseline_clients.py viking DIR --endpoint URL \\
        --region R --collection C --staging-endpoint URL --staging-bucket B

Prints ``{"files": N, "done": N, "seconds": S}``; exit 1 with one line on stderr when a file fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import mimetypes
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
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
    """Documents accepted and not yet done, asked about on the engine's schedule."""

    def __init__(self, check: Callable[[list[str]], Awaitable[set[str]]]) -> None:
        self._check = check  # due ids -> the ids now done (raises Failed)
        self._pending: dict[str, tuple[float, float]] = {}  # id -> (next poll, interval)
        self._arrived = asyncio.Event()
        self.uploads_done = False
        self.done = 0

    def add(self, doc_id: str) -> None:
        self._pending[doc_id] = (time.monotonic() + POLL_INITIAL, POLL_INITIAL)
        self._arrived.set()

    async def run(self) -> None:
        while not (self.uploads_done and not self._pending):
            now = time.monotonic()
            due = [d for d, (at, _) in self._pending.items() if at <= now]
            if not due:
                wake = min((at for at, _ in self._pending.values()), default=now + 1.0)
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), max(0.0, wake - now))
                except TimeoutError:
                    pass
                continue
            finished = await self._check(due)
            now = time.monotonic()
            for doc_id in due:
                if doc_id in finished:
                    del self._pending[doc_id]
                    self.done += 1
                else:
                    interval = min(self._pending[doc_id][1] * POLL_GROWTH, POLL_MAX)
                    self._pending[doc_id] = (now + interval, interval)


File = tuple[Path, int]  # a path and its size


async def run_all(
    files: Sequence[File], concurrency: int, send: Callable[[File], Awaitable[str]], poller: Poller
) -> None:
    """``concurrency`` workers sending files (``send`` returns the document id to follow) while ``poller`` runs."""
    queue = list(reversed(files))

    async def worker() -> None:
        while queue:
            poller.add(await send(queue.pop()))

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
    for s in (k, v):
        s.add_argument("folder", type=Path, help="the files to send (the folder's own files, not below)")
        s.add_argument("--endpoint", required=True)
        s.add_argument("--concurrency", type=int, default=32)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    files = sorted((p, p.stat().st_size) for p in args.folder.iterdir() if p.is_file())
    started = time.perf_counter()
    try:
        done = asyncio.run((keyue if args.platform == "keyue" else viking)(args, files))
    except (Failed, aiohttp.ClientError, OSError, KeyError) as exc:
        print(f"baseline {args.platform}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"files": len(files), "done": done, "seconds": round(time.perf_counter() - started, 3)}))
    return 0 if done == len(files) else 1


if __name__ == "__main__":
    sys.exit(main())
