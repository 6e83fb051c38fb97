"""The MOI file-type enum (TXT=1 … BMP=23) and the mapping from file extensions to it.

The enum is the one the MOI document defines for ``/connectors/files/list`` and ``/task/files``; the
other platforms have their own, coarser notions of type, which their targets derive from the extension.
"""

from __future__ import annotations

import enum
import posixpath

__all__ = ["FileType", "file_type_for"]


class FileType(enum.IntEnum):
    NIL = 0
    TXT = 1
    PDF = 2
    IMAGE = 3
    PPT = 4
    WORD = 5
    MARKDOWN = 6
    CSV = 7
    PARQUET = 8
    SQL_FILES = 9
    DIR = 10
    DOCX = 11
    PPTX = 12
    WAV = 13
    MP3 = 14
    AAC = 15
    FLAC = 16
    MP4 = 17
    MOV = 18
    MKV = 19
    PNG = 20
    JPG = 21
    JPEG = 22
    BMP = 23


_BY_EXTENSION: dict[str, FileType] = {
    ".txt": FileType.TXT,
    ".text": FileType.TXT,
    ".log": FileType.TXT,
    ".pdf": FileType.PDF,
    ".gif": FileType.IMAGE,
    ".webp": FileType.IMAGE,
    ".tif": FileType.IMAGE,
    ".tiff": FileType.IMAGE,
    ".svg": FileType.IMAGE,
    ".ppt": FileType.PPT,
    ".doc": FileType.WORD,
    ".md": FileType.MARKDOWN,
    ".markdown": FileType.MARKDOWN,
    ".csv": FileType.CSV,
    ".parquet": FileType.PARQUET,
    ".sql": FileType.SQL_FILES,
    ".docx": FileType.DOCX,
    ".pptx": FileType.PPTX,
    ".wav": FileType.WAV,
    ".mp3": FileType.MP3,
    ".aac": FileType.AAC,
    ".flac": FileType.FLAC,
    ".mp4": FileType.MP4,
    ".mov": FileType.MOV,
    ".mkv": FileType.MKV,
    ".png": FileType.PNG,
    ".jpg": FileType.JPG,
    ".jpeg": FileType.JPEG,
    ".bmp": FileType.BMP,
}


def file_type_for(rel_path: str) -> FileType:
    """The enum value for a path's extension (case-insensitive); ``NIL`` when unknown."""
    return _BY_EXTENSION.get(posixpath.splitext(rel_path)[1].lower(), FileType.NIL)
