"""The indexing run: files --> decoded images --> encoder --> store (+ FAISS).

Decoding and resizing happen in DataLoader worker processes (uint8 pixels, 4x
less to ship than floats) while the encoder runs on earlier batches. The encoder
runs under inference mode, channels-last, and on a GPU under float16 autocast;
on a GPU the next batch's forward is queued before the previous batch is written,
so the GPU does not wait for SQLite. Each batch is committed to SQLite in one
transaction, then mirrored into the FAISS index; a failure in one file is
recorded and the run goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from indexer.decode import DecodeResult, decode_file
from indexer.files import iter_image_files
from indexer.image_encoder import ImageEncoder, normalize_pixels, resize_uint8
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
    """One decoding process per spare core, at most 16; none on a single core."""
    return max(0, min(16, (os.cpu_count() or 1) - 1))


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
                pixels = resize_uint8(result.image, self.image_size)  # (3, S, S) uint8
            except Exception as exc:  # a decoder may defer errors until pixels are read
                result.error = f"cannot decode image: {exc}"
            result.image = None  # do not ship pixels twice between processes
        return result, pixels


@dataclass
class _Batch:
    """What a decode worker hands over: every file's result, and the good ones' pixels stacked."""

    results: list[DecodeResult]
    pixels: torch.Tensor | None  # (B_good, 3, S, S) uint8, in the order of the good results

    def pin_memory(self) -> "_Batch":  # called by the DataLoader's pinning thread (GPU runs)
        return _Batch(self.results, None if self.pixels is None else self.pixels.pin_memory())


def _collate(items: list[tuple[DecodeResult, torch.Tensor | None]]) -> _Batch:
    good = [pixels for result, pixels in items if result.error is None]
    return _Batch([result for result, _ in items], torch.stack(good) if good else None)


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
    encoder.to(memory_format=torch.channels_last)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        _DecodeDataset(todo, encoder.image_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,  # batches decoded ahead, per worker
    )
    done = 0

    def finish(batch, encoded) -> None:
        nonlocal done
        embedded, failed = _collect(batch, encoded)
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
        done += len(batch.results)
        if progress is not None:
            progress(done, len(todo))

    pending = None  # the previous batch, whose outputs may still be on their way from the GPU
    with _threads_beside_workers(device, workers):
        for batch in loader:
            encoded = _launch_batch(batch, encoder, device)
            if pending is not None:
                finish(*pending)
            pending = (batch, encoded)
        if pending is not None:
            finish(*pending)
    summary.seconds = time.perf_counter() - started
    return summary


def _unchanged(path: Path, size: int | None, mtime: float | None) -> bool:
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return stat.st_size == size and stat.st_mtime == mtime


@contextmanager
def _threads_beside_workers(device: torch.device, workers: int):
    """On the CPU, leave the decode workers their cores: torch threads = cores - workers.
    Oversubscribed OpenMP threads wait on each other; on a busy 2-core machine two
    threads ran the small backbone 2-6x slower than one (bench/RESULTS.md)."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Encoded:
    regions: np.ndarray | torch.Tensor | None  # (B, R, d) float16, on the CPU once `ready` is done
    global_: np.ndarray | torch.Tensor | None  # (B, d) float32
    ready: torch.cuda.Event | None = None  # set when the copies from the GPU are in flight


def _launch_batch(batch: _Batch, encoder: ImageEncoder, device: torch.device) -> _Encoded:
    """Start the encoder on the batch's good images. On a GPU this only queues the work
    (forward, then copies to pinned memory); _collect waits for it."""
    if batch.pixels is None:
        return _Encoded(None, None)
    cuda = device.type == "cuda"
    pixels = batch.pixels.to(device, non_blocking=cuda)  # (B, 3, S, S) uint8
    pixels = normalize_pixels(pixels).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
        out = encoder(pixels)
        regions = out.regions.to(torch.float16).to("cpu", non_blocking=cuda)  # (B, R, d)
        global_ = out.global_.float().to("cpu", non_blocking=cuda)  # (B, d)
    ready = None
    if cuda:
        ready = torch.cuda.Event()
        ready.record()
    return _Encoded(regions, global_, ready)


def _collect(batch: _Batch, encoded: _Encoded) -> tuple[list[EmbeddedImage], list[FailedImage]]:
    good = [r for r in batch.results if r.error is None]
    failed = [FailedImage(str(r.path), r.error or "", r.size, r.mtime, r.sha256) for r in batch.results if r.error is not None]
    if not good:
        return [], failed
    if encoded.ready is not None:
        encoded.ready.synchronize()
    regions, global_ = encoded.regions.numpy(), encoded.global_.numpy()  # (B, R, d) float16, (B, d) float32
    embedded = [
        EmbeddedImage(str(r.path), r.size, r.mtime, r.sha256, r.width, r.height, global_[i], regions[i])
        for i, r in enumerate(good)
    ]
    return embedded, failed
