"""The local embedder: decode worker processes and the encoder in this process (run.Embedder).

Each DataLoader batch is a shard, decoded in worker processes (embed_worker.DecodeDataset),
embedded here (embed_worker.start_embedding) while later batches decode, and handed to the
run (run.run_indexing), whose one writer (merge.ShardWriter) commits it to SQLite in one
transaction and mirrors it into the in-memory FAISS index. The encoder runs under inference
mode, channels-last, and on a GPU under float16 autocast, asynchronously, with the run's
writer thread merging finished batches meanwhile. Content is identified by its sha256: a
file whose content is already stored (a copy, a move, a `touch`) is never run through the
backbone again. A failure in one file is recorded and the run goes on. With a backbone that
has a classifier (mobilenet_v2), each new content's top labels (model/labels.py; class 0,
"background", skipped) are stored with its vectors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imgsearch.images.decode import decode_file
from imgsearch.indexer.merge import AddSummary
from imgsearch.indexer.run import ProgressCallback, StopCheck, run_indexing
from imgsearch.storage.store import Store
from imgsearch.storage.vectors import VectorIndex

# torch (the encoder, the decode workers' DataLoader) is imported when there is something to
# embed: a run that finds every file unchanged starts and ends without it.
if TYPE_CHECKING:
    from imgsearch.indexer.embed_worker import Decode, PendingShard
    from imgsearch.model.image_encoder import ImageEncoder

__all__ = ["AddSummary", "LocalEmbedder", "index_files", "default_workers"]


def default_workers() -> int:
    """One decoding process per spare core, at most 16; none on a single core."""
    return max(0, min(16, (os.cpu_count() or 1) - 1))


class LocalEmbedder:
    """The Embedder of a run on this machine: DataLoader batches decoded in `workers` processes
    (default_workers() when None), each embedded here by `encoder` while later ones decode. On a
    GPU each batch's vectors are still on their way when it is handed over (asynchronous).
    Instead of the encoder, `load_encoder` may give it when there are files to embed (a run
    that finds every file unchanged then loads no model, nor torch).
    `decode` reads one file (decode.decode_file, or a stand-in with its signature)."""

    def __init__(
        self,
        encoder: ImageEncoder | None = None,
        *,
        load_encoder: Callable[[], ImageEncoder] | None = None,
        batch_size: int = 32,
        workers: int | None = None,
        decode: Decode = decode_file,
    ) -> None:
        if (encoder is None) == (load_encoder is None):
            raise ValueError("give the encoder or load_encoder, not both")
        self._encoder, self._load_encoder = encoder, load_encoder
        self.batch_size, self.workers, self.decode = batch_size, workers, decode

    @property
    def encoder(self) -> ImageEncoder:
        if self._encoder is None:
            assert self._load_encoder is not None
            self._encoder = self._load_encoder()
        return self._encoder

    def embed(self, paths: Sequence[Path], known_contents: set[str]) -> Iterator[PendingShard]:
        if not paths:
            return iter(())
        from imgsearch.indexer.embed_worker import embed_batches

        workers = default_workers() if self.workers is None else self.workers
        # torch keeps all its threads beside the decode workers: on an idle 2-core machine that
        # indexed VGG16 at 224px at 94% of forward-only, against 54% with one thread left to
        # torch (bench/RESULTS-archive.md, the two idle-machine indexing runs); decoding needs far less than a core.
        return embed_batches(
            paths, self.encoder, known_contents, batch_size=self.batch_size, workers=workers, decode=self.decode
        )


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
    """Bring the store in line with the files under `paths`, embedded here: run.run_indexing with
    a LocalEmbedder. The caller holds the writer lock.

    With `prune`, stored files under the given folders that no longer exist are
    removed at the end of the run (never files under other folders). The allocator is left as
    it is: a caller that indexes on the CPU calls model.allocator.keep_freed_memory() first
    (`imgsearch index` does), before the decode workers are forked.
    """
    return run_indexing(
        paths,
        store,
        vectors,
        LocalEmbedder(encoder, batch_size=batch_size, workers=workers),
        progress=progress,
        prune=prune,
        should_stop=should_stop,
    )
