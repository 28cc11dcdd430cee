"""The indexing run: files --> decoded images --> encoder --> store (+ FAISS).

Decoding happens in DataLoader worker processes while the encoder runs on the
previous batch. Each batch is committed to SQLite in one transaction, then
mirrored into the FAISS index; a failure in one file is recorded and the run
goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from indexer.decode import DecodeResult, decode_file
from indexer.files import iter_image_files
from indexer.image_encoder import ImageEncoder, preprocess
from indexer.store import EmbeddedImage, FailedImage, Store
from indexer.vectors import VectorIndex

__all__ = ["AddSummary", "index_files", "default_workers"]

ProgressCallback = Callable[[int, int], None]  # (files done, files to process)


@dataclass
class AddSummary:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        embedded = self.added + self.updated
        return embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "added": self.added, "updated": self.updated, "unchanged": self.unchanged,
            "failed": self.failed, "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "failures": [{"path": p, "error": e} for p, e in self.failures],
        }


def default_workers() -> int:
    """One decoding process per spare core, at most 8; none on a single core."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class _DecodeDataset(Dataset):
    def __init__(self, paths: list[Path], image_size: int) -> None:
        self.paths = paths
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[DecodeResult, torch.Tensor | None]:
        result = decode_file(self.paths[i])
        pixels = None
        if result.image is not None:
            try:
                pixels = preprocess(result.image, self.image_size)  # (3, S, S)
            except Exception as exc:  # a decoder may defer errors until pixels are read
                result.error = f"cannot decode image: {exc}"
            result.image = None  # do not ship pixels twice between processes
        return result, pixels


def _collate(items):
    return items


def index_files(
    paths: Iterable[str | os.PathLike],
    store: Store,
    vectors: VectorIndex,
    encoder: ImageEncoder,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> AddSummary:
    started = time.perf_counter()
    summary = AddSummary()
    todo: list[Path] = []
    previously_stored: set[str] = set()
    for path in iter_image_files(paths):
        stored = store.get(str(path))
        if stored is not None:
            if _unchanged(path, stored.size, stored.mtime):
                summary.unchanged += 1
                continue
            previously_stored.add(str(path))
        todo.append(path)

    device = next(encoder.parameters()).device
    loader = DataLoader(
        _DecodeDataset(todo, encoder.image_size),
        batch_size=batch_size,
        num_workers=default_workers() if workers is None else workers,
        collate_fn=_collate,
    )
    done = 0
    for batch in loader:
        embedded, failed = _encode_batch(batch, encoder, device)
        removed, added = store.write_batch(embedded, failed)
        vectors.remove(removed)
        if added:
            ids = np.array([image_id for image_id, _ in added], dtype=np.int64)
            vectors.add(ids, np.stack([embedded[row].global_ for _, row in added]))  # (n, d)
        for item in embedded:
            if item.path in previously_stored:
                summary.updated += 1
            else:
                summary.added += 1
        summary.failed += len(failed)
        summary.failures.extend((item.path, item.error) for item in failed)
        done += len(batch)
        if progress is not None:
            progress(done, len(todo))
    summary.seconds = time.perf_counter() - started
    return summary


def _unchanged(path: Path, size: int | None, mtime: float | None) -> bool:
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return stat.st_size == size and stat.st_mtime == mtime


def _encode_batch(
    batch: list[tuple[DecodeResult, torch.Tensor | None]], encoder: ImageEncoder, device: torch.device
) -> tuple[list[EmbeddedImage], list[FailedImage]]:
    good = [(result, pixels) for result, pixels in batch if result.error is None]
    failed = [
        FailedImage(str(r.path), r.error or "", r.size, r.mtime, r.sha256)
        for r, _ in batch if r.error is not None
    ]
    if not good:
        return [], failed
    pixels = torch.stack([p for _, p in good]).to(device)  # (B, 3, S, S)
    with torch.inference_mode():
        out = encoder(pixels)
    regions = out.regions.to(torch.float16).cpu().numpy()  # (B, R, d)
    global_ = out.global_.float().cpu().numpy()  # (B, d)
    embedded = [
        EmbeddedImage(str(r.path), r.size, r.mtime, r.sha256, r.width, r.height, global_[i], regions[i])
        for i, (r, _) in enumerate(good)
    ]
    return embedded, failed
