"""The stored half of an index directory: index.db (the truth) and vectors.faiss (derived
from it), kept in step. imgsearch.index.Index holds one and leaves this job to it.

Readers see one snapshot: a SQLite read transaction, and the FAISS index of exactly the
images in it. vectors.faiss is derived: when it is missing, unreadable or out of step (a
writer was killed, or is running now), it is rebuilt from the snapshot, without the writer
lock, so an `imgsearch index` started meanwhile is not refused. A reader saves its rebuild
(under vectors.lock) only if no writer was running just before its snapshot was taken: the
file then holds the newest state. Should a writer commit before the save, the file is out
of step again, which the next open sees by comparing ids. The writer (the holder of the
writer lock) saves vectors.faiss at the end of its run, waiting briefly for a reader's save.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from imgsearch.ground.errors import StoreCorrupt
from imgsearch.storage.lock import VECTORS_LOCK_NAME, FileLock, WriterLock
from imgsearch.storage.store import Store
from imgsearch.storage.vectors import VectorIndex

__all__ = ["StoredIndex", "DB_NAME", "VECTORS_NAME"]

DB_NAME = "index.db"
VECTORS_NAME = "vectors.faiss"

# How long a writer waits for a search that is saving its rebuilt vectors.faiss.
VECTORS_LOCK_WAIT_S = 60.0

log = logging.getLogger(__name__)


class StoredIndex:
    def __init__(self, directory: Path, embed_dim: int, num_regions: int, writer_lock: WriterLock) -> None:
        self.directory = directory
        self.embed_dim = embed_dim
        self.writer_lock = writer_lock
        self.store = Store(directory / DB_NAME, embed_dim, num_regions)
        self.vectors_lock = FileLock(directory / VECTORS_LOCK_NAME)
        self.vectors = VectorIndex.empty(embed_dim)
        self.open_snapshot()

    @property
    def vectors_path(self) -> Path:
        return self.directory / VECTORS_NAME

    # ---- readers -----------------------------------------------------------------

    def open_snapshot(self) -> None:
        """Start a read snapshot of the store and load the FAISS index that matches it
        (rebuilt when the saved one does not; see the module docstring)."""
        self.store.begin_snapshot()
        vectors, problem = self._saved_vectors_in_step()
        if vectors is not None:
            self.vectors = vectors
            return
        if self.writer_lock.busy():  # a writer is running; it saves vectors.faiss when it ends
            log.info("%s %s while a writer runs; rebuilding it in memory", self.vectors_path, problem)
            self.rebuild()
            return
        self.store.begin_snapshot()  # the newest state, taken after the check
        vectors, problem = self._saved_vectors_in_step()  # a writer may have saved it meanwhile
        if vectors is not None:
            self.vectors = vectors
            return
        log.warning("%s %s; rebuilding it from %s", self.vectors_path, problem, DB_NAME)
        self.rebuild()
        self.save_vectors()

    def catch_up(self) -> tuple[int, int]:
        """Move to a new snapshot of the store and bring the FAISS index in memory in step with
        it by adding and removing the ids that changed (a concurrent writer's batches), instead
        of reloading or rebuilding it. Rebuilds when the change crosses a size step
        (VectorIndex.fits). Returns how many ids were added and removed."""
        self.store.begin_snapshot()
        expected = self.store.ok_ids()
        current = self.vectors.ids()
        added = np.setdiff1d(expected, current, assume_unique=True)
        removed = np.setdiff1d(current, expected, assume_unique=True)
        if len(added) or len(removed):
            self.vectors.remove(removed)
            self.vectors.add(added, self.store.global_vectors_of(added.tolist()))
            if not self.vectors.fits():
                self.rebuild()
        return len(added), len(removed)

    def _saved_vectors_in_step(self) -> tuple[VectorIndex | None, str]:
        """vectors.faiss if it holds exactly the snapshot's indexed images; else None and why not."""
        path = self.vectors_path
        if not path.exists():
            return None, "is missing"
        try:
            vectors = VectorIndex.load(path)
        except (RuntimeError, OSError) as exc:  # faiss reports unreadable files as RuntimeError
            return None, f"is unreadable ({_faiss_reason(exc)})"
        if vectors.dim != self.embed_dim:
            return None, f"holds {vectors.dim}-d vectors, not the index's {self.embed_dim}-d"
        expected = self.store.ok_ids()
        if not np.array_equal(vectors.ids(), expected):
            return None, (
                f"is out of step with {DB_NAME} ({len(vectors)} vectors for "
                f"{len(expected)} indexed images, not the same ids)"
            )
        return vectors, ""

    # ---- the writer (holds the writer lock) ---------------------------------------

    def open_snapshot_locked(self) -> None:
        """As open_snapshot, for the lock holder: the newest state, rebuilt and saved if needed."""
        self.store.begin_snapshot()
        expected = self.store.ok_ids()
        if np.array_equal(self.vectors.ids(), expected):
            return
        log.info("%s is out of step with %s; rebuilding it (%d images)", VECTORS_NAME, DB_NAME, len(expected))
        self.rebuild()
        self.save_vectors()

    def rebuild_and_write(self) -> VectorIndex:
        """Rebuild vectors.faiss from a fresh snapshot and write it (errors raised)."""
        self.store.begin_snapshot()
        self.rebuild()
        self._write_vectors()
        return self.vectors

    # ---- both --------------------------------------------------------------------

    def rebuild(self) -> VectorIndex:
        """The FAISS index of the snapshot's indexed images, built from their stored vectors."""
        ids, vectors = self.store.global_vectors()
        self.vectors = VectorIndex.build(ids, vectors, self.embed_dim)
        return self.vectors

    def save_vectors(self) -> None:
        """Save vectors.faiss; it is derived, so a failure (disk full) only costs a rebuild later."""
        try:
            self._write_vectors()
        except (OSError, RuntimeError, StoreCorrupt) as exc:  # faiss reports write errors as RuntimeError
            log.warning(
                "could not save %s (%s); it will be rebuilt from %s when next opened", self.vectors_path, exc, DB_NAME
            )

    def _write_vectors(self) -> None:
        """Write vectors.faiss under vectors.lock. The writer waits for a search that is saving
        its rebuild (a moment); a search gives up at once: the file is being saved anyway."""
        wait = VECTORS_LOCK_WAIT_S if self.writer_lock.held else 0.0
        if not self.vectors_lock.try_acquire_within(wait):
            log.info("%s is being saved by another process; not saving it", self.vectors_path)
            return
        try:
            self.vectors.save(self.vectors_path)
        finally:
            self.vectors_lock.release()

    def close(self) -> None:
        self.store.close()
        self.vectors_lock.close()


def _faiss_reason(exc: Exception) -> str:
    """faiss's message without its C++ location prefix ("Error in ... at file.cpp:12: ")."""
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", str(exc)).strip() or type(exc).__name__
