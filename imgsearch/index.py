"""Index: the public library object. Every CLI command is a thin wrapper over one of its calls.

An index directory holds:
- index.db      SQLite, the truth: image rows, region features, global vectors
- vectors.faiss FAISS index of the global vectors, derived; rebuilt from
                index.db whenever it is missing or out of step
- manifest.json schema version, dims, metric and the model that made the vectors
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from indexer.checkpoint import fingerprint, read_config
from indexer.device import resolve_device
from indexer.errors import IndexExists, IndexNotFound, ModelMismatch, ModelNotFound
from indexer.image_encoder import ImageEncoder
from indexer.manifest import MANIFEST_NAME, Manifest, ModelRecord
from indexer.pipeline import AddSummary, ProgressCallback, index_files
from indexer.store import SCHEMA_VERSION, Store
from indexer.vectors import VectorIndex
from search.alignment import AlignmentConfig, AlignmentModel
from search.searcher import DEFAULT_CANDIDATES, RerankPrecision, SearchResult, search

__all__ = ["Index", "DB_NAME", "VECTORS_NAME"]

DB_NAME = "index.db"
VECTORS_NAME = "vectors.faiss"

log = logging.getLogger("imgsearch")


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
        self.vectors = self._load_vectors()
        self._image_encoder: ImageEncoder | None = None
        self._model: AlignmentModel | None = None

    # ---- opening -----------------------------------------------------------

    @classmethod
    def create(cls, directory: str | os.PathLike, model: str | os.PathLike, device: str = "auto") -> "Index":
        """Create an empty index in `directory` for the alignment model in `model`."""
        directory = Path(directory)
        if (directory / MANIFEST_NAME).exists():
            raise IndexExists(f"{directory} already holds an index; open it instead, or pick a new directory.")
        if directory.exists() and not directory.is_dir():
            raise IndexExists(f"{directory} exists and is not a directory; pick another --index path.")
        model_dir = Path(model).resolve()
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
            raise IndexNotFound(
                f"no index at {directory}; create one with `imgsearch index PHOTOS --index {directory} --model MODEL`."
            ) from None
        if model is None:
            return cls(directory, manifest, Path(manifest.model.path), device, model_checked=False)
        model_dir = Path(model).resolve()
        _check_model(directory, manifest, model_dir)
        return cls(directory, manifest, model_dir, device)

    @classmethod
    def open_or_create(cls, directory: str | os.PathLike, model: str | os.PathLike | None, device: str = "auto") -> "Index":
        if (Path(directory) / MANIFEST_NAME).exists():
            return cls.open(directory, model, device)
        if model is None:
            raise ModelNotFound(
                f"{directory} holds no index yet, so a model is needed to create it: pass --model DIR "
                "(the repository ships data/demo-model) or set IMGSEARCH_MODEL."
            )
        return cls.create(directory, model, device)

    def _load_vectors(self) -> VectorIndex:
        path = self.directory / VECTORS_NAME
        expected = self.store.ok_ids()
        try:
            vectors = VectorIndex.load(path)
            if vectors.dim == self.manifest.embed_dim and np.array_equal(vectors.ids(), expected):
                return vectors
            reason = "out of step with index.db"
        except Exception as exc:  # missing or unreadable: it is derived, so rebuild
            reason = f"unreadable ({type(exc).__name__})" if path.exists() else "missing"
        log.warning("%s is %s; rebuilding it from index.db (%d images)", path, reason, len(expected))
        return self.rebuild_vectors()

    def rebuild_vectors(self) -> VectorIndex:
        """Rebuild vectors.faiss from the SQLite store and save it."""
        ids, vectors = self.store.global_vectors()
        index = VectorIndex.build(ids, vectors, self.manifest.embed_dim)
        index.save(self.directory / VECTORS_NAME)
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
    ) -> AddSummary:
        """Index image files and folders (recursively). Unchanged files are skipped;
        unreadable ones are recorded with the reason."""
        summary = index_files(
            paths, self.store, self.vectors, self.image_encoder,
            batch_size=batch_size, workers=workers, progress=progress,
        )
        if self.vectors.fits():
            self.vectors.save(self.directory / VECTORS_NAME)
        else:  # grew past a size threshold: exact --> IVF, or more IVF lists
            log.info("rebuilding %s for %d images", VECTORS_NAME, len(self.vectors))
            self.rebuild_vectors()
        return summary

    def search(
        self, text: str, k: int = 10, *, candidates: int = DEFAULT_CANDIDATES, rerank: bool = True,
        rerank_precision: RerankPrecision = "float32",
    ) -> list[SearchResult]:
        """Top-k images for a text query: FAISS top-`candidates`, then cross-attention re-ranking
        (rerank_precision: see search.searcher.search)."""
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
            "distinct_contents": counts["distinct_contents"],
            "vectors": len(self.vectors),
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

    def failures(self) -> list[dict]:
        return [{"path": f.path, "error": f.error} for f in self.store.failures()]

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
