"""The read side's object, the Searcher: searching one open index.

It owns what a search reads: the model (loaded on first use), the snapshot (a SQLite read
transaction and the FAISS index of exactly the images in it, kept by the index's StoredIndex)
and every read of the store. Text and image searches, "more like this", filters and paging go
through the search run (search/searcher.py); re-ranking given images, explaining a match and
the lookups of one image are here. imgsearch.index.Index holds one Searcher and hands it
arguments it has checked (search/arguments.py); nothing here checks them again.

Thread-safe: a server's request threads search side by side on one snapshot; refresh() and
refresh_if_changed() move it, alone (ground/rwlock.py).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

import numpy as np

from imgsearch.ground.errors import ImageNotFound, InvalidImage, InvalidQuery
from imgsearch.ground.paths import path_to_text, text_to_path
from imgsearch.ground.rwlock import ReadWriteLock
from imgsearch.images.decode import ImageRecord, file_date, record_values
from imgsearch.model.calibration import Calibration
from imgsearch.search.arguments import SearchArguments
from imgsearch.search.defaults import RerankPrecision
from imgsearch.search.filters import SearchFilters
from imgsearch.search.language import english_warning
from imgsearch.search.query_model import QueryEmbedding, QueryModel, TorchQueryModel
from imgsearch.search.searcher import (
    SearchPage,
    SearchResult,
    collapse_near_duplicates,
    encode_text_query,
    score_pool,
    search_page,
    shown_relevance,
)
from imgsearch.storage.store import Store, StoredImage
from imgsearch.storage.stored_index import DB_NAME, StoredIndex
from imgsearch.storage.vectors import VectorIndex

# The torch side (the AlignmentModel, image queries, explanations) is imported where it is
# used: a text search on the CPU runs on the numpy query runtime and never loads torch.
if TYPE_CHECKING:
    from PIL import Image

    from imgsearch.model.alignment import AlignmentModel
    from imgsearch.search.explain import Explanation
    from imgsearch.search.queries import ImageInput

__all__ = ["Searcher"]

log = logging.getLogger(__name__)

ImageItem: TypeAlias = "int | str | os.PathLike | ImageInput"  # an indexed image's id or path, or another image


class Searcher:
    def __init__(
        self,
        data: StoredIndex,
        load_model: Callable[[], AlignmentModel],
        load_query_model: Callable[[], QueryModel | None] = lambda: None,
        load_calibration: Callable[[], Calibration | None] = lambda: None,
    ) -> None:
        """Search `data`, with the model `load_model()` gives when a search first needs it, and
        for text queries the lighter `load_query_model()` (search/query_model.py; None: none
        here, the model serves them) while the model is not loaded. `load_calibration()` gives
        the model's relevance scale (model/calibration.py; None: the model has none), read once."""
        self._data = data
        self._load_model = load_model
        self._load_query_model = load_query_model
        self._load_calibration = load_calibration
        self._calibration: Calibration | None = None
        self._calibration_read = False
        self._model: AlignmentModel | None = None
        self._light: QueryModel | None = None  # load_query_model()'s, once asked
        self._light_asked = False
        self._model_lock = threading.Lock()  # one load of each, whichever thread asks first
        # Reads (searches) share the snapshot; refresh() moves it, alone (threads of one process).
        self._snapshot_lock = ReadWriteLock()
        self._seen_files = self._store_files_signature()

    @property
    def _store(self) -> Store:
        return self._data.store

    @property
    def _vectors(self) -> VectorIndex:
        return self._data.vectors  # replaced by a rebuild: read it each time

    # ---- the model ---------------------------------------------------------------

    @property
    def model(self) -> AlignmentModel:
        """The alignment model, loaded on first use."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    self._model = self._load_model()
        return self._model

    @property
    def calibration(self) -> Calibration | None:
        """The model's relevance scale, or None when it has none (read on first use)."""
        if not self._calibration_read:
            with self._model_lock:
                if not self._calibration_read:
                    self._calibration, self._calibration_read = self._load_calibration(), True
        return self._calibration

    @property
    def loaded_model(self) -> AlignmentModel | None:
        """The model if a search has loaded it, else None (loads nothing)."""
        return self._model

    def query_model(self, precision: RerankPrecision = "float32") -> QueryModel:
        """What ranks a text query: the loaded model when there is one (or when `precision` asks
        for bfloat16, which only torch computes), else the light query model when the index has
        one, else the model, loaded now."""
        if self._model is None and precision != "bfloat16":
            with self._model_lock:
                if not self._light_asked:
                    self._light, self._light_asked = self._load_query_model(), True
            if self._light is not None:
                return self._light
        return TorchQueryModel(self.model)

    # ---- the snapshot ------------------------------------------------------------

    def refresh(self) -> None:
        """See everything committed since the snapshot was taken."""
        with self._snapshot_lock.writing():
            self._seen_files = self._store_files_signature()
            self._data.open_snapshot()

    def refresh_if_changed(self) -> bool:
        """See what another process committed since the last look, if anything (see
        Index.refresh_if_changed). Returns whether the snapshot moved."""
        if self._store_files_signature() == self._seen_files:
            return False
        with self._snapshot_lock.writing():
            self._seen_files = self._store_files_signature()  # before the snapshot: a later commit is seen next time
            added, removed = self._data.catch_up()
        log.info("index changed on disk: %d images added, %d removed", added, removed)
        return True

    def _store_files_signature(self) -> tuple:
        """What changes on disk with every commit to index.db (WAL mode: the -wal file grows,
        or a checkpoint rewrites the database file)."""
        signature: list[tuple[int, int, int] | None] = []
        for name in (DB_NAME, DB_NAME + "-wal"):
            try:
                st = os.stat(self._data.directory / name)
                signature.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                signature.append(None)
        return tuple(signature)

    # ---- searching -----------------------------------------------------------------

    def search_page(self, arguments: SearchArguments) -> SearchPage:
        """One page of results for checked search arguments (Index.search_page)."""
        calibration = self.calibration
        if arguments.filters.min_score is not None and calibration is None:
            raise InvalidQuery(
                "min_score filters on relevance, and this index's model has no relevance calibration "
                "(calibration.json beside it; `imgsearch calibrate` makes one from captioned images)."
            )
        if arguments.kind == "image":
            from imgsearch.search.queries import encode_image, load_image

            image_encoder = self.model.image
        model = self.query_model(arguments.rerank_precision)
        with self._snapshot_lock.reading():
            started = time.perf_counter()
            exclude_ids: list[int] = []
            encoded: QueryEmbedding | np.ndarray
            # arguments.value, checked at the boundary (search/arguments.py), is what its kind says
            if arguments.kind == "query":
                encoded = encode_text_query(model, cast(str, arguments.value))
            elif arguments.kind == "image":
                encoded = encode_image(image_encoder, load_image(cast("ImageInput", arguments.value))).global_
            else:
                like_id = self._indexed_id(cast("int | str | os.PathLike", arguments.value))
                encoded = self._store.global_vectors_of([like_id])[0]
                exclude_ids = [like_id, *self._store.copies_of(like_id)]  # byte-identical files too
            encode_ms = (time.perf_counter() - started) * 1000
            page = search_page(
                model,
                self._store,
                self._vectors,
                encoded,
                k=arguments.k,
                offset=arguments.offset,
                candidates=arguments.candidates,
                rerank=arguments.rerank,
                filters=arguments.filters,
                exclude_ids=exclude_ids,
                rerank_precision=arguments.rerank_precision,
                encode_ms=encode_ms,
                calibration=calibration,
                query_text=cast(str, arguments.value) if arguments.kind == "query" else None,
                collapse_duplicates=arguments.collapse_duplicates,
                drop_copies_of_query=arguments.kind == "like",  # never a copy of the photo itself
            )
        if arguments.kind == "query" and (warning := english_warning(cast(str, arguments.value))):
            page.warnings.append(warning)
        return page

    def rerank(self, query: str, items: list[ImageItem], rerank_precision: RerankPrecision) -> list[SearchResult]:
        """The given images (at least one) ordered for a text query by the scorer (Index.rerank)."""
        model = self.query_model(rerank_precision)
        with self._snapshot_lock.reading():
            text = encode_text_query(model, query)
            found = [self._image_features(item) for item in items]
            vector = text.global_  # (d,)
            globals_ = np.stack([f.global_ for f in found])  # (n, d)
            regions = np.stack([f.regions for f in found])  # (n, R, d) float16
            scores = score_pool(
                model, text, globals_ @ vector, regions, [f.labels for f in found], rerank_precision, globals_
            )
        calibration = self.calibration
        relevance = None if calibration is None else shown_relevance(calibration.relevance("text", scores.final, query))
        order = np.argsort(-scores.final, kind="stable")
        first_rank = np.empty(len(found), np.int64)
        first_rank[np.argsort(-scores.first_stage, kind="stable")] = np.arange(1, len(found) + 1)
        assert scores.reranked is not None  # regions were given
        return [
            SearchResult.of(
                found[i].image,
                found[i].id,
                found[i].labels,
                rank=rank,
                relevance=None if relevance is None else float(relevance[i]),
                score=float(scores.final[i]),
                first_stage_score=float(scores.first_stage[i]),
                rerank_score=float(scores.reranked[i]),
                first_stage_rank=int(first_rank[i]),
                zero_shot_score=None if scores.zero_shot is None else float(scores.zero_shot[i]),
            )
            for rank, i in enumerate(order.tolist(), start=1)
        ]

    def explain(self, query: str, item: ImageItem) -> Explanation:
        """Why `item` matches the text `query`, per word and region (Index.explain)."""
        from imgsearch.search.explain import Explanation, explain_regions

        model = self.model
        with self._snapshot_lock.reading():
            text = encode_text_query(TorchQueryModel(model), query)
            features = self._image_features(item)
            picture = features.picture
            if picture is None and features.id is not None and model.config.image_labels:
                picture = self._indexed_picture(features.id)
        side = int(round(len(features.regions) ** 0.5))
        method, words = explain_regions(model, text, query, features.regions, picture)
        return Explanation(query, words, (side, side), features.id, features.image.path, method)

    def _indexed_picture(self, image_id: int):
        """The decoded file of an indexed image, or None when it is gone or no longer decodes.
        The caller holds the read lock (taking it again could wait for a refresh waiting for it)."""
        from imgsearch.search.queries import load_image

        try:
            return load_image(_servable_file(image_id, *self._row_and_folders(image_id)))
        except (ImageNotFound, InvalidImage):
            return None

    # ---- one image -------------------------------------------------------------------

    def original_path(self, image_id: int) -> Path:
        """The file of indexed image `image_id`, for serving it (Index.original_path): only an
        image that decoded, only a regular file, and only inside the indexed folders."""
        with self._snapshot_lock.reading():
            row, folders = self._row_and_folders(image_id)
        return _servable_file(image_id, row, folders)

    def _row_and_folders(self, image_id: int) -> tuple[StoredImage | None, list[str]]:
        """Image `image_id`'s row (None if there is none) and the indexed folders; the caller
        holds the read lock."""
        row = self._store.images([image_id]).get(image_id) if isinstance(image_id, int) else None
        return row, self._store.folders()

    def image_info(self, image: int | str | os.PathLike) -> dict:
        """What the index holds of one indexed image (Index.image_info)."""
        with self._snapshot_lock.reading():
            image_id = self._indexed_id(image)
            return self._infos([image_id])[0]

    def browse(self, k: int, offset: int, filters: SearchFilters) -> tuple[list[dict], int | None]:
        """A page of the library, newest first (Index.browse): image_info of each, and the offset
        of the next page (None on the last). A photo's near-duplicates that follow it within the
        page's rows fold into it (its near_duplicates), as search folds them: offsets count rows,
        so a copy that lands on a later page than its photo is shown there."""
        window = 2 * k + 1
        threshold = None if self.calibration is None else self.calibration.near_duplicate_cosine
        with self._snapshot_lock.reading():
            while True:
                ids = np.asarray(
                    self._store.newest_ids(
                        window,
                        offset,
                        under=filters.under,
                        taken_after=filters.taken_after,
                        taken_before=filters.taken_before,
                    ),
                    np.int64,
                )
                kept, folded = collapse_near_duplicates(
                    np.arange(len(ids)), ids, self._store, k + 1, None, None, merge=True, threshold=threshold
                )
                if len(kept) > k or len(ids) < window:
                    break
                window *= 2  # many copies in a row: read further
            page = kept[:k].tolist()
            infos = self._infos(ids[page].tolist())
            copies = self._store.images([int(ids[c]) for p in page for c in folded.get(p, [])])
        for info, position in zip(infos, page):
            info["near_duplicates"] = [
                {"id": int(ids[c]), "path": copies[int(ids[c])].path} for c in folded.get(position, [])
            ]
        return infos, offset + int(kept[k]) if len(kept) > k else None

    def _infos(self, ids: list[int]) -> list[dict]:
        """image_info of stored rows `ids`, in that order."""
        rows, labels = self._store.images(ids), self._store.labels(ids)
        return [
            {
                "id": rows[i].id,
                **record_values(rows[i], shown=True),
                "file_date": file_date(rows[i]),
                "labels": [{"label": name, "score": prob} for name, prob in labels[i]],
            }
            for i in ids
        ]

    def _indexed_id(self, item: int | str | os.PathLike) -> int:
        """An indexed image's id, from its id or its path. Raises ImageNotFound."""
        if isinstance(item, (int, np.integer)):
            row = self._store.images([int(item)]).get(int(item))
        else:
            row = self._store.get(path_to_text(os.path.abspath(os.path.expanduser(os.fspath(item)))))
        if row is None or row.status != "ok":
            raise ImageNotFound(f"{item} is not an image in this index; index it first, or give its id.")
        return row.id

    def _image_features(self, item: ImageItem) -> _ImageFeatures:
        """Global vector, regions and labels of an indexed image (by id or path: from the store),
        or of another image (a path, the bytes of an image file, a PIL image: encoded now)."""
        image_id, path = None, None
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            image_id = self._indexed_id(item)
        elif isinstance(item, (str, os.PathLike)):
            path = Path(os.path.abspath(os.path.expanduser(os.fspath(item))))
            row = self._store.get(path_to_text(path))
            image_id = row.id if row is not None and row.status == "ok" else None
        if image_id is not None:
            return _ImageFeatures(
                image=self._store.images([image_id])[image_id],
                id=image_id,
                global_=self._store.global_vectors_of([image_id])[0],
                regions=self._store.regions([image_id])[0],
                labels=self._store.labels([image_id])[image_id],
            )
        from PIL import Image

        from imgsearch.search.queries import encode_image, load_image

        data = cast("bytes | Image.Image", item)  # when there is no path: an image's bytes or a PIL image
        picture = load_image(data if path is None else path)
        encoded = encode_image(self.model.image, picture)
        size = path.stat().st_size if path is not None else len(data) if not isinstance(data, Image.Image) else None
        image = ImageRecord(
            path="" if path is None else path_to_text(path), width=picture.width, height=picture.height, size=size
        )
        return _ImageFeatures(
            image=image,
            id=None,
            global_=encoded.global_,
            regions=encoded.regions,
            labels=encoded.labels,
            picture=picture,
        )

    # ---- the whole index -------------------------------------------------------------

    def image_count(self) -> int:
        """How many images the index holds that decoded: what a search can find."""
        with self._snapshot_lock.reading():
            return self._store.counts()["ok"]

    def contents(self, top_labels: int = 10) -> dict:
        """What the snapshot holds, for Index.info: images, failures (counted by reason),
        distinct contents, vectors, and the `top_labels` most frequent top-1 labels."""
        with self._snapshot_lock.reading():
            counts = self._store.counts()
            failures = self._store.failures()
            vectors = len(self._vectors)
            labeled, top1 = self._store.top_label_counts(top_labels)
        return {
            "images": counts["ok"],
            "failed": counts["error"],
            "failures_by_reason": _count_reasons(failures),
            "distinct_contents": counts["distinct_contents"],
            "vectors": vectors,
            "labels": {"labeled_images": labeled, "top1": [{"label": name, "images": n} for name, n in top1]},
        }

    def failures(self) -> list[dict]:
        """The files that could not be indexed, with the reason."""
        with self._snapshot_lock.reading():
            return [{"path": f.path, "error": f.error} for f in self._store.failures()]


