"""Temp-then-rename writes that survive a power cut.

os.replace alone makes a write atomic for other processes, not for the disk: after
a power cut the file system may hold the new name with data never flushed (an
empty manifest.json), or the old name back. replace_durably flushes the temp
file's data before the rename, and the folder (the rename itself) after it, so a
power cut leaves either the whole old file or the whole new one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["replace_durably", "write_text_durably", "fsync_folder"]


def replace_durably(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Flush `tmp` to disk, rename it to `path`, then flush the rename."""
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_folder(Path(path).parent)


def write_text_durably(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through PATH.tmp, durably (see replace_durably)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    replace_durably(tmp, path)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (renames, new files). Windows cannot open a folder to
    flush it: there the rename is as durable as the file system makes it."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
