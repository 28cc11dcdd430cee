"""File paths as SQLite text: valid UTF-8, readable, and exactly reversible.

On Linux a file name is bytes and need not be UTF-8 (b"caf\\xe9.jpg" from an old
Latin-1 camera). SQLite text must be UTF-8, so on POSIX a path is stored with
each byte that is not UTF-8 written as `\\xNN` and each literal backslash doubled
(`\\\\`), which keeps the mapping one-to-one: `text_to_path(path_to_text(p)) == p`
for every path. Paths that are plain UTF-8 without backslashes, nearly all of
them, are stored unchanged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["path_to_text", "text_to_path"]

_ESCAPED = re.compile(r"\\(\\|x[0-9a-f]{2})")
_SURROGATES = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of undecodable bytes


def path_to_text(path: str | os.PathLike) -> str:
    raw = os.fsencode(path)
    if os.name != "posix":  # Windows names are Unicode already
        return os.fsdecode(raw)
    text = raw.decode("utf-8", errors="surrogateescape").replace("\\", "\\\\")
    return _SURROGATES.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def text_to_path(text: str) -> Path:
    if os.name != "posix":
        return Path(text)

    def unescape(match: re.Match) -> str:
        token = match.group(1)
        return "\\" if token == "\\" else chr(0xDC00 + int(token[1:], 16))

    raw = _ESCAPED.sub(unescape, text).encode("utf-8", errors="surrogateescape")
    return Path(os.fsdecode(raw))
