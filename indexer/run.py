"""The indexing run: files --> plan --> an embedder --> the one writer (merge.ShardWriter) --> finish.

One run, whatever embeds the files: run_indexing lists the files under the roots, plans the
run against the store (plan.plan_run), hands the files to read to an Embedder, merges each
group of files it hands back (a batch, a shard) into the store with one ShardWriter, in one
SQLite transaction each, and at the end prunes what vanished. The embedders:

- pipeline.LocalEmbedder: decode worker processes and the encoder in this process, one
  DataLoader batch at a time (on a GPU asynchronously: each batch's vectors are waited for
  by the writer thread below, while later batches decode and encode);
- ray_engine.RayEmbedder: Ray actors, one shard of files each, on one machine or a cluster;
- a test's own: anything with an `embed` method as Embedder says.

A run killed at any moment leaves every merged batch stored and nothing half-written; the
next run skips what is stored (the plan sees it as unchanged) and finishes the rest. A run
stopped by `should_stop` keeps every batch handed to the writer, and keeps the stored rows of
vanished files (later files may be their moves).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from imgsearch.ground.paths import path_to_text
from imgsearch.images.decode import ImageRecord
from imgsearch.indexer.files import input_roots, iter_image_files
from imgsearch.indexer.merge import AddSummary, ShardWriter
from imgsearch.indexer.plan import plan_run
from imgsearch.indexer.shard import Shard
from imgsearch.storage.store import Store
from imgsearch.storage.vectors import VectorIndex

__all__ = ["run_indexing", "Embedder", "Embedding", "Finished", "AddSummary", "ProgressCallback", "StopCheck"]

ProgressCallback = Callable[[int, int], None]  # (files done, files to process)
StopCheck = Callable[[], bool]  # asked after each batch: stop the run now, keeping what is done?


class Embedding(Protocol):
    """A group of files (a batch, a shard) an embedder hands the run: their shard, maybe still
    being computed (a GPU's asynchronous work)."""

    @property
    def records(self) -> Sequence[ImageRecord]:
        """Every file of the group, as the shard will hold them."""
        ...

    @property
    def asynchronous(self) -> bool:
        """True when result() waits for work still running: the run then merges this and every
        later group on a writer thread of its own, so that the waiting overlaps the next groups."""
        ...

    def result(self) -> Shard:
        """The group's shard (waiting for it if need be)."""
        ...


class Embedder(Protocol):
    """What turns the files to read into shards; it knows no store, no FAISS and no plan."""

    def embed(self, paths: Sequence[Path], known_contents: set[str]) -> Iterator[Embedding]:
        """Decode, hash and embed `paths` (the run's files to read, in listing order), group by
        group in any order, each content not in `known_contents` once (the contents the store
        holds as the run starts; the embedder may add to the set). Every path is in one group;
        a group handed over again (a retried worker's, same shard id) is merged once. The run
        stops asking for groups when it stops early or fails, and then calls the iterator's
        close(), if it has one (a generator's): the embedder's workers end there."""
        ...


@dataclass
class Finished:
    """An Embedding whose shard is there already (a Ray actor's, a test's)."""

    shard: Shard
    asynchronous = False

    @property
    def records(self) -> list[ImageRecord]:
        return self.shard.records

    def result(self) -> Shard:
        return self.shard


def run_indexing(
    paths: Iterable[str | os.PathLike],
    store: Store,
    vectors: VectorIndex,
    embedder: Embedder,
    *,
    progress: ProgressCallback | None = None,
    prune: bool = True,
    should_stop: StopCheck | None = None,
) -> AddSummary:
    """Bring the store in line with the files under `paths`, the new and changed ones embedded
    by `embedder`. The caller holds the writer lock.

    With `prune`, stored files under the given folders that no longer exist are removed at the
    end of the run (never files under other folders). `progress` is told (files stored, files to
    read) after each group is stored. `should_stop` is asked after each group handed to the
    writer; when it says True while files are left, the run ends there, keeping every group
    handed over (summary.interrupted).
    """
    started = time.perf_counter()
    roots = input_roots(paths)
    store.record_folders([path_to_text(root) for root in roots])  # what the service may serve from
    listed = list(iter_image_files(roots))
    plan = plan_run(listed, store.all_images(), roots, prune=prune)
    summary = AddSummary(
        unchanged=plan.unchanged, still_failing=[(row.path, row.error or "unknown") for row in plan.still_failing]
    )
    shards = ShardWriter(store, vectors, plan, summary)
    writer = _StoreWriter(shards, len(plan.todo), progress)
    known_contents = store.content_hashes() if plan.todo else set()  # the embedder adds those it embeds
    groups = embedder.embed(plan.todo, known_contents)
    try:
        try:
            for embedding in groups:
                writer.submit(embedding)
                if should_stop is not None and should_stop() and writer.submitted < len(plan.todo):
                    summary.interrupted = True
                    break
        finally:
            close = getattr(groups, "close", None)
            if close is not None:
                close()  # the embedder's workers end: the groups not handed over are dropped with them
    except BaseException:
        writer.close(reraise=False)  # the groups already handed over are stored; this error wins
        raise
    writer.close()
    shards.finish(interrupted=summary.interrupted)  # an unfinished run keeps vanished rows: later files may be moves
    summary.seconds = time.perf_counter() - started
    return summary


class _StoreWriter:
    """Merges embedded groups in the order given: each at once while they are synchronous
    (CPU, Ray), and from the first asynchronous one (GPU) on a thread of its own.

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
        self.queue: queue.Queue[Embedding | None] = queue.Queue(maxsize=2)  # groups waiting, at most
        self.thread: threading.Thread | None = None

    def submit(self, embedding: Embedding) -> None:
        self._raise_error()
        self.submitted += len(embedding.records)
        if self.thread is None and not embedding.asynchronous:
            self._store(embedding)
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="imgsearch-store-writer", daemon=True)
            self.thread.start()
        self.queue.put(embedding)

    def close(self, *, reraise: bool = True) -> None:
        """Wait until every group handed over is stored (or the writer failed)."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None
        if reraise:
            self._raise_error()

    def _run(self) -> None:
        while (embedding := self.queue.get()) is not None:
            if self.error is None:  # after an error, groups are dropped: the main thread stops at its next submit
                try:
                    self._store(embedding)
                except BaseException as exc:
                    self.error = exc

    def _store(self, embedding: Embedding) -> None:
        shard = embedding.result()  # waits for the vectors (GPU)
        self.shards.merge(shard)
        self.done += len(shard.records)
        if self.progress is not None:
            self.progress(self.done, self.total)

    def _raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
