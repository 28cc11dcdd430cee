"""The local indexing run: files --> plan --> embed (embed_worker) --> merge (merge.ShardWriter).

The same pieces as a run spread over many workers, in one process: each DataLoader batch
is a shard, decoded in worker processes (embed_worker.DecodeDataset), embedded here
(embed_worker.start_embedding) while later batches decode, and handed to the one writer
(merge.ShardWriter), which commits it to SQLite in one transaction and mirrors it into the
in-memory FAISS index. The encoder runs under inference mode, channels-last, and on a GPU
under float16 autocast, asynchronously, with a writer thread merging finished batches
meanwhile. A run killed at any moment leaves every finished batch stored and nothing
half-written; the next run skips what is stored and finishes the rest. Content is
identified by its sha256: a file whose content is already stored (a copy, a move, a
`touch`) is never run through the backbone again. A failure in one file is recorded and
the run goes on. With a backbone that has a classifier (mobilenet_v2), each new content's
top TOP_LABELS classes (class 0, "background", skipped) are stored with its vectors.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable

import torch

from imgsearch.indexer.decode import decode_file
from imgsearch.indexer.embed_worker import (
    TOP_LABELS, DecodedBatch, DecodeDataset, PendingShard, Started, collate, cudnn_autotuned, decode_loader,
    init_worker, start_embedding, start_encoding, top_labels,
)
from imgsearch.indexer.files import input_roots, iter_image_files
from imgsearch.indexer.merge import AddSummary, ShardWriter
from imgsearch.indexer.paths import path_to_text
from imgsearch.indexer.plan import plan_run
from imgsearch.indexer.store import Store
from imgsearch.indexer.vectors import VectorIndex
from imgsearch.model.image_encoder import ImageEncoder

__all__ = ["AddSummary", "index_files", "default_workers", "TOP_LABELS", "top_labels"]

ProgressCallback = Callable[[int, int], None]  # (files done, files to process)
StopCheck = Callable[[], bool]  # asked after each batch: stop the run now, keeping what is done?

# The local run's stages under the names it has always had (bench/benchmarks/gpu_check.py and tests use them;
# tests replace decode_file and _start_encoding here, and index_files looks both up here when it runs).
_DecodeDataset, _Batch, _collate, _init_worker = DecodeDataset, DecodedBatch, collate, init_worker
_Started, _start_encoding = Started, start_encoding


def default_workers() -> int:
    """One decoding process per spare core, at most 16; none on a single core."""
    return max(0, min(16, (os.cpu_count() or 1) - 1))


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
    removed at the end of the run (never files under other folders). The allocator is left as
    it is: a caller that indexes on the CPU calls model.allocator.keep_freed_memory() first
    (`imgsearch index` does), before the decode workers are forked.
    """
    started = time.perf_counter()
    roots = input_roots(paths)
    store.record_folders([path_to_text(root) for root in roots])  # what the service may serve from
    listed = list(iter_image_files(roots))
    plan = plan_run(listed, store.all_images(), roots, prune=prune)
    summary = AddSummary(unchanged=plan.unchanged)

    device = next(encoder.parameters()).device
    encoder.to(memory_format=torch.channels_last)
    num_workers = default_workers() if workers is None else workers
    loader = decode_loader(_DecodeDataset(plan.todo, encoder.image_size, decode_file), batch_size, num_workers)
    known_contents = store.content_hashes()  # grows with every content embedded in this run
    shards = ShardWriter(store, vectors, plan, summary)
    writer = _StoreWriter(shards, len(plan.todo), progress)
    # torch keeps all its threads beside the decode workers: on an idle 2-core machine that
    # indexed VGG16 at 224px at 94% of forward-only, against 54% with one thread left to
    # torch (bench/RESULTS-archive.md, the two idle-machine indexing runs); decoding needs far less than a core.
    try:
        with cudnn_autotuned(device):
            for batch in loader:
                writer.submit(start_embedding(batch, encoder, device, known_contents, start=_start_encoding))
                if should_stop is not None and should_stop() and writer.submitted < len(plan.todo):
                    summary.interrupted = True
                    break
    except BaseException:
        writer.close(reraise=False)  # the batches already handed over are stored; this error wins
        raise
    writer.close()
    shards.finish(interrupted=summary.interrupted)  # an unfinished run keeps vanished rows: later files may be moves
    summary.seconds = time.perf_counter() - started
    return summary


class _StoreWriter:
    """Merges embedded batches in the order given: each at once while embeddings are
    synchronous (CPU), and from the first asynchronous one (GPU) on a thread of its own.

    On a GPU the main thread would otherwise wait for SQLite: writing 256 VGG16 images
    (49 fp16 regions x 256 each) takes 33-49 ms on the H200 machine's Xeon, mostly inside
    SQLite, which releases the GIL. On the thread it overlaps receiving, decoding and the
    GPU: end to end at batch 256 went from 2,069-2,457 to 2,759-3,051 images/s on that
    machine (three pairs of runs, bench/RESULTS.md).
    """

    def __init__(self, shards: ShardWriter, total: int, progress: ProgressCallback | None) -> None:
        self.shards, self.total, self.progress = shards, total, progress
        self.submitted = 0  # files handed over
        self.done = 0  # files stored
        self.error: BaseException | None = None
        self.queue: queue.Queue[PendingShard | None] = queue.Queue(maxsize=2)  # batches waiting, at most
        self.thread: threading.Thread | None = None

    def submit(self, pending: PendingShard) -> None:
        self._raise_error()
        self.submitted += len(pending)
        if self.thread is None and pending.ready is None:
            self._store(pending)
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="imgsearch-store-writer", daemon=True)
            self.thread.start()
        self.queue.put(pending)

    def close(self, *, reraise: bool = True) -> None:
        """Wait until every batch handed over is stored (or the writer failed)."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None
        if reraise:
            self._raise_error()

    def _run(self) -> None:
        while (pending := self.queue.get()) is not None:
            if self.error is None:  # after an error, batches are dropped: the main thread stops at its next submit
                try:
                    self._store(pending)
                except BaseException as exc:
                    self.error = exc

    def _store(self, pending: PendingShard) -> None:
        self.shards.merge(pending.result())  # waits for the vectors (GPU)
        self.done += len(pending)
        if self.progress is not None:
            self.progress(self.done, self.total)

    def _raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
