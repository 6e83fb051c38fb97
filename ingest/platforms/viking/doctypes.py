"""VikingDB knowledge-base document types: the ``doc_type`` for a file name, and the documented limits.

Shared by the target (which refuses unsupported files before sending anything) and the emulator (which
derives ``doc_type`` from the object name for ``add_type: tos``, as the platform does).
"""

from __future__ import annotations

import posixpath

__all__ = ["DOC_TYPES", "SIZE_LIMITS", "doc_type_for", "supported_extensions"]

#: ``doc_type`` values ``doc/add`` accepts (API-NOTES section 2; the seed also allows ``md``).
DOC_TYPES = frozenset(
    {
        "txt", "doc", "docx", "pdf", "markdown", "md", "pptx", "ppt", "jpeg", "png", "webp", "bmp",
        "mp4", "mp3", "wav", "aac", "flac", "ogg", "xlsx", "csv", "jsonl", "faq.xlsx",
    }
)  # fmt: skip

_BY_EXTENSION = {
    ".txt": "txt",
    ".md": "markdown",
    ".markdown": "markdown",
    ".doc": "doc",
    ".docx": "docx",
    ".pdf": "pdf",
    ".ppt": "ppt",
    ".pptx": "pptx",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".png": "png",
    ".webp": "webp",
    ".bmp": "bmp",
    ".mp4": "mp4",
    ".mp3": "mp3",
    ".wav": "wav",
    ".aac": "aac",
    ".flac": "flac",
    ".ogg": "ogg",
    ".xlsx": "xlsx",
    ".csv": "csv",
    ".jsonl": "jsonl",
}

_MIB = 1024 * 1024
#: Largest file per ``doc_type`` where the limits page gives one (doc 84313/1339026).
SIZE_LIMITS = {"txt": 5 * _MIB, "markdown": 5 * _MIB, "md": 5 * _MIB, "docx": 350 * _MIB, "pdf": 1024 * _MIB}


def doc_type_for(name: str) -> str | None:
    """The ``doc_type`` of a file name by its extension (case-insensitive), or ``None`` if unsupported."""
    lowered = posixpath.basename(name).lower()
    if lowered.endswith(".faq.xlsx"):
        return "faq.xlsx"
    return _BY_EXTENSION.get(posixpath.splitext(lowered)[1])


def supported_extensions() -> str:
    return ", ".join(sorted({*_BY_EXTENSION, ".faq.xlsx"}))
