"""Training, captions stage: read captioned-image datasets into one shape, images with any number of captions.

Accepted inputs (chosen by content, not only by suffix):
- TSV / CSV with a header naming an image column (image, filename, file_name,
  path) and a caption column (caption, text, sentence); an optional `group`
  column keeps related images (e.g. hard-negative swaps) in one batch.
- JSON Lines: {"image": ..., "caption": "..."} or {"image": ..., "captions": [...]}.
- The Flickr8k/Flickr30k token file: `name.jpg#N<TAB>caption`, no header.
- COCO captions JSON ({"images": [...], "annotations": [...]}).
- Karpathy-split JSON (dataset_coco.json / dataset_flickr8k.json: {"images":
  [{"filename", "split", "sentences": [{"raw"}]}]}), filtered by `split`.
Image paths are resolved against `image_root` (default: the captions file's folder)
and must stay inside it: an absolute name, or one that climbs out with `..`, is
refused with an error naming its line (or JSON record).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from imgsearch.ground.errors import CaptionFileError

__all__ = ["CaptionedImage", "read_captions"]

IMAGE_COLUMNS = ("image", "filename", "file_name", "path", "image_path")
CAPTION_COLUMNS = ("caption", "text", "sentence", "raw")
_FLICKR_TOKEN = re.compile(r"^([^\t#]+)#\d+\t(.+)$")


@dataclass
class CaptionedImage:
    path: Path
    captions: list[str] = field(default_factory=list)
    group: str | None = None  # images of one group are kept in one training batch


def read_captions(
    captions_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    only: set[str] | None = None,
) -> list[CaptionedImage]:
    """Images with their captions, in first-seen order.

    split: for Karpathy JSON, keep images of this split ("train", "val", "test", "restval").
    only:  keep images whose file name (or relative path) is in this set, e.g. Flickr8k's train.txt.
    """
    path = Path(captions_file)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: drop a byte-order mark (Excel CSV)
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptionFileError(f"cannot read captions file {path}: {exc}") from exc
    root = Path(image_root) if image_root is not None else path.parent
    rows = _parse(text, path)
    images: dict[str, CaptionedImage] = {}
    for name, caption, group, row_split, where in rows:
        if split is not None and row_split is not None and row_split != split:
            continue
        if only is not None and name not in only and Path(name).name not in only:
            continue
        caption = " ".join(caption.split())
        if not caption:
            continue
        if name not in images:
            images[name] = CaptionedImage(_inside(root, name, where), group=group)
        item = images[name]
        if caption not in item.captions:
            item.captions.append(caption)
    if not images:
        raise CaptionFileError(
            f"{path} gave no (image, caption) pairs"
            + (f" for split {split!r}" if split else "")
            + (" among the listed image names" if only is not None else "")
            + "; check the format (see `imgsearch train --help`)."
        )
    return list(images.values())


Row = tuple[str, str, str | None, str | None, str]  # (image name, caption, group, split, where: "FILE:LINE")


def _inside(root: Path, name: str, where: str) -> Path:
    """root / name, refused unless it stays inside root once `..` and absolute parts are applied.
    (Links inside the images folder are the folder owner's choice and are followed as usual.)"""
    path = root / name
    if os.path.isabs(name) or os.path.splitdrive(name)[0] or not _within(root, path):
        raise CaptionFileError(
            f"{where}: image {name!r} is outside the images folder {root}; image names must be "
            "paths relative to it (no absolute paths, no `..` out of it). Fix that line, or pass "
            "the folder that holds the images with --images."
        )
    return path


def _within(root: Path, path: Path) -> bool:
    base = os.path.normpath(os.path.abspath(root))
    target = os.path.normpath(os.path.abspath(path))
    return os.path.commonpath([base, target]) == base


def _parse(text: str, path: Path) -> list[Row]:
    stripped = text.lstrip()
    if stripped.startswith("{") and path.suffix.lower() != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSON Lines
        # a one-record JSON Lines file is valid JSON too: {"image": ..., "caption": ...}
        if data is not None and not (
            isinstance(data, dict) and "images" not in data and any(c in data for c in IMAGE_COLUMNS)
        ):
            return _parse_json(data, path)
    if stripped.startswith("{"):
        return _parse_jsonl(text, path)
    first_line = text.splitlines()[0] if text else ""
    if _FLICKR_TOKEN.match(first_line):
        return _parse_flickr_tokens(text, path)
    return _parse_table(text, path)


def _parse_json(data, path: Path) -> list[Row]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CaptionFileError(f"{path}: JSON is neither COCO captions nor a Karpathy split file.")
    if "annotations" in data:  # COCO
        names = {image["id"]: image["file_name"] for image in data["images"]}
        try:
            return [
                (names[a["image_id"]], a["caption"], None, None, f"{path}: annotations[{n}]")
                for n, a in enumerate(data["annotations"])
            ]
        except KeyError as exc:
            raise CaptionFileError(f"{path}: COCO annotation refers to unknown image or lacks {exc}.") from exc
    rows: list[Row] = []  # Karpathy
    for n, image in enumerate(data["images"]):
        name = os.path.join(image.get("filepath", ""), image["filename"])
        for sentence in image.get("sentences", []):
            rows.append(
                (
                    name,
                    sentence.get("raw") or " ".join(sentence.get("tokens", [])),
                    None,
                    image.get("split"),
                    f"{path}: images[{n}]",
                )
            )
    return rows


def _parse_jsonl(text: str, path: Path) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            name = next(record[c] for c in IMAGE_COLUMNS if c in record)
        except (json.JSONDecodeError, StopIteration, TypeError) as exc:
            raise CaptionFileError(f"{path}:{number}: expected a JSON object with an image field ({exc}).") from exc
        captions = record.get("captions") or [next((record[c] for c in CAPTION_COLUMNS if c in record), "")]
        group = record.get("group")
        rows += [
            (str(name), str(c), None if group is None else str(group), record.get("split"), f"{path}:{number}")
            for c in captions
        ]
    return rows


def _parse_flickr_tokens(text: str, path: Path) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _FLICKR_TOKEN.match(line)
        if match is None:
            raise CaptionFileError(f"{path}:{number}: expected `name.jpg#N<TAB>caption`.")
        rows.append((match.group(1), match.group(2), None, None, f"{path}:{number}"))
    return rows


def _parse_table(text: str, path: Path) -> list[Row]:
    lines = text.splitlines()
    delimiter = "\t" if lines and "\t" in lines[0] else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader, [])]
    image_col = next((header.index(c) for c in IMAGE_COLUMNS if c in header), None)
    caption_col = next((header.index(c) for c in CAPTION_COLUMNS if c in header), None)
    if image_col is None or caption_col is None:
        raise CaptionFileError(
            f"{path}: the header must name an image column ({', '.join(IMAGE_COLUMNS)}) "
            f"and a caption column ({', '.join(CAPTION_COLUMNS)}); found {header}."
        )
    group_col = header.index("group") if "group" in header else None
    split_col = header.index("split") if "split" in header else None
    rows: list[Row] = []
    for number, record in enumerate(reader, start=2):
        if not record:
            continue
        if len(record) <= max(image_col, caption_col):
            raise CaptionFileError(f"{path}:{number}: too few columns.")
        rows.append(
            (
                record[image_col],
                record[caption_col],
                _cell(record, group_col),
                _cell(record, split_col),
                f"{path}:{number}",
            )
        )
    return rows


def _cell(record: list[str], column: int | None) -> str | None:
    """An optional column's value; None where the row is short or the cell empty (no group)."""
    if column is None or column >= len(record):
        return None
    return record[column].strip() or None
