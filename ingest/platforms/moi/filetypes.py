"""The MOI file-type enum (TXT=1 … BMP=23, folder 10), as the MOI document defines it for
``/connectors/files/list`` and ``/task/files``: ``ingest moi connectors files --file-types`` and the
connector source (which leaves folders out) read it. The platform derives a file's type itself.
"""

from __future__ import annotations

import enum

__all__ = ["FileType"]


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
