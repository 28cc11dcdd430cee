"""The indexing run: files --> plan --> decode --> encode (model) --> store + vectors.

Decoding and resizing happen in DataLoader worker processes (uint8 pixels, 4x
less to ship than floats) while the encoder runs on earlier batches; the encoder
runs under inference mode, channels-last, and on a GPU under float16 autocast,
asynchronously, with a writer thread storing finished batches meanwhile.
Each batch is committed to SQLite in one transaction, then
mirrored into the in-memory FAISS index, so a run killed at any moment leaves
every finished batch stored and nothing half-written; the next run skips what
is stored and finishes the rest. Content is identified by its sha256: a file
whose content is already stored (a copy, a move, a `touch`) is never run
through the backbone again. A failure in one file is recorded and the run goes on.
With a backbone that has a classifier (mobilenet_v2), each new content's top
TOP_LABELS classes (class 0, "background", skipped) are stored with its vectors.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from imgsearch.model.allocator import keep_freed_memory
from imgsearch.indexer.decode import decode_file
from imgsearch.errors import ModelConfigError
from imgsearch.indexer.files import input_roots, iter_image_files
from imgsearch.model.image_encoder import ImageEncoder, resize_uint8
from imgsearch.indexer.lock import close_inherited_locks
from imgsearch.indexer.paths import path_to_text
from imgsearch.indexer.plan import RunPlan, plan_run
from imgsearch.indexer.store import Change, Fail, Move, Put, Store, Touch
from imgsearch.indexer.vectors import VectorIndex

__all__ = ["AddSummary", "index_files", "default_workers", "TOP_LABELS", "top_labels"]

TOP_LABELS = 5  # classifier classes stored per content, best first

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


class _Decoded(NamedTuple):
    """One file's facts, as a decode worker sends them: plain values, no image and no Path
    object, so that unpickling a batch costs the main process little."""

    text: str  # the path as stored (path_to_text)
    size: int | None
    mtime: float | None
    ctime: float | None
    sha256: str | None
    width: int | None
    height: int | None
    error: str | None
    taken_at: str | None = None  # EXIF DateTimeOriginal, ISO text


class _DecodeDataset(Dataset):
    def __init__(self, paths: list[Path], image_size: int) -> None:
        self.paths = paths
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[_Decoded, torch.Tensor | None]:
        result = decode_file(self.paths[i], min_size=self.image_size)  # JPEGs at a reduced scale
        pixels = None
        if result.image is not None:
            try:
                pixels = resize_uint8(result.image, self.image_size)  # (3, S, S) uint8
            except Exception as exc:  # a decoder may defer errors until pixels are read
                result.error = f"cannot decode image: {exc}"
        decoded = _Decoded(path_to_text(result.path), result.size, result.mtime, result.ctime, result.sha256,
                           result.width, result.height, result.error, result.taken_at)
        return decoded, pixels


@dataclass
class _Batch:
    """What a decode worker hands over: every file's facts, and the good ones' pixels stacked."""

    results: list[_Decoded]
    pixels: torch.Tensor | None  # (B_good, 3, S, S) uint8, in the order of the good results

    def __len__(self) -> int:
        return len(self.results)


def _collate(items: list[tuple[_Decoded, torch.Tensor | None]]) -> _Batch:
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
    roots = input_roots(paths)
    store.record_folders([path_to_text(root) for root in roots])  # what the service may serve from
    listed = list(iter_image_files(roots))
    plan = plan_run(listed, store.all_images(), roots, prune=prune)
    summary = AddSummary(unchanged=plan.unchanged)

    device = next(encoder.parameters()).device
    if device.type == "cpu":
        keep_freed_memory()  # before the decode workers start (encode() would do it at the first batch)
    encoder.to(memory_format=torch.channels_last)
    num_workers = default_workers() if workers is None else workers
    loader = DataLoader(
        _DecodeDataset(plan.todo, encoder.image_size),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=_init_worker if num_workers else None,
        # No pinned memory, also on a GPU: the pinning thread's extra copy of every batch cost
        # more than the asynchronous copy saved (H200, VGG16 224px: 3,531 against 3,067 images/s
        # at batch 32, and slower pinned at each of 32, 64, 128 and 256; bench/RESULTS.md).
        pin_memory=False,
        prefetch_factor=4 if num_workers else None,  # batches decoded ahead, per worker
    )
    known_contents = store.content_hashes()  # grows with every content embedded in this run
    writer = _StoreWriter(store, vectors, len(plan.todo), progress)
    # torch keeps all its threads beside the decode workers: on an idle 2-core machine that
    # indexed VGG16 at 224px at 94% of forward-only, against 54% with one thread left to
    # torch (bench/RESULTS.md, the two idle-machine indexing runs); decoding needs far less than a core.
    try:
        with _cudnn_autotuned(device):
            for batch in loader:
                writer.submit(_reconcile(batch, plan, encoder, device, summary, known_contents))
                if should_stop is not None and should_stop() and writer.submitted < len(plan.todo):
                    summary.interrupted = True
                    break
    except BaseException:
        writer.close(reraise=False)  # the batches already handed over are stored; this error wins
        raise
    writer.close()
    if not summary.interrupted:  # an unfinished run keeps vanished rows: later files may be their moves
        gone = plan.remaining_vanished()
        vectors.remove(store.remove([row.id for row in gone]))
        summary.removed = len(gone)
    store.drop_unused_contents()
    summary.seconds = time.perf_counter() - started
    return summary


@dataclass
class _Encoding:
    """One batch's changes, whose new contents' vectors the encoder may still be computing.

    On a GPU the forward pass and the copies back to (pinned) host memory are queued
    asynchronously; `changes_with_vectors` waits for them. On the CPU they are done already.
    """

    changes: list[Change]
    files: int  # files of the batch, for progress
    puts: list[Put]  # the Puts that carry new content, in the encoder's row order
    global_: torch.Tensor | None = None  # (n, d) float32, host memory
    regions: torch.Tensor | None = None  # (n, R, d) float16, host memory
    ready: torch.cuda.Event | None = None  # fires when global_, regions and the top classes are filled (GPU)
    # With a classifier: each row's top classes, best first, in host memory, and the class names.
    top_probs: torch.Tensor | None = None  # (n, TOP_LABELS) float32
    top_classes: torch.Tensor | None = None  # (n, TOP_LABELS) int64, indices into label_names
    label_names: tuple[str, ...] | None = None

    def changes_with_vectors(self) -> list[Change]:
        if self.ready is not None:
            self.ready.synchronize()
        if self.puts:
            global_, regions = self.global_.numpy(), self.regions.numpy()  # (n, d), (n, R, d)
            for row, put in enumerate(self.puts):
                put.global_, put.regions = global_[row], regions[row]
            if self.top_probs is not None:
                names = self.label_names
                probs, classes = self.top_probs.tolist(), self.top_classes.tolist()  # (n, TOP_LABELS) each
                for row, put in enumerate(self.puts):
                    put.labels = [(names[c], round(p, 4)) for c, p in zip(classes[row], probs[row])]
        return self.changes


class _StoreWriter:
    """Stores encoded batches in the order given: each at once while encodings are
    synchronous (CPU), and from the first asynchronous one (GPU) on a thread of its own.

    On a GPU the main thread would otherwise wait for SQLite: writing 256 VGG16 images
    (49 fp16 regions x 256 each) takes 33-49 ms on the H200 machine's Xeon, mostly inside
    SQLite, which releases the GIL. On the thread it overlaps receiving, decoding and the
    GPU: end to end at batch 256 went from 2,069-2,457 to 2,759-3,051 images/s on that
    machine (three pairs of runs, bench/RESULTS.md).
    """

    def __init__(self, store: Store, vectors: VectorIndex, total: int, progress: ProgressCallback | None) -> None:
        self.store, self.vectors, self.total, self.progress = store, vectors, total, progress
        self.submitted = 0  # files handed over
        self.done = 0  # files stored
        self.error: BaseException | None = None
        self.queue: queue.Queue[_Encoding | None] = queue.Queue(maxsize=2)  # batches waiting, at most
        self.thread: threading.Thread | None = None

    def submit(self, encoding: _Encoding) -> None:
        self._raise_error()
        self.submitted += encoding.files
        if self.thread is None and encoding.ready is None:
            self._store(encoding)
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="imgsearch-store-writer", daemon=True)
            self.thread.start()
        self.queue.put(encoding)

    def close(self, *, reraise: bool = True) -> None:
        """Wait until every batch handed over is stored (or the writer failed)."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None
        if reraise:
            self._raise_error()

    def _run(self) -> None:
        while (encoding := self.queue.get()) is not None:
            if self.error is None:  # after an error, batches are dropped: the main thread stops at its next submit
                try:
                    self._store(encoding)
                except BaseException as exc:
                    self.error = exc

    def _store(self, encoding: _Encoding) -> None:
        applied = self.store.apply(encoding.changes_with_vectors())
        self.vectors.remove(applied.removed_ids)
        self.vectors.add(applied.added_ids, applied.added_vectors)  # (n,), (n, d)
        self.done += encoding.files
        if self.progress is not None:
            self.progress(self.done, self.total)

    def _raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _reconcile(
    batch: _Batch,
    plan: RunPlan,
    encoder: ImageEncoder,
    device: torch.device,
    summary: AddSummary,
    known_contents: set[str],
) -> _Encoding:
    """Decide what each decoded file means for the store; start embedding the contents not in
    `known_contents` (stored, or embedded earlier in this run), and add them to it."""
    changes: list[Change] = []
    to_embed: dict[str, tuple[Put, int]] = {}  # one Put per new content carries its vectors: (Put, row in pixels)
    good_row = -1  # row of the current result in batch.pixels
    for result in batch.results:
        good_row += result.error is None
        text = result.text
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
        put = Put(text, result.size, result.mtime, result.ctime, result.sha256, result.width, result.height,
                  taken_at=result.taken_at)
        changes.append(put)
        if stored is None:
            summary.added += 1
        else:
            summary.updated += 1
        if result.sha256 not in known_contents:
            known_contents.add(result.sha256)
            to_embed[result.sha256] = (put, good_row)
    encoding = _Encoding(changes, len(batch), [put for put, _ in to_embed.values()])
    if to_embed:
        rows = torch.tensor([row for _, row in to_embed.values()])
        started = _start_encoding(batch.pixels, rows, encoder, device)
        encoding.global_, encoding.regions, encoding.ready = started.global_, started.regions, started.ready
        if started.top_probs is not None:
            encoding.top_probs, encoding.top_classes = started.top_probs, started.top_classes
            encoding.label_names = encoder.labels
        summary.embedded += len(to_embed)
    return encoding


