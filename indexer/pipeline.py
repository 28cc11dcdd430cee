"""The indexing run: files --> plan --> decoded images --> encoder --> store (+ FAISS).

Decoding and resizing happen in DataLoader worker processes (uint8 pixels, 4x
less to ship than floats) while the encoder runs on earlier batches; the encoder
runs under inference mode, channels-last, and on a GPU under float16 autocast. Each batch is committed to SQLite in one transaction, then
mirrored into the in-memory FAISS index, so a run killed at any moment leaves
every finished batch stored and nothing half-written; the next run skips what
is stored and finishes the rest. Content is identified by its sha256: a file
whose content is already stored (a copy, a move, a `touch`) is never run
through the backbone again. A failure in one file is recorded and the run goes on.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from indexer.decode import DecodeResult, decode_file
from indexer.files import iter_image_files
from indexer.image_encoder import ImageEncoder, normalize_pixels, resize_uint8
from indexer.lock import close_inherited_locks
from indexer.paths import path_to_text
from indexer.plan import RunPlan, plan_run
from indexer.store import Change, Fail, Move, Put, Store, Touch
from indexer.vectors import VectorIndex

__all__ = ["AddSummary", "index_files", "default_workers"]

ProgressCallback = Callable[[int, int], None]  # (files done, files to process)
StopCheck = Callable[[], bool]  # asked after each batch: stop the run now, keeping what is done?


@dataclass
class AddSummary:
    added: int = 0  # new paths (embedded, or reusing stored vectors of identical content)
    updated: int = 0  # stored paths whose content changed, or that failed before and now work
    unchanged: int = 0  # same size and mtime, or same content after a touch
    failed: int = 0  # files that could not be read or decoded in this run
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0
    # Fields added after the first release go below, so positional use keeps working.
    moved: int = 0  # stored images found under a new path (vectors kept, no backbone)
    removed: int = 0  # stored files gone from the folders indexed (pruned)
    embedded: int = 0  # distinct contents run through the backbone
    interrupted: bool = False  # stopped early (Ctrl-C); everything counted here is stored

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "added": self.added, "updated": self.updated, "moved": self.moved, "removed": self.removed,
            "unchanged": self.unchanged, "failed": self.failed, "embedded": self.embedded,
            "interrupted": self.interrupted, "seconds": round(self.seconds, 3),
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
        result = decode_file(self.paths[i], min_size=self.image_size)  # JPEGs at a reduced scale
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

    def __len__(self) -> int:
        return len(self.results)

    def pin_memory(self) -> "_Batch":  # called by the DataLoader's pinning thread (GPU runs)
        return _Batch(self.results, None if self.pixels is None else self.pixels.pin_memory())


def _collate(items: list[tuple[DecodeResult, torch.Tensor | None]]) -> _Batch:
    good = [pixels for result, pixels in items if result.error is None]
    return _Batch([result for result, _ in items], torch.stack(good) if good else None)


def _init_worker(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    close_inherited_locks()


def index_files(
    paths: Iterable[str | os.PathLike],
    store: Store,
    vectors: VectorIndex,
    encoder: ImageEncoder,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    prune: bool = True,
    should_stop: StopCheck | None = None,
) -> AddSummary:
    """Bring the store in line with the files under `paths`. The caller holds the writer lock.

    With `prune`, stored files under the given folders that no longer exist are
    removed at the end of the run (never files under other folders).
    """
    started = time.perf_counter()
    roots = [Path(os.path.abspath(p)) for p in paths]
    listed = list(iter_image_files(roots))
    plan = plan_run(listed, store.all_images(), roots, prune=prune)
    summary = AddSummary(unchanged=plan.unchanged)

    device = next(encoder.parameters()).device
    encoder.to(memory_format=torch.channels_last)
    num_workers = default_workers() if workers is None else workers
    loader = DataLoader(
        _DecodeDataset(plan.todo, encoder.image_size),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=_init_worker if num_workers else None,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers else None,  # batches decoded ahead, per worker
    )
    done = 0
    # torch keeps all its threads beside the decode workers: on an idle 2-core machine that
    # indexed VGG16 at 224px at 94% of forward-only, against 54% with one thread left to
    # torch (bench/RESULTS.md, the two idle-machine indexing runs); decoding needs far less than a core.
    for batch in loader:
        changes = _reconcile(batch, plan, store, encoder, device, summary)
        applied = store.apply(changes)
        vectors.remove(applied.removed_ids)
        vectors.add(applied.added_ids, applied.added_vectors)  # (n,), (n, d)
        done += len(batch)
        if progress is not None:
            progress(done, len(plan.todo))
        if should_stop is not None and should_stop() and done < len(plan.todo):
            summary.interrupted = True
            break
    if not summary.interrupted:  # an unfinished run keeps vanished rows: later files may be their moves
        gone = plan.remaining_vanished()
        vectors.remove(store.remove([row.id for row in gone]))
        summary.removed = len(gone)
    store.drop_unused_contents()
    summary.seconds = time.perf_counter() - started
    return summary


def _reconcile(
    batch: _Batch,
    plan: RunPlan,
    store: Store,
    encoder: ImageEncoder,
    device: torch.device,
    summary: AddSummary,
) -> list[Change]:
    """Decide what each decoded file means for the store; embed only content not stored yet."""
    changes: list[Change] = []
    to_embed: dict[str, tuple[Put, int]] = {}  # one Put per new content carries its vectors: (Put, row in pixels)
    good_row = -1  # row of the current result in batch.pixels
    for result in batch.results:
        good_row += result.error is None
        text = path_to_text(result.path)
        stored = plan.stored.get(text)
        if result.error is not None:
            changes.append(Fail(text, result.error, result.size, result.mtime, result.ctime, result.sha256))
            summary.failed += 1
            summary.failures.append((text, result.error))
            continue
        if stored is not None and stored.status == "ok" and stored.sha256 == result.sha256:
            changes.append(Touch(stored.id, result.size, result.mtime, result.ctime))
            summary.unchanged += 1
            continue
        if stored is None and (source := plan.take_vanished(result.sha256)) is not None:
            changes.append(Move(source.id, text, result.size, result.mtime, result.ctime))
            summary.moved += 1
            continue
        put = Put(text, result.size, result.mtime, result.ctime, result.sha256, result.width, result.height)
        changes.append(put)
        if stored is None:
            summary.added += 1
        else:
            summary.updated += 1
        if result.sha256 not in to_embed and not store.has_content(result.sha256):
            to_embed[result.sha256] = (put, good_row)
    if to_embed:
        puts = [put for put, _ in to_embed.values()]
        rows = torch.tensor([row for _, row in to_embed.values()])
        global_, regions = _encode(batch.pixels[rows], encoder, device)
        for row, put in enumerate(puts):
            put.global_, put.regions = global_[row], regions[row]
        summary.embedded += len(puts)
    return changes


def _encode(pixels: torch.Tensor, encoder: ImageEncoder, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (B, 3, S, S) --> global vectors (B, d) float32, regions (B, R, d) float16."""
    cuda = device.type == "cuda"
    batch = pixels.to(device, non_blocking=cuda)  # (B, 3, S, S) uint8
    batch = normalize_pixels(batch).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
        out = encoder(batch)
    regions = out.regions.to(torch.float16).cpu().numpy()  # (B, R, d)
    global_ = out.global_.float().cpu().numpy()  # (B, d)
    return global_, regions
