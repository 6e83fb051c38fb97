"""The per-document test hook every emulator answers the same way: ``GET /_emulator/documents``.

``/_emulator/files`` shows what is stored by path (the newest body, and how many times the path was
sent); a path sent twice is one entry. This view has one entry per document the platform holds, so a
test sees a stale version next to the current one, and two same-name files in different folders as
two documents. Every entry has the same neutral keys; a platform adds its own (``volume_id``, ``dirId``…).
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["DocState", "document_entry"]

#: Where a document is: still processing, usable, given up on by the platform, or being deleted.
DocState = Literal["pending", "done", "failed", "deleting"]


def document_entry(
    *,
    doc_id: str,
    name: str,
    folder: str,
    md5: str,
    size: int,
    created_ms: int,
    state: DocState,
    **extra: Any,
) -> dict[str, Any]:
    """One entry of ``/_emulator/documents``: ``folder`` is the folder path in the destination ("" for
    its top), ``created`` milliseconds since the epoch."""
    return {
        "id": doc_id,
        "name": name,
        "folder": folder,
        "md5": md5,
        "size": size,
        "created": created_ms,
        "state": state,
        **extra,
    }
