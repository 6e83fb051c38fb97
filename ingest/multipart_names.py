"""File names in multipart headers.

A part's ``Content-Disposition: form-data; name="file"; filename="…"`` is an HTTP header: it cannot hold
a line break or another control character (aiohttp refuses to send one, rightly: it would be header
injection), yet a file system name can hold every byte but ``/`` and NUL. RFC 7578 (section 4.2)
forbids ``filename*`` in form data and points at the encoding browsers use (WHATWG HTML, "multipart/form-
data encoding algorithm"): ``"`` becomes ``%22``, CR ``%0D`` and LF ``%0A``. ``header_filename`` does that
for every character an HTTP header refuses, so the request always goes out.

A platform that names the stored file by the part's filename would then store the encoded form, so
each target decides: MOI names files by ``meta[].file_name`` (JSON, any character) and sends the encoded
form only as the part's label; a target whose platform takes the part's name as the document's name
refuses such a file with ``control_character_problem`` (that file fails, with the reason; never the run).
"""

from __future__ import annotations

import re

__all__ = ["control_character_problem", "header_filename"]

#: What an HTTP header refuses (aiohttp's ``_FORBIDDEN_HEADER_CHARS_RE``), and the quote that ends the value.
_UNSAFE = re.compile(r'[\x00-\x08\x0a-\x1f\x7f"]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def header_filename(name: str) -> str:
    """``name`` as a multipart ``filename="…"`` value can carry it: unsafe characters as ``%XX``."""
    return _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", name)


def control_character_problem(name: str, platform: str) -> str | None:
    """Why ``platform``, which names documents after the part's filename, cannot take ``name``, or ``None``."""
    found = _CONTROL.search(name)
    if found is None:
        return None
    return (
        f"the file name holds a control character ({found.group()!r}), which {platform} cannot take in a "
        "document's name; rename the file to send it"
    )