class _Started(NamedTuple):
    """What _start_encoding hands back: host tensors, filled once `ready` fires (GPU; None on the CPU)."""

    global_: torch.Tensor  # (n, d) float32
    regions: torch.Tensor  # (n, R, d) float16
    ready: torch.cuda.Event | None
    top_probs: torch.Tensor | None = None  # (n, TOP_LABELS) float32, best first; None without a classifier
    top_classes: torch.Tensor | None = None  # (n, TOP_LABELS) int64 class indices (never 0, "background")


def _start_encoding(pixels: torch.Tensor, rows: torch.Tensor, encoder: ImageEncoder, device: torch.device) -> _Started:
    """uint8 images (B, 3, S, S), rows to embed (n,) --> global vectors (n, d) float32,
    regions (n, R, d) float16 and, with a classifier, the top classes, in host memory,
    and on a GPU the event that says they are there."""
    cuda = device.type == "cuda"
    with torch.inference_mode():
        batch = pixels.to(device)[rows.to(device)]  # (n, 3, S, S) uint8
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            out = encoder.encode(batch)
        regions = out.regions.to(torch.float16)  # (n, R, d)
        global_ = out.global_.float()  # (n, d)
        top_probs = top_classes = None
        if out.class_probs is not None and encoder.labels is not None:
            top_probs, top_classes = _top_classes(out.class_probs, encoder.labels)  # (n, k), (n, k)
        if not cuda:
            return _Started(global_, regions, None, top_probs, top_classes)
        regions_host = torch.empty(regions.shape, dtype=torch.float16, pin_memory=True)
        global_host = torch.empty(global_.shape, dtype=torch.float32, pin_memory=True)
        regions_host.copy_(regions, non_blocking=True)
        global_host.copy_(global_, non_blocking=True)
        if top_probs is not None:
            probs_host = torch.empty(top_probs.shape, dtype=torch.float32, pin_memory=True)
            classes_host = torch.empty(top_classes.shape, dtype=torch.int64, pin_memory=True)
            probs_host.copy_(top_probs, non_blocking=True)
            classes_host.copy_(top_classes, non_blocking=True)
            top_probs, top_classes = probs_host, classes_host
        ready = torch.cuda.Event()
        ready.record()
    return _Started(global_host, regions_host, ready, top_probs, top_classes)


