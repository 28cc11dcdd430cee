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
from collections.abc import Iterable
from pathlib import Path


from imgsearch.model.packaged import default_model_dir
from imgsearch.model.checkpoint import fingerprint, read_config
from imgsearch.model.device import resolve_device
from imgsearch.errors import IndexExists, IndexNotFound, ModelMismatch, ModelNotFound
from imgsearch.indexer.lock import LOCK_NAME, VECTORS_LOCK_NAME, WriterLock
from imgsearch.indexer.stored_index import DB_NAME, VECTORS_NAME, StoredIndex
from imgsearch.locations import default_index_dir
from imgsearch.model.image_encoder import ImageEncoder
from imgsearch.indexer.manifest import MANIFEST_NAME, Manifest, ModelRecord
from imgsearch.indexer.pipeline import AddSummary, ProgressCallback, StopCheck, index_files
from imgsearch.indexer.store import SCHEMA_VERSION, Store
from imgsearch.indexer.vectors import VectorIndex
from imgsearch.model.alignment import AlignmentConfig, AlignmentModel
from imgsearch.search.searcher import DEFAULT_CANDIDATES, RerankPrecision, SearchResult, search

__all__ = ["Index", "DB_NAME", "VECTORS_NAME", "default_index_dir"]

log = logging.getLogger(__name__)


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
        self.lock = WriterLock(directory)
        self.data = StoredIndex(directory, manifest.embed_dim, manifest.num_regions, self.lock)
        self._image_encoder: ImageEncoder | None = None
        self._model: AlignmentModel | None = None
        # Set by create(): the folders it made (deepest first), for discard_if_empty().
        self._created: list[Path] | None = None

    # ---- opening -----------------------------------------------------------

    @classmethod
    def create(
        cls, directory: str | os.PathLike, model: str | os.PathLike | None = None, device: str = "auto"
    ) -> "Index":
        """Create an empty index in `directory` for the alignment model in `model`
        (by default the photo model packaged with imgsearch: imgsearch.model.packaged.default_model_dir())."""
        directory = _user_path(directory)
        if (directory / MANIFEST_NAME).exists():
            raise IndexExists(f"{directory} already holds an index; open it instead, or pick a new directory.")
        if directory.exists() and not directory.is_dir():
            raise IndexExists(f"{directory} exists and is not a directory; pick another --index path.")
        model_dir = (default_model_dir() if model is None else _user_path(model)).resolve()
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
        made_folders = [folder for folder in (directory, *directory.parents) if not folder.exists()]
        directory.mkdir(parents=True, exist_ok=True)
        with WriterLock(directory):
            if (directory / MANIFEST_NAME).exists():  # another process created it meanwhile
                raise IndexExists(f"{directory} already holds an index; open it instead, or pick a new directory.")
            Store(directory / DB_NAME, manifest.embed_dim, manifest.num_regions).close()
            VectorIndex.empty(manifest.embed_dim).save(directory / VECTORS_NAME)
            manifest.write(directory)  # written last: its presence means the index is complete
        index = cls(directory, manifest, model_dir, device)
        index._created = made_folders
        return index

    @classmethod
    def open(
        cls, directory: str | os.PathLike, model: str | os.PathLike | None = None, device: str = "auto"
    ) -> "Index":
        """Open an existing index. `model` defaults to the model recorded in the manifest;
        a model other than the one that built the index is refused. A given `model` is
        checked now; the recorded one when first used, so info() and failures() work
        without it."""
        directory = _user_path(directory)
        try:
            manifest = Manifest.read(directory)
        except FileNotFoundError:
            where = "" if directory == default_index_dir() else f" --index {directory}"
            raise IndexNotFound(
                f"no index at {directory}; create one with `imgsearch index PHOTOS{where}`."
            ) from None
        if model is None:
            return cls(directory, manifest, Path(manifest.model.path), device, model_checked=False)
        model_dir = _user_path(model).resolve()
        _check_model(directory, manifest, model_dir)
        return cls(directory, manifest, model_dir, device)

    @classmethod
    def open_or_create(
        cls, directory: str | os.PathLike, model: str | os.PathLike | None = None, device: str = "auto"
    ) -> "Index":
        """Open the index in `directory` (with its recorded model unless `model` is given), or
        create it with `model`, by default the packaged photo model."""
        if (_user_path(directory) / MANIFEST_NAME).exists():
            return cls.open(directory, model, device)
        return cls.create(directory, model, device)

    def discard_if_empty(self) -> bool:
        """Remove an index that create() made (in this object) and that holds nothing yet: no
        image, no failure, no stored content. Its files go, and the folders create() made. So a
        first `index` run that fails (a bad path, a bad model) leaves nothing behind. Returns
        whether it was removed; an index that holds anything, or was opened, is never touched."""
        if self._created is None:
            return False
        with self.lock:
            self.store.begin_snapshot()
            if any(self.store.counts().values()):
                return False
            self.data.close()
            (self.directory / MANIFEST_NAME).unlink()  # first: without it, no index is there
            for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", VECTORS_NAME, VECTORS_LOCK_NAME):
                (self.directory / name).unlink(missing_ok=True)
        self.lock.close()
        (self.directory / LOCK_NAME).unlink(missing_ok=True)
        for folder in self._created:  # deepest first; stops at the first that is not empty
            try:
                folder.rmdir()
            except OSError:
                break
        return True

    @property
    def store(self) -> Store:
        return self.data.store

    @property
    def vectors(self) -> VectorIndex:
        return self.data.vectors

    def refresh(self) -> None:
        """See everything committed since this Index was opened (or last refreshed)."""
        self.data.open_snapshot()

    def rebuild_vectors(self) -> VectorIndex:
        """Rebuild vectors.faiss from the SQLite store and save it."""
        with self.lock:
            return self.data.rebuild_and_write()

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
            self.data.open_snapshot_locked()
            self.store.end_snapshot()
            try:
                summary = index_files(
                    paths, self.store, self.vectors, encoder, batch_size=batch_size, workers=workers,
                    progress=progress, prune=prune, should_stop=should_stop,
                )
                if not self.vectors.fits():  # grew past a size step: exact --> IVF, or more IVF lists
                    log.info("rebuilding %s for %d images", VECTORS_NAME, len(self.vectors))
                    self.data.rebuild()
                self.data.save_vectors()
            finally:
                # Back to reading a snapshot; after an error (a batch rolled back after its
                # vectors were added), this also brings the vectors back in step.
                self.data.open_snapshot_locked()
        return summary

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
        self.data.close()
        self.lock.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _user_path(path: str | os.PathLike) -> Path:
    """A path as a user wrote it, "~" expanded as a shell would."""
    return Path(os.path.expanduser(os.fspath(path)))


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
