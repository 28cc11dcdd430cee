"""Indexing, files stage: turn the user's paths into a sorted list of image files."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from imgsearch.ground.errors import InputPathNotFound

__all__ = ["IMAGE_EXTENSIONS", "is_image_name", "input_roots", "iter_image_files"]

log = logging.getLogger(__name__)

# Lower-case suffixes the indexer picks up when walking a folder. A file named
# explicitly on the command line is always tried, whatever its suffix.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def input_roots(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The files and folders to index, as absolute paths ("~" expanded, as a shell would).
    Raises InputPathNotFound, naming the first, if any of them does not exist."""
    roots = [Path(os.path.abspath(os.path.expanduser(os.fspath(p)))) for p in paths]
    for root in roots:
        if not os.path.lexists(root):
            raise InputPathNotFound(f"{root} does not exist; check the path and try again.")
    return roots


def iter_image_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Yield absolute paths of image files under `paths`, each folder walked recursively.

    Folders are walked in sorted order without following symbolic links to
    folders (so a link loop cannot trap the walk); links to files are yielded
    like files and fail later, with a reason, if they are broken.
    Raises InputPathNotFound before yielding anything if a path does not exist.
    """
    roots = input_roots(paths)
    seen: set[Path] = set()
    for root in roots:
        for path in _walk_one(root):
            if path not in seen:
                seen.add(path)
                yield path


def _walk_one(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        yield root
        return

    def report(error: OSError) -> None:
        log.warning(
            "cannot list folder %s (%s); files indexed from it before are kept", error.filename, error.strerror or error
        )

    for folder, subfolders, names in os.walk(root, followlinks=False, onerror=report):
        subfolders.sort()
        for name in sorted(names):
            if is_image_name(name):
                yield Path(folder) / name