def top_labels(class_probs: torch.Tensor, labels: tuple[str, ...]) -> list[list[tuple[str, float]]]:
    """Posteriors (n, C) --> per image its TOP_LABELS classes, best first, as the store keeps
    them: [(name, prob rounded to 4 decimals), ...]."""
    probs, classes = _top_classes(class_probs, labels)  # (n, k), (n, k)
    return [[(labels[c], round(p, 4)) for c, p in zip(row_classes, row_probs)]
            for row_classes, row_probs in zip(classes.tolist(), probs.tolist())]


def _top_classes(class_probs: torch.Tensor, labels: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax posteriors (n, C) --> the TOP_LABELS most probable classes other than class 0
    ("background"), best first: probabilities (n, k) float32 and class indices (n, k) int64."""
    if class_probs.shape[1] != len(labels):
        raise ModelConfigError(
            f"the model's classifier has {class_probs.shape[1]} classes but its config names "
            f"{len(labels)} labels; fix image.labels in its config.json."
        )
    probs, classes = class_probs[:, 1:].float().topk(min(TOP_LABELS, class_probs.shape[1] - 1), dim=1)
    return probs, classes + 1  # back to indices into `labels`


@contextmanager
def _cudnn_autotuned(device: torch.device) -> Iterator[None]:
    """On a GPU, let cuDNN pick its fastest convolution algorithms: every batch has the same shape."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
