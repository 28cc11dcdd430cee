"""A file's signature: what tells a changed file from an unchanged one without reading it
(one stat). The decoder records it with what it read; the indexing plan compares it with
the store's."""

from __future__ import annotations

import os
from typing import NamedTuple

__all__ = ["FileSignature", "file_signature"]


class FileSignature(NamedTuple):
    """What tells a changed file from an unchanged one without reading it."""

    size: int
    mtime: float
    ctime: float  # also moves on chmod/chown: lets a file that failed for its permissions be retried


def file_signature(path: str | os.PathLike) -> FileSignature | None:
    """The file's signature, following symbolic links; a broken or looping link's own
    signature; None if nothing is there."""
    for stat_function in (os.stat, os.lstat):
        try:
            st = stat_function(path)
        except (OSError, ValueError):
            continue
        return FileSignature(st.st_size, st.st_mtime, st.st_ctime)
    return None
