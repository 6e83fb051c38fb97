"""Names the VikingDB target gives things: deterministic doc ids, staging keys, document names and the
``meta`` entries of one file.

The ``doc_id`` is what makes resuming safe without server-side dedup: the same relative path always
gives the same id, so a file caught mid-flight by a crash is looked up (``doc/info``) before it is
added again, and re-adding overwrites instead of duplicating. The platform allows ``[A-Za-z0-9_]``,
a letter or ``_`` first, at most 128 characters; the id is a readable slug of the path (up to about
100 characters) plus 96 bits of its sha256, so distinct paths never share an id in practice, whatever
the slug loses.

The staging key carries the file's version (size and mtime), so ``doc/info``'s ``tos_path`` (or ``url``)
tells whether the document the platform holds came from this version of the file or an older one.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import string
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from ingest.models import FileItem

__all__ = ["doc_id_for", "doc_name_for", "meta_for", "source_path_metadata", "staging_key"]

MAX_DOC_ID = 128
MAX_DOC_NAME = 256
_HASH_CHARS = 24  # 96 bits
#: S3 limits user metadata to 2 KB in total; longer paths are simply not recorded there.
MAX_SOURCE_PATH_METADATA = 1024
_NOT_WORD = re.compile(r"[^A-Za-z0-9]+")


def doc_id_for(rel_path: str, prefix: str = "") -> str:
    """``docs/a b.pdf`` -> ``docs_a_b_pdf_<24 hex>``; ``prefix`` is prepended and hashed with the path."""
    digest = hashlib.sha256(f"{prefix}\0{rel_path}".encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    # Room for the prefix, the hash, their separators and a possible "d_" in front.
    room = MAX_DOC_ID - _HASH_CHARS - 1 - (len(prefix) + 1 if prefix else 0) - 2
    slug = _NOT_WORD.sub("_", rel_path).strip("_")[:room].rstrip("_")
    parts = [p for p in (prefix, slug, digest) if p]
    doc_id = "_".join(parts)
    if not (doc_id[0].isalpha() or doc_id[0] == "_"):
        doc_id = "d_" + doc_id
    assert len(doc_id) <= MAX_DOC_ID
    return doc_id


def doc_name_for(rel_path: str) -> str:
    """The file name, cut to the platform's 256 characters while keeping the extension."""
    name = posixpath.basename(rel_path)
    if len(name) <= MAX_DOC_NAME:
        return name
    stem, ext = posixpath.splitext(name)
    ext = ext[:16]
    return stem[: MAX_DOC_NAME - len(ext)] + ext


def staging_key(prefix: str, doc_id: str, item: FileItem) -> str:
    """``<prefix><doc_id>/<size>-<mtime_ns>/<file name>``: the object keeps the file's own name, from
    which the platform takes the document name and type for ``add_type: tos``."""
    return f"{prefix}{doc_id}/{item.size}-{item.mtime_ns}/{posixpath.basename(item.rel_path)}"


def source_path_metadata(rel_path: str) -> dict[str, str]:
    """User metadata recording the relative path (percent-encoded: metadata must be ASCII)."""
    quoted = quote(rel_path, safe="/")
    return {"source-path": quoted} if len(quoted) <= MAX_SOURCE_PATH_METADATA else {}


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:  # pragma: no cover - placeholders are checked in the config
        raise KeyError(key)


def _placeholders(rel_path: str) -> Mapping[str, str]:
    folder, name = posixpath.split(rel_path)
    stem, ext = posixpath.splitext(name)
    return _Blank(
        path=rel_path,
        top_folder=rel_path.split("/", 1)[0] if "/" in rel_path else "",
        folder=folder,
        name=name,
        stem=stem,
        ext=ext.removeprefix("."),
    )


def meta_for(meta: Mapping[str, Any], rel_path: str) -> list[dict[str, Any]]:
    """The ``meta`` array of ``doc/add`` for one file: static values, and strings with placeholders filled."""
    values = _placeholders(rel_path)
    entries = []
    for name, value in meta.items():
        if isinstance(value, bool):
            kind = "bool"
        elif isinstance(value, int):
            kind = "int64"
        elif isinstance(value, float):
            kind = "float32"
        else:
            kind = "string"
            value = string.Formatter().vformat(str(value), (), values)
        entries.append({"field_name": name, "field_type": kind, "field_value": value})
    return entries
