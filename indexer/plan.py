"""Indexing, plan stage: compare the files on disk with the store, before reading any of them.

Only the file system's facts are used here (size, mtime, and ctime for failed
files), so an unchanged collection costs one stat per file. The result says
which files must be read, and which stored files are gone from the folders
being indexed (candidates for a move, else pruned at the end of the run).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imgsearch.ground.file_signature import file_signature
from imgsearch.ground.paths import path_to_text, text_to_path
from imgsearch.storage.store import StoredImage

__all__ = ["RunPlan", "plan_run"]


@dataclass
class RunPlan:
    stored: dict[str, StoredImage]  # every stored row, by path text, as the run starts
    todo: list[Path]  # new or changed files, to be read, in listing order
    unchanged: int
    # Unchanged files that failed when they were last read (not read again): the run still reports them.
    still_failing: list[StoredImage] = field(default_factory=list)
    # Stored files under the folders being indexed that are no longer on disk, by content.
    vanished: dict[str, list[StoredImage]] = field(default_factory=dict)

    def take_vanished(self, sha256: str) -> StoredImage | None:
        """A vanished indexed image with this content, claimed by a new path (a move); None if none."""
        candidates = self.vanished.get(sha256, [])
        for position, row in enumerate(candidates):
            if row.status == "ok":
                return candidates.pop(position)
        return None

    def remaining_vanished(self) -> list[StoredImage]:
        return [row for rows in self.vanished.values() for row in rows]


def plan_run(listed: Sequence[Path], stored: dict[str, StoredImage], roots: Sequence[Path], *, prune: bool) -> RunPlan:
    todo: list[Path] = []
    unchanged = 0
    still_failing: list[StoredImage] = []
    listed_texts: set[str] = set()
    for path in listed:
        text = path_to_text(path)
        listed_texts.add(text)
        row = stored.get(text)
        if row is not None and _unchanged(row, path):
            unchanged += 1
            if row.status != "ok":
                still_failing.append(row)
        else:
            todo.append(path)
    plan = RunPlan(stored=stored, todo=todo, unchanged=unchanged, still_failing=still_failing)
    if prune:
        vanished: dict[str, list[StoredImage]] = defaultdict(list)
        for row in _gone_under(roots, stored, listed_texts):
            vanished[row.sha256 or ""].append(row)
        plan.vanished = dict(vanished)
    return plan


def _unchanged(row: StoredImage, path: Path) -> bool:
    signature = file_signature(path)
    if signature is None:
        return False
    if row.status == "ok":  # size and mtime, as every photo tool does; content is hashed only if they differ
        return (signature.size, signature.mtime) == (row.size, row.mtime)
    return tuple(signature) == (row.size, row.mtime, row.ctime)


def _gone_under(roots: Sequence[Path], stored: dict[str, StoredImage], listed: set[str]) -> list[StoredImage]:
    """Stored rows under one of the folders in `roots`, not listed this run, and no longer
    on disk. Files under other folders in the same index are never touched."""
    prefixes = tuple(path_to_text(root).rstrip("/") + "/" for root in roots if root.is_dir())
    if not prefixes:
        return []
    return [
        row
        for text, row in stored.items()
        if text.startswith(prefixes) and text not in listed and _surely_gone(text_to_path(text))
    ]


def _surely_gone(path: Path) -> bool:
    """True only if the file system says the path does not exist. A file in a folder
    this user cannot read (or on a failing disk) may well exist: it is kept."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False
