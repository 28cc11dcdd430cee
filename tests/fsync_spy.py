"""Watches os.fsync and os.replace, to check that a temp-then-rename write is durable: the new
file's data flushed before the rename, and its folder (the rename) flushed after it."""

from __future__ import annotations

import os
from pathlib import Path


class FsyncSpy:
    def __init__(self, monkeypatch) -> None:
        self.events: list[tuple] = []  # ("fsync", inode) and ("replace", inode moved, destination)
        fsync, replace = os.fsync, os.replace

        def spying_fsync(fd):
            self.events.append(("fsync", os.fstat(fd).st_ino))
            return fsync(fd)

        def spying_replace(src, dst, **kwargs):
            self.events.append(("replace", os.stat(src).st_ino, Path(dst)))
            return replace(src, dst, **kwargs)

        monkeypatch.setattr(os, "fsync", spying_fsync)
        monkeypatch.setattr(os, "replace", spying_replace)

    def assert_durable(self, path: Path) -> None:
        """`path` was renamed into place after its data was flushed, and its folder flushed after."""
        path = Path(path)
        renames = [n for n, e in enumerate(self.events) if e[0] == "replace" and e[2] == path]
        assert renames, f"{path} was not written through a rename: {self.events}"
        at = renames[-1]
        inode = self.events[at][1]
        assert ("fsync", inode) in self.events[:at], f"{path}'s data was not flushed before the rename"
        assert ("fsync", path.parent.stat().st_ino) in self.events[at + 1 :], f"{path.parent} not flushed"
        assert path.stat().st_ino == inode
