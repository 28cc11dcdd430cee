"""Serving stage, stored images: guarded decoding of an indexed file and the thumbnail cache.

A thumbnail is a JPEG, upright (EXIF orientation applied), longest side THUMBNAIL_SIDE
(smaller images keep their size). It is cached in `<index>/thumbnails/` under a key made
from the file's path, size and modification time as they are on disk now, so an image
that changed gets a new thumbnail, and the cache survives restarts. A new version of a
file's thumbnail replaces the older ones of the same path. Files are written as a
temporary file then renamed, so a reader never sees half a JPEG.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from imgsearch.ground.durable import replace_durably
from imgsearch.images.decode import decode_image_bytes

__all__ = ["THUMBNAIL_SIDE", "Thumbnail", "ThumbnailCache", "load_image", "thumbnail_key"]

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 320  # pixels, the longest side
JPEG_QUALITY = 85
FOLDER_NAME = "thumbnails"


@dataclass(frozen=True)
class Thumbnail:
    key: str  # sha256 of (path, size, mtime_ns): also the HTTP ETag
    jpeg: bytes


def thumbnail_key(path: str | os.PathLike, size: int, mtime_ns: int) -> str:
    """The cache key of one version of a file: sha256 of its path, size and mtime (ns)."""
    digest = hashlib.sha256(os.fsencode(path))
    digest.update(b"\0%d\0%d" % (size, mtime_ns))
    return digest.hexdigest()


def _path_prefix(path: str | os.PathLike) -> str:
    """The part of a cache file name shared by every version of one path's thumbnail."""
    return hashlib.sha256(os.fsencode(path)).hexdigest()[:16]


def read_file(path: Path) -> tuple[bytes, os.stat_result]:
    """A file's bytes and the facts (size, mtime) of that same opened file."""
    with open(path, "rb") as handle:
        facts = os.fstat(handle.fileno())
        return handle.read(), facts


def load_image(path: Path, max_side: int) -> Image.Image:
    """An indexed file, decoded with the indexer's guards (InvalidImage when it no longer
    decodes), upright RGB, shrunk so that its longest side is at most `max_side`."""
    data, _ = read_file(path)
    return _shrink(decode_image_bytes(data), max_side)


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)  # keeps the aspect; never enlarges
    return image


def _encode_jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


class ThumbnailCache:
    """Thumbnails of indexed files, made on first request and kept in `directory`."""

    def __init__(self, directory: str | os.PathLike, side: int = THUMBNAIL_SIDE) -> None:
        self.directory = Path(directory)
        self.side = side
        self._write_failed = False  # logged once: a read-only index still serves thumbnails

    @classmethod
    def for_index(cls, index_directory: str | os.PathLike) -> ThumbnailCache:
        return cls(Path(index_directory) / FOLDER_NAME)

    def cached_file(self, path: str | os.PathLike, key: str) -> Path:
        """Where the thumbnail of `path` with cache key `key` is kept."""
        prefix = _path_prefix(path)
        return self.directory / prefix[:2] / f"{prefix}-{key}.jpg"

    def get(self, path: Path) -> Thumbnail:
        """The thumbnail of the file at `path` as it is now: from the cache, or made and stored."""
        facts = os.stat(path)
        key = thumbnail_key(path, facts.st_size, facts.st_mtime_ns)
        cached = self.cached_file(path, key)
        try:
            return Thumbnail(key, cached.read_bytes())
        except OSError:  # not made yet (or the cache cannot be read): make it
            pass
        data, facts = read_file(path)  # the facts of the bytes actually read
        key = thumbnail_key(path, facts.st_size, facts.st_mtime_ns)
        jpeg = _encode_jpeg(_shrink(decode_image_bytes(data, min_size=self.side), self.side))
        self._store(path, key, jpeg)
        return Thumbnail(key, jpeg)

    def _store(self, path: Path, key: str, jpeg: bytes) -> None:
        """Write one thumbnail atomically and drop older versions of the same path."""
        target = self.cached_file(path, key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".jpg")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(jpeg)
                replace_durably(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            if not self._write_failed:
                self._write_failed = True
                log.warning(
                    "cannot write thumbnails to %s (%s); serving them without caching",
                    self.directory,
                    exc.strerror or exc,
                )
            return
        self._drop_older(target)

    @staticmethod
    def _drop_older(target: Path) -> None:
        """Remove the other cached versions of the path `target` belongs to."""
        prefix = target.name.split("-", 1)[0]
        for other in target.parent.glob(f"{prefix}-*.jpg"):
            if other != target:
                other.unlink(missing_ok=True)