@dataclass
class _ImageFeatures:
    """What re-ranking and explaining read of one image, indexed (id set) or not (id None)."""

    image: ImageRecord  # the stored row; for another image, what reading it now tells (no sha256, no taken_at)
    id: int | None
    global_: np.ndarray  # (d,) float32
    regions: np.ndarray  # (R, d) float16
    labels: list[tuple[str, float]]
    picture: Image.Image | None = None  # the decoded image, when it was read now (not indexed)


def _servable_file(image_id: int, row: StoredImage | None, folders: list[str]) -> Path:
    """The real path of an indexed image's file if it may be served: an image that decoded, a
    regular file, inside one of the indexed folders. Raises ImageNotFound otherwise."""
    if row is None or row.status != "ok":
        raise ImageNotFound(f"no image with id {image_id} in this index.")
    path = text_to_path(row.path)
    real = Path(os.path.realpath(path))
    if not real.is_file() or not any(_inside(real, text_to_path(folder)) for folder in folders):
        raise ImageNotFound(f"image {image_id} is not a file inside the indexed folders any more.")
    return real


def _inside(path: Path, folder: Path) -> bool:
    """Is `path` (resolved) `folder` itself or inside it, once the folder's links are resolved too?"""
    return path.is_relative_to(os.path.realpath(folder))


def _count_reasons(failures) -> dict[str, int]:
    """Failures counted by the kind of reason: the text before its details,
    e.g. "image too large: 9000x9000 pixels (...)" --> "image too large"."""
    counts: dict[str, int] = {}
    for failure in failures:
        kind = re.split(r"[:(]", failure.error or "unknown", maxsplit=1)[0].strip()
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
