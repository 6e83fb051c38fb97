"""The MOI file-type numbers, as the emulator reads them from the MOI document itself.

The seed document (``/connectors/files/list``, output field ``type``) lists the enum verbatim; the
string below is that list, parsed at import. It does not say which extensions fall under which type,
so the emulator decides, from the names the document gives: a type named like an extension covers that
extension (``PDF`` -> ``.pdf``, ``MP3`` -> ``.mp3``); the other documented kinds (``WORD`` "Word 文档",
``MARKDOWN``, ``SQL_FILES``, ``IMAGE`` "图片", ``TXT`` "文本文件") take the usual extensions of
their kind; anything else is ``NIL`` (0). ``DIR`` (10) is for folders, which only ``files/list`` shows.

Written for the emulator on purpose, apart from the client's own table: an emulator that asked the
client what a file's type is could never catch the client getting it wrong.
"""

from __future__ import annotations

import posixpath
import re

__all__ = ["DIR", "NIL", "TYPE_NUMBERS", "file_type"]

#: The enum as the document prints it.
_DOCUMENTED = (
    "NIL = 0 TXT = 1 PDF = 2 IMAGE = 3 PPT = 4 WORD = 5 MARKDOWN = 6 CSV = 7 PARQUET = 8 SQL_FILES = 9 "
    "DIR = 10 DOCX = 11 PPTX = 12 WAV = 13 MP3 = 14 AAC = 15 FLAC = 16 MP4 = 17 MOV = 18 MKV = 19 PNG = 20 "
    "JPG = 21 JPEG = 22 BMP = 23"
)
_BY_NAME: dict[str, int] = {name: int(number) for name, number in re.findall(r"(\w+) = (\d+)", _DOCUMENTED)}

#: Every documented type number (what ``file_types`` filters may name).
TYPE_NUMBERS = frozenset(_BY_NAME.values())
NIL = _BY_NAME["NIL"]
DIR = _BY_NAME["DIR"]

#: Kinds whose name is not an extension: the extensions the emulator files under them.
_KIND_EXTENSIONS = {
    "TXT": ("text", "log"),
    "WORD": ("doc",),
    "MARKDOWN": ("md", "markdown"),
    "SQL_FILES": ("sql",),
    "IMAGE": ("gif", "webp", "tif", "tiff", "svg"),
}
_NOT_EXTENSIONS = {"NIL", "DIR", *_KIND_EXTENSIONS} - {"TXT"}
_BY_EXTENSION: dict[str, int] = {
    **{name.lower(): number for name, number in _BY_NAME.items() if name not in _NOT_EXTENSIONS},
    **{ext: _BY_NAME[kind] for kind, extensions in _KIND_EXTENSIONS.items() for ext in extensions},
}


def file_type(path: str) -> int:
    """The type number of a file by its extension, case-insensitively; ``NIL`` (0) when unknown."""
    return _BY_EXTENSION.get(posixpath.splitext(path)[1][1:].lower(), NIL)
