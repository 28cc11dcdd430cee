"""Indexing, decode stage: read one file, fingerprint it, decode it to an upright RGB image.
Here too the ImageRecord: what is known about an image, from decoding to the API.

Failures never raise: they come back as a DecodeResult with `error` set, so one
bad file cannot stop a run.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from imgsearch.ground.errors import ImageTooLarge, InvalidImage
from imgsearch.ground.file_signature import file_signature
from imgsearch.ground.paths import path_to_text

__all__ = [
    "ImageRecord",
    "RECORD_FIELDS",
    "SHOWN_FIELDS",
    "HIDDEN",
    "shown_fields",
    "record_values",
    "record_of",
    "DecodeResult",
    "MAX_PIXELS",
    "decode_file",
    "decode_image_bytes",
    "exif_taken_at",
    "file_date",
    "to_rgb",
]

# Images with more pixels than this are refused as likely decompression bombs
# (a small file that declares huge dimensions). 8K x 8K, about 4x a 48 MP photo.
MAX_PIXELS = 64_000_000


# A field's metadata: not shown (in search results, --json, the HTTP API).
HIDDEN = {"shown": False}


@dataclass(frozen=True, kw_only=True)
class ImageRecord:
    """What is known about one image file, from decoding to the API: the one record of an
    image's facts. The decoder makes it (decode_file), a shard carries it (indexer/shard.py),
    the store keeps it (store.StoredImage derives from it, with the row's id and status) and
    a search result shows it (search/searcher.py's SearchResult derives from it, with the
    scores); search results, --json and the HTTP API show every field not marked HIDDEN.
    A field added here is filled by decode_file and kept by the store (a migration adds
    its column); nothing between them names it.

    The vectors and the classifier's labels are not here: they belong to the content
    (sha256), shared by identical files, and come from the model, not from the file.
    """

    path: str  # the path as stored (ground/paths.py: path_to_text)
    width: int | None = None  # pixels, after EXIF orientation
    height: int | None = None
    size: int | None = None  # bytes on disk
    sha256: str | None = None  # of the file's bytes: its content
    # When the photo was taken, ISO text: its EXIF DateTimeOriginal ("2021-06-01T12:00:00", the
    # camera's wall clock), or None when it has none. Never the file's date: that is file_date().
    taken_at: str | None = None
    # What tells the indexer that a file changed (with size), and why a file failed: not shown.
    mtime: float | None = field(default=None, metadata=HIDDEN)
    ctime: float | None = field(default=None, metadata=HIDDEN)
    error: str | None = field(default=None, metadata=HIDDEN)  # set: the file could not be read or decoded


def file_date(record: ImageRecord) -> str | None:
    """The file's modification time in local time, ISO text to the second ("2026-12-04T10:00:00"),
    as shown beside taken_at (a copy made today has today's file date, whenever it was taken)."""
    if record.mtime is None:
        return None
    return dt.datetime.fromtimestamp(record.mtime).isoformat(timespec="seconds")


def shown_fields(cls: type) -> tuple[str, ...]:
    """The fields of dataclass `cls` (ImageRecord, or a type derived from it) that are shown:
    those not marked HIDDEN, in order."""
    return tuple(f.name for f in fields(cls) if f.metadata.get("shown", True))


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ImageRecord))
SHOWN_FIELDS: tuple[str, ...] = shown_fields(ImageRecord)


def record_values(record: ImageRecord, *, shown: bool = False) -> dict[str, Any]:
    """The ImageRecord fields of `record` (an ImageRecord, or a type derived from it) by name,
    in the record's order; with `shown`, only those search results show."""
    return {name: getattr(record, name) for name in (SHOWN_FIELDS if shown else RECORD_FIELDS)}


def record_of(record: ImageRecord) -> ImageRecord:
    """The plain ImageRecord of a type derived from it (a DecodeResult without its image)."""
    return ImageRecord(**record_values(record))


@dataclass(frozen=True, kw_only=True)
class DecodeResult(ImageRecord):
    """A file decoded: its record, and the image."""

    image: Image.Image | None = None  # RGB, upright; None when error is set


