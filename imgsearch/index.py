"""Index: the public library object. Every CLI command is a thin wrapper over one of its calls.

Index opens, creates and closes an index, writes to it (add), and takes the public calls:
each checks its arguments (search/arguments.py) and hands them to the Searcher
(search/session.py), which owns the snapshot, the model and every read of the store.

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
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from imgsearch.ground.errors import ImgsearchError, IndexExists, InvalidQuery, ModelMismatch, ModelNotFound
from imgsearch.ground.locations import default_index_dir
from imgsearch.indexer.run import Embedder, ProgressCallback, StopCheck, run_indexing
from imgsearch.model.calibration import Calibration, read_calibration
from imgsearch.model.config import read_model_config
from imgsearch.model.device import resolve_device, runs_on_cpu
from imgsearch.model.model_files import answers_to_fingerprint, fingerprint
from imgsearch.model.packaged import (
    PACKAGED_MODELS,
    default_model_dir,
    packaged_model_dir,
    packaged_model_with_fingerprint,
)
from imgsearch.search.arguments import check_image_item, check_indexed_image, check_rerank, check_search
from imgsearch.search.defaults import DEFAULT_CANDIDATES, RerankPrecision
from imgsearch.search.filters import DateLike, SearchFilters
from imgsearch.search.query_model import QueryModel
from imgsearch.search.searcher import SearchPage, SearchResult
from imgsearch.search.session import Searcher
from imgsearch.storage.lock import LOCK_NAME, VECTORS_LOCK_NAME, WriterLock
from imgsearch.storage.manifest import MANIFEST_NAME, Manifest, ModelRecord, read_index_manifest
from imgsearch.storage.store import SCHEMA_VERSION, Store
from imgsearch.storage.stored_index import DB_NAME, VECTORS_NAME, StoredIndex
from imgsearch.storage.vectors import VectorIndex

# torch, transformers and the modules that use them are imported where they are needed: a
# text search on the CPU runs on the numpy query runtime (search/query_model.py) without them.
if TYPE_CHECKING:
    import torch

    from imgsearch.indexer.pipeline import AddSummary
    from imgsearch.model.alignment import AlignmentModel
    from imgsearch.model.image_encoder import ImageEncoder
    from imgsearch.search.explain import Explanation
    from imgsearch.search.queries import ImageInput

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
        self._device = device  # as given; resolved (torch imported) when a torch model is loaded
        self.lock = WriterLock(directory)
        self.data = StoredIndex(directory, manifest.embed_dim, manifest.num_regions, self.lock)
        self._image_encoder: ImageEncoder | None = None
        # Searching, and every read of the store for it: search/session.py.
        self._searcher = Searcher(self.data, self._load_model, self._load_query_model, self._load_calibration)
        # Set by create(): the folders it made (deepest first), for discard_if_empty().
        self._created: list[Path] | None = None

    # ---- opening -----------------------------------------------------------

    @classmethod
    def create(
        cls, directory: str | os.PathLike, model: str | os.PathLike | None = None, device: str = "auto"
    ) -> Index:
        """Create an empty index in `directory` for the alignment model in `model`
        (by default the photo model packaged with imgsearch: imgsearch.model.packaged.default_model_dir())."""
        directory = _user_path(directory)
        if (directory / MANIFEST_NAME).exists():
            raise IndexExists(f"{directory} already holds an index; open it instead, or pick a new directory.")
        if directory.exists() and not directory.is_dir():
            raise IndexExists(f"{directory} exists and is not a directory; pick another --index path.")
        model_dir = (default_model_dir() if model is None else _model_path(model)).resolve()
        config = read_model_config(model_dir)
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            embed_dim=config.embed_dim,
            num_regions=config.backbone.grid_side**2,
            model=ModelRecord(
                fingerprint=fingerprint(model_dir),
                path=str(model_dir),
                backbone=config.describe_backbone(),
                text_encoder=config.text.name_or_path,
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
    def open(cls, directory: str | os.PathLike, model: str | os.PathLike | None = None, device: str = "auto") -> Index:
        """Open an existing index. `model` defaults to the model recorded in the manifest;
        a model other than the one that built the index is refused. A given `model` is
        checked now; the recorded one when first used, so info() and failures() work
        without it."""
        directory = _user_path(directory)
        manifest = read_index_manifest(directory)
        if model is None:
            return cls(directory, manifest, Path(manifest.model.path), device, model_checked=False)
        model_dir = _model_path(model).resolve()
        _check_model(directory, manifest, model_dir)
        return cls(directory, manifest, model_dir, device)

    @classmethod
    def open_or_create(
        cls, directory: str | os.PathLike, model: str | os.PathLike | None = None, device: str = "auto"
    ) -> Index:
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
        """The SQLite store behind this index, for tests and tools that inspect it. The command
        line and the server use the calls of this class instead."""
        return self.data.store

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS index of the snapshot, for tests and tools that inspect it (as `store`)."""
        return self.data.vectors

    def refresh(self) -> None:
        """See everything committed since this Index was opened (or last refreshed)."""
        self._searcher.refresh()

    def refresh_if_changed(self) -> bool:
        """See what another process (an `imgsearch index` run) committed since the last look,
        if anything: cheap when nothing changed (two stat calls), and when something did, the
        FAISS index in memory takes the new and removed ids instead of being reloaded. Safe to
        call from any thread while others search. Returns whether the snapshot moved."""
        return self._searcher.refresh_if_changed()

    def rebuild_vectors(self) -> VectorIndex:
        """Rebuild vectors.faiss from the SQLite store and save it."""
        with self.lock:
            return self.data.rebuild_and_write()

    # ---- models, loaded on first use -----------------------------------------

    def _require_model(self) -> None:
        if not self._model_checked:
            self.model_dir = _recorded_model_dir(self.manifest)
            _check_model(self.directory, self.manifest, self.model_dir)
            self._model_checked = True

    @cached_property
    def device(self) -> torch.device:
        """The torch device this index's models run on ("auto": CUDA when present)."""
        return resolve_device(self._device)

    def _load_model(self) -> AlignmentModel:
        from imgsearch.model.alignment import AlignmentModel

        self._require_model()
        return AlignmentModel.from_pretrained(self.model_dir, device=self.device)

    def _load_calibration(self) -> Calibration | None:
        """The model's relevance scale (calibration.json beside it), or None when it has none."""
        self._require_model()
        return read_calibration(self.model_dir)

    def _load_query_model(self) -> QueryModel | None:
        """The numpy query runtime for text queries when the index's device is the CPU and the
        model can run on it (model/numpy_query.py), else None: the torch model serves them."""
        if not runs_on_cpu(self._device):
            return None
        from imgsearch.model.numpy_query import NumpyQueryModel, RuntimeUnsupported

        self._require_model()
        try:
            return NumpyQueryModel.from_pretrained(self.model_dir)
        except RuntimeUnsupported as exc:
            log.info("text queries run on torch: %s", exc)
            return None

    @property
    def model(self) -> AlignmentModel:
        """The alignment model (the Searcher's), loaded on first use."""
        return self._searcher.model

    @property
    def image_encoder(self) -> ImageEncoder:
        from imgsearch.model.image_encoder import ImageEncoder

        model = self._searcher.loaded_model
        if model is not None:
            return model.image
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
        ray: bool | str | None = None,
        shard_size: int = 256,
        embedder: Embedder | None = None,
    ) -> AddSummary:
        """Index image files and folders (recursively), incrementally.

        New and changed files are read (size and mtime first, then the content
        hash); content already stored is not embedded again (copies, moves and
        renames keep their vectors); unreadable files are recorded with the reason.
        With `prune`, stored files under the given folders that no longer exist
        are removed (files under other folders are kept). `should_stop` is asked
        after each batch; when it says True the run ends there, keeping all done.
        Raises IndexLocked if another process is writing to this index.

        `ray`: None or False embeds here; True on Ray (the cluster this process is connected
        to, else a new local one), a str on the Ray cluster at that address, in shards of
        `shard_size` files (imgsearch.indexer.ray_engine; needs `pip install 'imgsearch-offline[ray]'`).
        `embedder`: embeds the files instead (imgsearch.indexer.run.Embedder: a
        pipeline.LocalEmbedder or ray_engine.RayEmbedder made with other options, or one of
        the caller's own); `batch_size`, `workers`, `ray` and `shard_size` are then its business.
        """
        if embedder is not None and ray not in (None, False):
            raise ValueError("give either an embedder or ray, not both")
        with self.lock:  # first, so that a second writer is told at once
            if embedder is None:
                embedder = self._embedder(ray, batch_size, workers, shard_size)
            self.data.open_snapshot_locked()
            self.store.end_snapshot()
            try:
                summary = run_indexing(
                    paths, self.store, self.vectors, embedder, progress=progress, prune=prune, should_stop=should_stop
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

    def _embedder(self, ray: bool | str | None, batch_size: int, workers: int | None, shard_size: int) -> Embedder:
        """add()'s embedder: this index's encoder here, or Ray actors loading its model directory."""
        if ray is None or ray is False:
            from imgsearch.indexer.pipeline import LocalEmbedder

            self._require_model()  # the model that made the index, checked now; loaded if there is work
            return LocalEmbedder(load_encoder=lambda: self.image_encoder, batch_size=batch_size, workers=workers)
        from imgsearch.indexer.ray_engine import RayEmbedder, require_ray

        require_ray()
        self._require_model()
        address = None if ray is True else str(ray)
        return RayEmbedder(self.model_dir, address=address, shard_size=shard_size, batch_size=batch_size)

    def search(self, query: str | None = None, k: int = 10, **options) -> list[SearchResult]:
        """Top-k images for exactly one of: a text `query`, an `image` (a path, the bytes of an
        image file, or a PIL image) or `like` (an indexed image's id or path; "more like this",
        the image itself and its byte-identical copies left out). Text queries: FAISS
        top-`candidates`, then re-ranking by the scorer; image queries rank by cosine in the
        shared space alone. The options, and the filters (`under`, `taken_after`,
        `taken_before`, `min_score`) and paging (`offset`): see search_page, which this returns the results of."""
        return self.search_page(query, k, **options).results

    def search_page(
        self,
        query: str | None = None,
        k: int = 10,
        *,
        image: ImageInput | None = None,
        like: int | str | os.PathLike | None = None,
        under: str | os.PathLike | None = None,
        taken_after: DateLike | None = None,
        taken_before: DateLike | None = None,
        min_score: float | None = None,
        offset: int = 0,
        candidates: int = DEFAULT_CANDIDATES,
        rerank: bool = True,
        rerank_precision: RerankPrecision = "float32",
        collapse_duplicates: bool = True,
    ) -> SearchPage:
        """One page of search results (see search), with the offset of the next page, whether the
        results were re-ranked, and per-stage timings.

        Filters: `under` a folder; `taken_after`/`taken_before` dates (inclusive; EXIF
        DateTimeOriginal, else the file's mtime); `min_score` the least relevance (0-1: the estimated
        probability that the photo matches, model/calibration.py; the model needs a calibration).
        `offset` skips that many results (the order is the same on every page).
        `collapse_duplicates`: a photo's near-duplicates (the same photo at another size, re-saved
        or lightly edited: global vectors within search.defaults.NEAR_DUPLICATE_COSINE) ranked
        below it fold into it (its `near_duplicates`) instead of filling places of their own.
        "More like this" (`like`) never returns the photo itself or a near-duplicate of it.
        rerank_precision: see imgsearch.search.searcher.search_page. Raises InvalidQuery for
        arguments it cannot use (imgsearch.search.arguments.check_search)."""
        arguments = check_search(
            query,
            k,
            image=image,
            like=like,
            under=under,
            taken_after=taken_after,
            taken_before=taken_before,
            min_score=min_score,
            offset=offset,
            candidates=candidates,
            rerank=rerank,
            rerank_precision=rerank_precision,
            collapse_duplicates=collapse_duplicates,
        )
        return self._searcher.search_page(arguments)

    def rerank(
        self,
        query: str,
        items: Iterable[int | str | os.PathLike | ImageInput],
        *,
        rerank_precision: RerankPrecision = "float32",
    ) -> list[SearchResult]:
        """Order the given images for a text query by the scorer (the re-ranker), as search's
        re-rank stage orders its candidates. Items are indexed image ids, or paths: an indexed
        file is scored from its stored regions, any other image (a path, the bytes of an image
        file, a PIL image) is encoded now (its result has id None; path "" unless given).
        Raises ImageNotFound for an id the index does not hold, InvalidImage for a file that
        is not a usable image."""
        return self._searcher.rerank(query, check_rerank(items, rerank_precision), rerank_precision)

    def explain(self, query: str, item: int | str | os.PathLike | ImageInput) -> Explanation:
        """Why `item` (an indexed id or path, or another image: a path, bytes, a PIL image) matches
        the text `query`: per word, the weight of each region of the image
        (imgsearch.search.explain; with a classifier model, from the picture itself, read again
        from its file, else from the stored regions)."""
        check_image_item(item)
        return self._searcher.explain(query, item)

    def original_path(self, image_id: int) -> Path:
        """The file of indexed image `image_id`, for serving it: only an image that decoded, only
        a regular file, and only when its real path (links resolved) lies inside a file or folder
        an `index` run was given. Raises ImageNotFound otherwise."""
        return self._searcher.original_path(image_id)

    def image_info(self, image_id: int) -> dict:
        """What the index holds of one image: id, path, width, height, size, sha256, taken_at,
        file_date and labels (as in search results). Raises ImageNotFound."""
        check_indexed_image(image_id)
        return self._searcher.image_info(image_id)

    def browse(
        self,
        k: int = 24,
        offset: int = 0,
        *,
        under: str | os.PathLike | None = None,
        taken_after: DateLike | None = None,
        taken_before: DateLike | None = None,
    ) -> tuple[list[dict], int | None]:
        """The library, newest first, as photo apps open on it: `k` images from `offset`, ordered
        by date (taken, else the file's date), then the image indexed last; filtered as search
        filters. Returns their image_info and the offset of the next page (None on the last).
        Needs no model. Raises InvalidQuery."""
        if k < 1:
            raise InvalidQuery(f"k must be at least 1 (got {k}).")
        if offset < 0:
            raise InvalidQuery(f"offset must be 0 or more (got {offset}).")
        return self._searcher.browse(k, offset, SearchFilters.parse(under, taken_after, taken_before))

    def info(self) -> dict:
        files = {
            name: (self.directory / name).stat().st_size
            for name in (DB_NAME, VECTORS_NAME, MANIFEST_NAME)
            if (self.directory / name).exists()
        }
        return {
            "directory": str(self.directory),
            **self._searcher.contents(),
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
            "relevance": self._relevance_info(),
        }

    def _relevance_info(self) -> dict | None:
        """What info says of the model's relevance scale: how it was fitted, the good-match
        threshold and the near-duplicate cosine; None when the model has none (or is not there)."""
        try:
            calibration = read_calibration(self.model_dir)
        except ImgsearchError:
            return None
        if calibration is None:
            return None
        return {
            "good_match": calibration.good,
            "near_duplicate_cosine": calibration.near_duplicate_cosine,
            "fitted_on": calibration.fitted_on,
        }

    def image_count(self) -> int:
        """How many images the index holds that decoded: what a search can find."""
        return self._searcher.image_count()

    def failures(self) -> list[dict]:
        return self._searcher.failures()

    def close(self) -> None:
        self.data.close()
        self.lock.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _model_path(model: str | os.PathLike) -> Path:
    """A model as a user names it: a packaged model's name ("photo", "fast") or a directory."""
    if isinstance(model, str) and model in PACKAGED_MODELS and not Path(model).exists():
        return packaged_model_dir(model)
    return _user_path(model)


def _recorded_model_dir(manifest: Manifest) -> Path:
    """The model an index records. An index made with a packaged model that a later release
    replaced (or moved) finds it among the packaged models by fingerprint; otherwise the
    recorded path, which _check_model then holds to the fingerprint. A model answers to its
    fingerprint and to those it had in an earlier layout (checkpoint.answers_to_fingerprint)."""
    recorded = Path(manifest.model.path)
    if recorded.exists() and answers_to_fingerprint(recorded, manifest.model.fingerprint):
        return recorded
    return packaged_model_with_fingerprint(manifest.model.fingerprint) or recorded


def _user_path(path: str | os.PathLike) -> Path:
    """A path as a user wrote it, "~" expanded as a shell would."""
    return Path(os.path.expanduser(os.fspath(path)))


def _check_model(directory: Path, manifest: Manifest, model_dir: Path) -> None:
    """Raise unless `model_dir` holds the exact model that built the index."""
    if not model_dir.exists():
        raise ModelNotFound(
            f"the model that built this index is no longer at {model_dir}; "
            "pass its new location with --model (fingerprint "
            f"{manifest.model.fingerprint[:12]})."
        )
    if not answers_to_fingerprint(model_dir, manifest.model.fingerprint):
        found = fingerprint(model_dir)
        raise ModelMismatch(
            f"{directory} was built with model {manifest.model.fingerprint[:12]} ({manifest.model.path}), "
            f"but {model_dir} is model {found[:12]}. Search with the model that built the index, "
            "or re-index into a new directory with this one."
        )
