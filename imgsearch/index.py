"""Index: the public library object. Every CLI command is a thin wrapper over one of its calls.

An index directory holds:
- index.db      SQLite, the truth: image rows, region features, global vectors
- vectors.faiss FAISS index of the global vectors, derived; rebuilt from
                index.db whenever it is missing or out of step
- manifest.json schema version, dims, metric and the model that made the vectors
- write.lock    held (flock) by the one process writing; names it for the others
- vectors.lock  held while vectors.faiss is saved (by a writer, or a search that rebuilt it)

An open Index reads one consistent snapshot of the store (a SQLite read
transaction), so a search never sees half of a concurrent writer's work;
refresh() moves it to the newest state. add() takes the writer lock, so a
second concurrent writer gets IndexLocked instead of a damaged store.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from imgsearch.model.packaged import default_model_dir
from imgsearch.model.checkpoint import fingerprint, read_config
from imgsearch.model.device import resolve_device
from imgsearch.errors import IndexExists, IndexNotFound, ModelMismatch, ModelNotFound, StoreCorrupt
from imgsearch.indexer.lock import VECTORS_LOCK_NAME, FileLock, WriterLock
from imgsearch.model.image_encoder import ImageEncoder
from imgsearch.indexer.manifest import MANIFEST_NAME, Manifest, ModelRecord
from imgsearch.indexer.pipeline import AddSummary, ProgressCallback, StopCheck, index_files
from imgsearch.indexer.store import SCHEMA_VERSION, Store
from imgsearch.indexer.vectors import VectorIndex
from imgsearch.model.alignment import AlignmentConfig, AlignmentModel
from imgsearch.search.searcher import DEFAULT_CANDIDATES, RerankPrecision, SearchResult, search

__all__ = ["Index", "DB_NAME", "VECTORS_NAME", "default_index_dir"]

DB_NAME = "index.db"
VECTORS_NAME = "vectors.faiss"

# How long a writer waits for a search that is saving its rebuilt vectors.faiss.
VECTORS_LOCK_WAIT_S = 60.0

log = logging.getLogger("imgsearch")


def default_index_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user index: $XDG_DATA_HOME/imgsearch/index, else ~/.local/share/imgsearch/index.

    As the XDG base directory spec says, an empty or relative XDG_DATA_HOME is ignored.
    (The CLI's --index, then IMGSEARCH_INDEX, come before this.)
    """
    environ = os.environ if environ is None else environ
    data_home = environ.get("XDG_DATA_HOME", "")
    if not data_home or not os.path.isabs(data_home):
        home = environ.get("HOME") or str(Path.home())
        data_home = os.path.join(home, ".local", "share")
    return Path(data_home) / "imgsearch" / "index"