def decode_file(path: Path, min_size: int | None = None) -> DecodeResult:
    """Read, fingerprint and decode one file.

    With `min_size`, a JPEG is decoded at a reduced scale (libjpeg's 1/2, 1/4 or 1/8,
    through Pillow's draft mode) that keeps both sides at least min_size: the model
    resizes to min_size x min_size anyway, and a 12 MP photo decodes about 20x faster
    at 1/8. width and height still report the full image. A file that fails has its file
    facts (size, mtime, ctime, and sha256 once read) and the reason.
    """
    result = DecodeResult(path=path_to_text(path))
    signature = file_signature(path)
    if signature is not None:  # for a broken link, the link's own: it is retried once it changes
        result = replace(result, size=signature.size, mtime=signature.mtime, ctime=signature.ctime)
    error = _unreadable_reason(path)
    if error is not None:
        return replace(result, error=error)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return replace(result, error="file not found (it vanished after the folder was listed)")
    except PermissionError:
        return replace(result, error="permission denied (the file is not readable by this user)")
    except OSError as exc:
        return replace(result, error=f"cannot read file: {exc.strerror or exc}")
    if not data:
        return replace(result, error="empty file (0 bytes)")
    result = replace(result, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    try:
        image, (width, height) = _open_checked(data, min_size)
        taken_at = exif_taken_at(image)
        rgb = to_rgb(image)
    except Exception as exc:  # Pillow raises many types for bad data; all mean "cannot decode".
        return replace(result, error=_describe(exc))
    return replace(result, width=width, height=height, taken_at=taken_at, image=rgb)


def decode_image_bytes(data: bytes, min_size: int | None = None) -> Image.Image:
    """The bytes of an image file (an upload, a query photo) --> an upright RGB image, with the
    indexer's guards: the pixel limit, decompression bombs, non-images, truncated data.
    With `min_size`, a JPEG is decoded at a reduced scale that keeps both sides at least
    min_size (as decode_file does; a thumbnail needs no 12 MP decode).
    Raises InvalidImage with the reason."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes).")
    try:
        image, _ = _open_checked(data, min_size)
        return to_rgb(image)
    except Exception as exc:  # Pillow raises many types for bad data; all mean "cannot decode".
        reason = _describe(exc).rstrip(". ")
        raise InvalidImage(f"{reason}; give a JPEG, PNG, WebP, GIF, BMP or TIFF photo.") from exc


# EXIF tags: DateTimeOriginal in the Exif sub-IFD, DateTime in IFD0 (when the file was last written).
_DATE_TIME_ORIGINAL = 0x9003


def exif_taken_at(image: Image.Image) -> str | None:
    """When the photo was taken, from its EXIF DateTimeOriginal ("2021:06:01 12:00:00"), as
    ISO text "2021-06-01T12:00:00" (the camera's wall clock; EXIF has no time zone); None when
    the image has no such tag or it is not a valid date."""
    try:
        value = image.getexif().get_ifd(ExifTags.IFD.Exif).get(_DATE_TIME_ORIGINAL)
    except Exception:  # a damaged EXIF block is not the image's failure
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    try:
        taken = dt.datetime.strptime(value.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:  # "0000:00:00 00:00:00" and other placeholders cameras write
        return None
    return taken.isoformat(timespec="seconds")


def _unreadable_reason(path: Path) -> str | None:
    """Why `path` cannot be read as a file, found without opening it; None if it looks readable."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return "broken symbolic link (its target was not found)"
        return "file not found (it vanished after the folder was listed)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link points back to itself)"
        if exc.errno == errno.ENAMETOOLONG:
            return "file name too long for the operating system"
        return f"cannot read file: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):  # reading a FIFO would block the run forever
        return "not a regular file (a FIFO, socket or device)"
    return None


# EXIF orientations that turn the stored image by 90 degrees (width and height swap).
_QUARTER_TURNS = {5, 6, 7, 8}


def _open_checked(data: bytes, min_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decoded image, upright, and its full (width, height) upright."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(f"image too large: {width}x{height} pixels (limit {MAX_PIXELS:,})")
    image.seek(0)  # first frame of animations
    if min_size:
        image.draft(None, (min_size, min_size))  # JPEG only; other formats ignore it
    image.load()
    if image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS:
        width, height = height, width
    return ImageOps.exif_transpose(image), (width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is flattened onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size else 0
        scale = 255.0 / top if top > 255 else 1.0
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _describe(exc: Exception) -> str:
    if isinstance(exc, ImageTooLarge):
        return str(exc)
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"image too large (decompression bomb): {exc}"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read (unknown format or not an image file)"
    message = str(exc) or type(exc).__name__
    if "truncated" in message.lower():
        return f"truncated image data: {message}"
    return f"cannot decode image: {message}"
