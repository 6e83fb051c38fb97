"""The VikingDB document types and size limits, as the emulator reads them from the platform's documents.

From ``API-NOTES.md`` section 2 and seed 003 (``doc/add``): ``doc_type`` is one of txt, doc, docx, pdf,
markdown (also written md), pptx, ppt, jpeg, png, webp, bmp, mp4, mp3, wav, aac, flac, ogg
(unstructured), xlsx, csv, jsonl (structured), and faq.xlsx for FAQ files. For ``add_type: tos`` the
platform takes the type "from the extension": the emulator reads a file's last extension as the type
of the same name, a ``.md`` file as markdown (the name the list gives first), ``.jpg`` as jpeg (the same
format), and a ``….faq.xlsx`` file as faq.xlsx. The limits page [doc 84313/1339026] caps txt and
markdown at 5 MB, docx at 350 MB and pdf at 1 GB, which the emulator reads as binary units.

Written for the emulator on purpose, apart from the client's own table: an emulator that asked the
client which documents are valid could never catch the client getting it wrong.
"""

from __future__ import annotations

__all__ = ["DOC_TYPES", "SIZE_LIMITS", "doc_type_of", "size_limit"]

_UNSTRUCTURED = "txt doc docx pdf markdown md pptx ppt jpeg png webp bmp mp4 mp3 wav aac flac ogg"
_STRUCTURED = "xlsx csv jsonl"
_FAQ = "faq.xlsx"

#: Every ``doc_type`` that ``doc/add`` accepts.
DOC_TYPES = frozenset([*_UNSTRUCTURED.split(), *_STRUCTURED.split(), _FAQ])

#: Extensions that name their type differently (every other type is its own extension).
_RENAMED = {"md": "markdown", "jpg": "jpeg"}

_MB = 1 << 20
#: Largest document per ``doc_type``, where the limits page gives one. A dict so a test can lower one.
SIZE_LIMITS: dict[str, int] = {"txt": 5 * _MB, "markdown": 5 * _MB, "md": 5 * _MB, "docx": 350 * _MB, "pdf": 1024 * _MB}


def doc_type_of(name: str) -> str | None:
    """The ``doc_type`` a file name's extension gives (case-insensitive), or ``None`` for an unsupported one."""
    base = name.rsplit("/", 1)[-1].lower()
    if base.endswith("." + _FAQ) and len(base) > len(_FAQ) + 1:
        return _FAQ
    stem, dot, extension = base.rpartition(".")
    if not dot or not stem:
        return None
    kind = _RENAMED.get(extension, extension)
    return kind if kind in DOC_TYPES and kind != _FAQ else None


def size_limit(doc_type: str) -> int | None:
    """The documented size limit of ``doc_type``, or ``None`` where the documents give none."""
    return SIZE_LIMITS.get(doc_type)