class Index:
    def __init__(
        self, directory: Path, manifest: Manifest, model_dir: Path, device: str, *, model_checked: bool = True
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.model_dir = model_dir
        # False while the model recorded in the manifest has not been checked yet: that
        # happens on first use, so that info and errors work when the model has moved.
        self._model_checked = model_checked
        self.device = resolve_device(device)
        self.store = Store(directory / DB_NAME, manifest.embed_dim, manifest.num_regions)
        self.lock = WriterLock(directory)
        self.vectors_lock = FileLock(directory / VECTORS_LOCK_NAME)
        self.vectors = self._open_snapshot()
        self._image_encoder: ImageEncoder | None = None
        self._model: AlignmentModel | None = None

    # ---- opening -----------------------------------------------------------

    @classmethod
    def create(
        cls, directory: str | os.PathLike, model: str | os.PathLike | None = None, device: str = "auto"
    ) -> "Index":
        """Create an empty index in `directory` for the alignment model in `model`
        (by default the photo model packaged with imgsearch: imgsearch.model.packaged.default_model_dir())."""
        directory = Path(directory)
        if (directory / MANIFEST_NAME).exists():
            raise IndexExists(f"{directory} already holds an index; open it instead, or pick a new directory.")
        if directory.exists() and not directory.is_dir():
            raise IndexExists(f"{directory} exists and is not a directory; pick another --index path.")
        model_dir = (default_model_dir() if model is None else Path(model)).resolve()
        config = AlignmentConfig.from_dict(read_config(model_dir))
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            embed_dim=config.embed_dim,
            num_regions=config.backbone.grid_side**2,
            model=ModelRecord(
                fingerprint=fingerprint(model_dir), path=str(model_dir),
                backbone=config.backbone.describe(), text_encoder=config.text.name_or_path,
            ),
        )
        directory.mkdir(parents=True, exist_ok=True)
        with WriterLock(directory):
            if (directory / MANIFEST_NAME).exists():  # another process created it meanwhile
                raise IndexExists(f"{directory} already holds an index; open it instead, or pick a new directory.")
            Store(directory / DB_NAME, manifest.embed_dim, manifest.num_regions).close()
            VectorIndex.empty(manifest.embed_dim).save(directory / VECTORS_NAME)
            manifest.write(directory)  # written last: its presence means the index is complete
        return cls(directory, manifest, model_dir, device)

    @classmethod
    def open(
        cls, directory: str | os.PathLike, model: str | os.PathLike | None = None, device: str = "auto"
    ) -> "Index":
        """Open an existing index. `model` defaults to the model recorded in the manifest;
        a model other than the one that built the index is refused. A given `model` is
        checked now; the recorded one when first used, so info() and failures() work
        without it."""
        directory = Path(directory)
        try:
            manifest = Manifest.read(directory)
        except FileNotFoundError:
            where = "" if directory == default_index_dir() else f" --index {directory}"
            raise IndexNotFound(
                f"no index at {directory}; create one with `imgsearch index PHOTOS{where}`."
            ) from None
        if model is None:
            return cls(directory, manifest, Path(manifest.model.path), device, model_checked=False)
        model_dir = Path(model).resolve()
        _check_model(directory, manifest, model_dir)
        return cls(directory, manifest, model_dir, device)

    @classmethod
    def open_or_create(
        cls, directory: str | os.PathLike, model: str | os.PathLike | None = None, device: str = "auto"
    ) -> "Index":
        """Open the index in `directory` (with its recorded model unless `model` is given), or
        create it with `model`, by default the packaged photo model."""
        if (Path(directory) / MANIFEST_NAME).exists():
            return cls.open(directory, model, device)
        return cls.create(directory, model, device)

    def _open_snapshot(self) -> VectorIndex:
        """Start a read snapshot of the store and load the FAISS index that matches it.

        vectors.faiss is derived: when it is missing, unreadable or out of step (a
        writer was killed, or is running now), it is rebuilt from the snapshot, without
        the writer lock, so an `imgsearch index` started meanwhile is not refused. The
        rebuilt file is saved (under vectors.lock) only if no writer was running just
        before the snapshot was taken: it is then the newest state. Should a writer
        commit before the save, the file is out of step again, which the next open sees.
        """
        self.store.begin_snapshot()
        vectors, problem = self._saved_vectors_in_step()
        if vectors is not None:
            return vectors
        path = self.directory / VECTORS_NAME
        if self.lock.busy():  # a writer is running; it saves vectors.faiss when it ends
            log.info("%s %s while a writer runs; rebuilding it in memory", path, problem)
            return self._build_vectors()
        self.store.begin_snapshot()  # the newest state, taken after the check
        vectors, problem = self._saved_vectors_in_step()  # a writer may have saved it meanwhile
        if vectors is not None:
            return vectors
        log.warning("%s %s; rebuilding it from index.db", path, problem)
        vectors = self._build_vectors()
        self._save_vectors()
        return vectors

    def _saved_vectors_in_step(self) -> tuple[VectorIndex | None, str]:
        """vectors.faiss if it holds exactly the snapshot's indexed images; else None and why not."""
        path = self.directory / VECTORS_NAME
        if not path.exists():
            return None, "is missing"
        try:
            vectors = VectorIndex.load(path)
        except (RuntimeError, OSError) as exc:  # faiss reports unreadable files as RuntimeError
            return None, f"is unreadable ({_faiss_reason(exc)})"
        if vectors.dim != self.manifest.embed_dim:
            return None, f"holds {vectors.dim}-d vectors, not the index's {self.manifest.embed_dim}-d"
        expected = self.store.ok_ids()
        if not np.array_equal(vectors.ids(), expected):
            return None, (f"is out of step with index.db ({len(vectors)} vectors for "
                          f"{len(expected)} indexed images, not the same ids)")
        return vectors, ""

    def refresh(self) -> None:
        """See everything committed since this Index was opened (or last refreshed)."""
        self.vectors = self._open_snapshot()

    def rebuild_vectors(self) -> VectorIndex:
        """Rebuild vectors.faiss from the SQLite store and save it."""
        with self.lock:
            self.store.begin_snapshot()
            index = self._build_vectors()
            self._write_vectors()
            return index

    def _build_vectors(self) -> VectorIndex:
        ids, vectors = self.store.global_vectors()
        index = VectorIndex.build(ids, vectors, self.manifest.embed_dim)
        self.vectors = index
        return index

    # ---- models, loaded on first use -----------------------------------------

    def _require_model(self) -> None:
        if not self._model_checked:
            _check_model(self.directory, self.manifest, self.model_dir)
            self._model_checked = True

    @property
    def model(self) -> AlignmentModel:
        if self._model is None:
            self._require_model()
            self._model = AlignmentModel.from_pretrained(self.model_dir, device=self.device)
        return self._model

    @property
    def image_encoder(self) -> ImageEncoder:
        if self._model is not None:
            return self._model.image
        if self._image_encoder is None:
            self._require_model()
            self._image_encoder = ImageEncoder.from_pretrained(self.model_dir, device=self.device)
        return self._image_encoder

    # ---- the operations ------------------------------------------------------

    def add(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        batch_size: int = 32,
        workers: int | None = None,
        progress: ProgressCallback | None = None,
        prune: bool = True,
        should_stop: StopCheck | None = None,
    ) -> AddSummary:
        """Index image files and folders (recursively), incrementally.

        New and changed files are read (size and mtime first, then the content
        hash); content already stored is not embedded again (copies, moves and
        renames keep their vectors); unreadable files are recorded with the reason.
        With `prune`, stored files under the given folders that no longer exist
        are removed (files under other folders are kept). `should_stop` is asked
        after each batch; when it says True the run ends there, keeping all done.
        Raises IndexLocked if another process is writing to this index.
        """
        with self.lock:  # first, so that a second writer is told at once
            encoder = self.image_encoder
            self.vectors = self._open_snapshot_locked()
            self.store.end_snapshot()
            try:
                summary = index_files(
                    paths, self.store, self.vectors, encoder, batch_size=batch_size, workers=workers,
                    progress=progress, prune=prune, should_stop=should_stop,
                )
                if not self.vectors.fits():  # grew past a size step: exact --> IVF, or more IVF lists
                    log.info("rebuilding %s for %d images", VECTORS_NAME, len(self.vectors))
                    self._build_vectors()
                self._save_vectors()
            finally:
                # Back to reading a snapshot; after an error (a batch rolled back after its
                # vectors were added), this also brings the vectors back in step.
                self.vectors = self._open_snapshot_locked()
        return summary

    def _save_vectors(self) -> None:
        """Save vectors.faiss; it is derived, so a failure (disk full) only costs a rebuild later."""
        try:
            self._write_vectors()
        except (OSError, RuntimeError, StoreCorrupt) as exc:  # faiss reports write errors as RuntimeError
            log.warning("could not save %s (%s); it will be rebuilt from index.db when next opened",
                        self.directory / VECTORS_NAME, exc)

    def _write_vectors(self) -> None:
        """Write vectors.faiss under vectors.lock. The writer waits for a search that is saving
        its rebuild (a moment); a search gives up at once: the file is being saved anyway."""
        if not self.vectors_lock.try_acquire_within(VECTORS_LOCK_WAIT_S if self.lock.held else 0.0):
            log.info("%s is being saved by another process; not saving it", self.directory / VECTORS_NAME)
            return
        try:
            self.vectors.save(self.directory / VECTORS_NAME)
        finally:
            self.vectors_lock.release()

    def _open_snapshot_locked(self) -> VectorIndex:
        """As _open_snapshot, for the lock holder: the newest state, rebuilt and saved if needed."""
        self.store.begin_snapshot()
        expected = self.store.ok_ids()
        if np.array_equal(self.vectors.ids(), expected):
            return self.vectors
        log.info("vectors.faiss is out of step with index.db; rebuilding it (%d images)", len(expected))
        vectors = self._build_vectors()
        self._save_vectors()
        return vectors

    def search(
        self, text: str, k: int = 10, *, candidates: int = DEFAULT_CANDIDATES, rerank: bool = True,
        rerank_precision: RerankPrecision = "float32",
    ) -> list[SearchResult]:
        """Top-k images for a text query: FAISS top-`candidates`, then cross-attention re-ranking
        (rerank_precision: see imgsearch.search.searcher.search)."""
        return search(self.model, self.store, self.vectors, text, k=k, candidates=candidates, rerank=rerank,
                      rerank_precision=rerank_precision)

    def info(self) -> dict:
        counts = self.store.counts()
        files = {name: (self.directory / name).stat().st_size for name in (DB_NAME, VECTORS_NAME, MANIFEST_NAME)
                 if (self.directory / name).exists()}
        return {
            "directory": str(self.directory),
            "images": counts["ok"],
            "failed": counts["error"],
            "failures_by_reason": _count_reasons(self.store.failures()),
            "distinct_contents": counts["distinct_contents"],
            "vectors": len(self.vectors),
            "labels": self._label_counts(),
            "manifest": {
                "schema_version": self.manifest.schema_version,
                "embed_dim": self.manifest.embed_dim,
                "num_regions": self.manifest.num_regions,
                "metric": self.manifest.metric,
                "normalized": self.manifest.normalized,
                "region_dtype": self.manifest.region_dtype,
                "created_at": self.manifest.created_at,
                "model": vars(self.manifest.model),
            },
            "bytes_on_disk": files,
        }

    def _label_counts(self, top: int = 10) -> dict:
        """The classifier's top-1 labels over the indexed images: how many images have labels
        stored, and the `top` most frequent top-1 labels with their image counts."""
        labeled, counts = self.store.top_label_counts(top)
        return {"labeled_images": labeled, "top1": [{"label": name, "images": n} for name, n in counts]}

    def failures(self) -> list[dict]:
        return [{"path": f.path, "error": f.error} for f in self.store.failures()]

    def close(self) -> None:
        self.store.close()
        self.lock.close()
        self.vectors_lock.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _faiss_reason(exc: Exception) -> str:
    """faiss's message without its C++ location prefix ("Error in ... at file.cpp:12: ")."""
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", str(exc)).strip() or type(exc).__name__


def _count_reasons(failures) -> dict[str, int]:
    """Failures counted by the kind of reason: the text before its details,
    e.g. "image too large: 9000x9000 pixels (...)" --> "image too large"."""
    counts: dict[str, int] = {}
    for failure in failures:
        kind = re.split(r"[:(]", failure.error or "unknown", maxsplit=1)[0].strip()
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _check_model(directory: Path, manifest: Manifest, model_dir: Path) -> None:
    """Raise unless `model_dir` holds the exact model that built the index."""
    if not model_dir.exists():
        raise ModelNotFound(
            f"the model that built this index is no longer at {model_dir}; "
            "pass its new location with --model (fingerprint "
            f"{manifest.model.fingerprint[:12]})."
        )
    found = fingerprint(model_dir)
    if found != manifest.model.fingerprint:
        raise ModelMismatch(
            f"{directory} was built with model {manifest.model.fingerprint[:12]} ({manifest.model.path}), "
            f"but {model_dir} is model {found[:12]}. Search with the model that built the index, "
            "or re-index into a new directory with this one."
        )
