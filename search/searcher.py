"""The search run: query --> encoder (model) --> FAISS candidates (filtered) --> first-stage
scores (+ zero-shot term) --> re-rank (model scorer) --> one page of results.

The model is a QueryModel (search/query_model.py): the numpy query runtime or the torch model,
ranked by the same code here. The order is the same on every page: the top max(k, candidates) candidates (the pool) by
final score, then the candidates past the pool in FAISS order. Text queries are re-ranked;
image queries (a photo, or "more like this") rank by cosine alone: the scorer reads words.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from imgsearch.ground.errors import InvalidQuery
from imgsearch.images.decode import ImageRecord, file_date, record_values, shown_fields
from imgsearch.model.calibration import Calibration
from imgsearch.search.candidates import nearest
from imgsearch.search.defaults import DEFAULT_CANDIDATES, RerankPrecision
from imgsearch.search.filters import SearchFilters
from imgsearch.search.query_model import QueryEmbedding, QueryModel
from imgsearch.storage.store import Store
from imgsearch.storage.vectors import VectorIndex

__all__ = [
    "SearchResult",
    "SearchPage",
    "PoolScores",
    "search_page",
    "encode_text_query",
    "score_pool",
    "final_order",
    "shown_relevance",
    "collapse_near_duplicates",
    "DEFAULT_CANDIDATES",
    "RerankPrecision",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SearchResult(ImageRecord):
    """An image found: its record (path, width, height, size, sha256, taken_at, ...: the store's,
    or for a file not in the index what reading it now tells), its labels and its scores.
    Made by SearchResult.of alone."""

    rank: int  # 1-based
    id: int | None  # None for a file that is not in the index (Index.rerank of other files)
    # The estimated probability that the photo matches the query (model/calibration.py): what
    # a person is shown and --min-score filters on. None when the model has no calibration.
    relevance: float | None
    score: float  # final score: re-ranked, or the first-stage score with rerank off
    # cosine similarity of query and image vectors, plus zero_shot_weight * zero_shot_score
    # when the model uses the zero-shot ImageNet term
    first_stage_score: float
    rerank_score: float | None
    first_stage_rank: int  # 1-based rank before re-ranking
    # The backbone classifier's top classes for this image, best first: {"label": name, "score": prob}
    # (probabilities, 4 decimals); empty when the model has no classifier or none are stored.
    labels: list[dict] = field(default_factory=list)
    # The zero-shot ImageNet score (model/zero_shot.py) when the model uses it, else None.
    zero_shot_score: float | None = None
    # Near-duplicates of this image folded into it (search_page): {"id": ..., "path": ...}, best first.
    near_duplicates: list[dict] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        image: ImageRecord,
        image_id: int | None,
        labels: Sequence[tuple[str, float]],
        *,
        rank: int,
        relevance: float | None,
        score: float,
        first_stage_score: float,
        rerank_score: float | None,
        first_stage_rank: int,
        zero_shot_score: float | None,
        near_duplicates: Sequence[dict] = (),
    ) -> SearchResult:
        """The result for `image` (a stored row, or the record of a file read now), whose
        stored labels are [(name, prob), ...], with its scores."""
        return cls(
            **record_values(image),
            id=image_id,
            rank=rank,
            relevance=relevance,
            score=score,
            first_stage_score=first_stage_score,
            rerank_score=rerank_score,
            first_stage_rank=first_stage_rank,
            zero_shot_score=zero_shot_score,
            labels=[{"label": name, "score": prob} for name, prob in labels],
            near_duplicates=list(near_duplicates),
        )

    def to_dict(self) -> dict:
        """What --json and the HTTP API show: the scores, the labels and the record's shown fields."""
        values = asdict(self)
        shown = shown_fields(type(self))
        keys = [name for name in _DICT_ORDER if name in shown] + [name for name in shown if name not in _DICT_ORDER]
        return {name: values[name] for name in keys} | {"file_date": file_date(self)}


# to_dict's keys in the order --json has always printed them; fields added later follow.
_DICT_ORDER = (
    "rank",
    "id",
    "path",
    "relevance",
    "score",
    "first_stage_score",
    "rerank_score",
    "first_stage_rank",
    "width",
    "height",
    "size",
    "sha256",
    "labels",
    "zero_shot_score",
    "taken_at",
)


def _valid_unicode(text: str) -> str:
    """Lone surrogates (undecodable bytes from a non-UTF-8 terminal) become U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@dataclass
class SearchPage:
    results: list[SearchResult]
    next_offset: int | None  # the offset of the next page; None on the last page
    reranked: bool  # were text results re-ranked by the cross-attention scorer?
    # milliseconds per stage: encode, vector_search, first_stage, rerank, total
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Sentences for the person searching, e.g. that the query does not look English (search/language.py).
    warnings: list[str] = field(default_factory=list)
    # How many results (past the filters) are good matches (relevance >= the model's good
    # threshold, model/calibration.py); None when the model has no calibration. When
    # good_matches_complete is False, every candidate fetched was good: there are at least this many.
    good_matches: int | None = None
    good_matches_complete: bool = True
    good_threshold: float | None = None  # the relevance from which a result is a good match


@dataclass
class PoolScores:
    """Scores of C candidates of one text query, in their given order, each (C,) float32."""

    # cosine + zero_shot_weight * zero-shot score - hubness weight * hub score
    first_stage: np.ndarray
    final: np.ndarray  # re-ranked (scorer logit + fusion_weight * first_stage), or first_stage
    reranked: np.ndarray | None  # final - fusion_weight * first_stage; None without re-ranking
    zero_shot: np.ndarray | None  # None when the model has no zero-shot term
    hubness: np.ndarray | None = None  # the hub scores r(i) (model/hubness.py); None without the correction


def encode_text_query(model: QueryModel, text: str) -> QueryEmbedding:
    """A text query --> its embedding. Raises InvalidQuery for text the encoder cannot read."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidQuery("the query is empty; describe the image you are looking for.")
    text = _valid_unicode(text)
    if not model.readable_token_count(text):
        raise InvalidQuery(
            f"the query {text!r} has no characters the text encoder can read (only control or "
            "invisible characters); describe the image in words."
        )
    query = model.encode_query(text)
    if query.truncated:
        log.warning(
            "the query is longer than the text encoder's %d tokens; the rest was ignored", model.config.text.max_length
        )
    return query


def score_pool(
    model: QueryModel,
    query: QueryEmbedding,
    cosines: np.ndarray,
    regions: np.ndarray | None,
    labels: list[list[tuple[str, float]]] | None,
    rerank_precision: RerankPrecision = "float32",
    vectors: np.ndarray | None = None,
) -> PoolScores:
    """The scores of C candidates of a text query: cosines (C,) of the global vectors, the
    candidates' regions (C, R, d) float16 (None: no re-ranking), stored labels (None: none
    read) and global vectors (C, d) (None: no hubness correction). Search's pool, Index.rerank
    and evaluation (training/evaluate.py) all score through here."""
    zero_shot_weight = model.config.zero_shot_weight if model.config.image_labels else 0.0
    first = cosines.astype(np.float32)
    zero_shot = hubness = None
    if zero_shot_weight and labels is not None and len(first):
        assert query.sentence is not None  # the text encoder computes it
        zero_shot = model.label_scores(query.sentence, labels)  # (C,); sentence: the query's BERT run, mean-pooled
        first = first + np.float32(zero_shot_weight) * zero_shot  # the fused first stage
    if model.config.hubness.weight and vectors is not None and len(first):
        hubness = model.hub_scores(vectors)  # (C,)
        first = first - np.float32(model.config.hubness.weight) * hubness
    if regions is None or not len(first):
        return PoolScores(first, first, None, zero_shot, hubness)
    reranked = model.rerank_logits(query, regions, rerank_precision)  # (C,)
    final = reranked + np.float32(model.config.fusion_weight) * first
    return PoolScores(first, final, final - np.float32(model.config.fusion_weight) * first, zero_shot, hubness)


def search_page(
    model: QueryModel,
    store: Store,
    vectors: VectorIndex,
    query: QueryEmbedding | np.ndarray,
    *,
    k: int = 10,
    offset: int = 0,
    candidates: int = DEFAULT_CANDIDATES,
    rerank: bool = True,
    filters: SearchFilters = SearchFilters(),
    exclude_ids: Sequence[int] = (),
    rerank_precision: RerankPrecision = "float32",
    encode_ms: float = 0.0,
    calibration: Calibration | None = None,
    query_text: str | None = None,
    collapse_duplicates: bool = True,
    drop_copies_of_query: bool = False,
) -> SearchPage:
    """One page (results offset .. offset+k-1) for a query: a text embedding, or an
    image query's global vector (d,) in the shared space (never re-ranked). The arguments are
    Index's, checked there (search/arguments.py).

    rerank_precision: "float32" gives the reference scorer's scores; "bfloat16" runs the
    scorer's matrix products in bfloat16 (faster where the hardware runs it natively, logits
    close to float32's: bench/RESULTS.md has the figures); "auto" picks bfloat16 where the
    hardware runs it natively. exclude_ids: images left out of the results ("more like this"
    of an image: it and its copies). calibration: the model's relevance scale (None: results
    carry no relevance, and filters.min_score must be None); query_text: a text query's words
    (its relevance curve depends on its length). collapse_duplicates: a result's near-duplicates
    (collapse_near_duplicates) ranked below it fold into it, listed in its near_duplicates, and
    leave the list; drop_copies_of_query: images that are near-duplicates of the query vector
    itself ("more like this" of an indexed photo) leave it too.
    """
    clock = _Clock(encode_ms)
    text = query if isinstance(query, QueryEmbedding) else None
    vector = text.global_ if text is not None else np.asarray(query, np.float32)
    uses_zero_shot = text is not None and bool(model.config.zero_shot_weight and model.config.image_labels)
    uses_hubness = text is not None and bool(model.config.hubness.weight)
    pool_size = max(k, candidates) if text is not None and (rerank or uses_zero_shot or uses_hubness) else 0
    allowed = filters.allowed_ids(store)
    clock.lap("first_stage")

    # Fetch deeper until the page (and one more, to know whether a next page exists) survives
    # min_score, or nothing is left to fetch.
    limit = len(vectors) if allowed is None else len(allowed)
    excluded = np.asarray(sorted(exclude_ids), np.int64)
    depth = max(offset + k + 1, pool_size) + len(excluded)
    while True:
        cosines, ids = nearest(vectors, store, vector, depth, allowed)  # (n,), (n,)
        clock.lap("vector_search")
        if len(excluded):
            keep = ~np.isin(ids, excluded)
            cosines, ids = cosines[keep], ids[keep]
        labels = store.labels(ids.tolist()) if uses_zero_shot else None  # every candidate's, for the zero-shot term
        scores = _first_stage_order(
            model, text, cosines, ids, labels, pool_size, store, rerank, rerank_precision, clock
        )
        relevance = (
            None
            if calibration is None
            else shown_relevance(_relevance(calibration, scores, text is not None, query_text))
        )
        kept = scores.order if filters.min_score is None else _at_least(scores.order, relevance, filters.min_score)
        folded: dict[int, list[int]] = {}
        if collapse_duplicates or drop_copies_of_query:
            good = None if relevance is None or calibration is None else relevance >= calibration.good
            kept, folded = collapse_near_duplicates(
                kept,
                ids,
                store,
                offset + k + 1,
                good,
                vector if drop_copies_of_query else None,
                merge=collapse_duplicates,
                threshold=None if calibration is None else calibration.near_duplicate_cosine,
            )
        if len(kept) > offset + k or depth >= limit:
            break
        depth = min(limit, depth * 2)
    page = kept[offset : offset + k]
    shown_copies = [position for owner in page.tolist() for position in folded.get(owner, [])]
    rows = store.images(ids[np.r_[page, shown_copies].astype(np.int64)].tolist())
    if labels is None:
        labels = store.labels(ids[page].tolist())
    results = []
    for rank, position in enumerate(page.tolist(), start=offset + 1):
        row = rows[int(ids[position])]
        results.append(
            SearchResult.of(
                row,
                row.id,
                labels[row.id],
                rank=rank,
                relevance=None if relevance is None else float(relevance[position]),
                score=float(scores.final[position]),
                first_stage_score=float(scores.first_stage[position]),
                rerank_score=None
                if scores.reranked is None or np.isnan(scores.reranked[position])
                else float(scores.reranked[position]),
                first_stage_rank=int(scores.first_stage_rank[position]),
                zero_shot_score=None if scores.zero_shot is None else float(scores.zero_shot[position]),
                near_duplicates=[
                    {"id": int(ids[copy]), "path": rows[int(ids[copy])].path} for copy in folded.get(position, [])
                ],
            )
        )
    clock.lap("first_stage")
    next_offset = offset + k if len(kept) > offset + k else None
    page_of = SearchPage(results, next_offset, scores.reranked is not None, clock.timings())
    if calibration is not None and relevance is not None:
        good = relevance[kept] >= calibration.good
        page_of.good_matches, page_of.good_threshold = int(good.sum()), calibration.good
        page_of.good_matches_complete = depth >= limit or not bool(good[-1:].all())
    return page_of


@dataclass
class _Ranked:
    """Scores of the fetched candidates (n,) in FAISS order, and the final order over them."""

    first_stage: np.ndarray
    final: np.ndarray
    reranked: np.ndarray | None  # NaN past the pool
    zero_shot: np.ndarray | None
    order: np.ndarray  # (n,) positions, best first: the pool by final score, then the rest
    first_stage_rank: np.ndarray  # (n,) 1-based: the pool by first-stage score, then the rest
    pool: int  # the first `pool` positions were scored as the pool (re-ranked when reranked is set)


def _relevance(calibration: Calibration, scores: _Ranked, is_text: bool, query_text: str | None) -> np.ndarray:
    """(n,) each fetched candidate's relevance: a text query's re-ranked pool from its final
    score, the rest of a text query's candidates from their first-stage score, an image query's
    from its cosine."""
    if not is_text:
        return calibration.relevance("image", scores.first_stage)
    relevance = calibration.relevance("text_first_stage", scores.first_stage, query_text)
    if scores.reranked is not None:
        relevance[: scores.pool] = calibration.relevance("text", scores.final[: scores.pool], query_text)
    return relevance


def collapse_near_duplicates(
    kept: np.ndarray,
    ids: np.ndarray,
    store: Store,
    need: int,
    good: np.ndarray | None,
    query_vector: np.ndarray | None,
    *,
    merge: bool,
    threshold: float | None,
) -> tuple[np.ndarray, dict[int, list[int]]]:
    """Walk `kept` (positions into `ids`, best first) and fold each near-duplicate of a candidate
    kept before it into that one (with `merge`), or drop it when it is a near-duplicate of
    `query_vector`. Near-duplicates: global vectors with a cosine of at least `threshold` (the
    model's, model/calibration.py), or with `threshold` None byte-identical files alone (same
    sha256; a model without calibration has no measured threshold). Stops once `need`
    candidates are kept and every good one (`good`, by position) has been looked at; the rest
    follow unexamined. Returns the kept positions and, per kept position, the positions folded
    into it. Deterministic: every page of one search walks the same prefix the same way."""
    last_good = int(np.flatnonzero(good[kept])[-1]) + 1 if good is not None and good[kept].any() else 0
    chosen: list[int] = []
    chosen_vectors: list[np.ndarray] = []
    by_content: dict[str, int] = {}  # sha256 --> the chosen position with that content
    folded: dict[int, list[int]] = {}
    walked = 0
    while walked < len(kept) and (len(chosen) < need or walked < last_good):
        chunk = kept[walked : walked + max(64, need)]
        chunk_ids = ids[chunk].tolist()
        if threshold is None:
            rows = store.images(chunk_ids)
            keys: list = [rows[i].sha256 for i in chunk_ids]
        else:
            keys = list(store.global_vectors_of(chunk_ids))  # (d,) each
        for position, key in zip(chunk.tolist(), keys):
            walked += 1
            owner = None
            if threshold is None:
                owner = by_content.get(key) if merge else None
            else:
                if query_vector is not None and float(key @ query_vector) >= threshold:
                    continue  # a near-copy of the query photo itself
                if merge and chosen_vectors:
                    similar = np.stack(chosen_vectors) @ key  # (kept so far,)
                    best = int(np.argmax(similar))
                    owner = chosen[best] if similar[best] >= threshold else None
            if owner is not None:
                folded.setdefault(owner, []).append(position)
                continue
            chosen.append(position)
            if threshold is None:
                by_content.setdefault(key, position)
            else:
                chosen_vectors.append(key)
            if len(chosen) >= need and walked >= last_good:
                break
    return np.concatenate([np.asarray(chosen, np.int64), kept[walked:]]), folded


def shown_relevance(relevance: np.ndarray) -> np.ndarray:
    """Relevance as results show it and filters compare it: float64, 4 decimals (min_score set to
    a shown relevance keeps that result)."""
    return np.round(relevance.astype(np.float64), 4)


def _at_least(order: np.ndarray, relevance: np.ndarray | None, min_score: float) -> np.ndarray:
    """`order` without the candidates whose relevance is under min_score."""
    assert relevance is not None  # search/arguments.py refuses min_score for a model without calibration
    return order[relevance[order] >= min_score]


def _first_stage_order(
    model: QueryModel,
    text: QueryEmbedding | None,
    cosines: np.ndarray,
    ids: np.ndarray,
    labels: dict | None,
    pool_size: int,
    store: Store,
    rerank: bool,
    rerank_precision: RerankPrecision,
    clock: _Clock,
) -> _Ranked:
    """Score and order fetched candidates: the pool (the first pool_size, re-ranked for text
    queries) by final score, then the rest in FAISS order with their first-stage scores."""
    count = len(ids)
    pool = min(pool_size, count)
    first = cosines.astype(np.float32).copy()
    final, reranked, zero_shot = first.copy(), None, None
    if text is not None and count:
        label_list = None if labels is None else [labels[int(i)] for i in ids]
        pool_labels = None if label_list is None else label_list[:pool]
        regions = store.regions(ids[:pool].tolist()) if rerank and pool else None  # (P, R, d) float16
        vectors = store.global_vectors_of(ids[:pool].tolist()) if model.config.hubness.weight and pool else None
        clock.lap("first_stage")
        scored = score_pool(model, text, cosines[:pool], regions, pool_labels, rerank_precision, vectors)
        clock.lap("rerank" if regions is not None else "first_stage")
        first[:pool], final[:pool] = scored.first_stage, scored.final
        if label_list is not None and scored.zero_shot is not None:
            zero_shot = np.zeros(count, np.float32)
            zero_shot[:pool] = scored.zero_shot
            assert text.sentence is not None  # the text encoder computes it
            rest = model.label_scores(text.sentence, label_list[pool:])
            zero_shot[pool:] = rest
            first[pool:] += np.float32(model.config.zero_shot_weight) * rest
            final[pool:] = first[pool:]
        if scored.reranked is not None:
            reranked = np.full(count, np.nan, np.float32)
            reranked[:pool] = scored.reranked
    order = final_order(final[:pool], count)
    first_rank = np.empty(count, np.int64)
    first_rank[final_order(first[:pool], count)] = np.arange(1, count + 1)
    return _Ranked(first, final, reranked, zero_shot, order, first_rank, pool)


def final_order(pool_scores: np.ndarray, count: int) -> np.ndarray:
    """The order of `count` fetched candidates (positions, best first): the pool (the first
    len(pool_scores), scored by score_pool) by score, ties in FAISS order, then the rest in
    FAISS order. Search and evaluation (training/evaluate.py) both rank with it."""
    pool_order = np.argsort(-pool_scores, kind="stable")
    return np.concatenate([pool_order, np.arange(len(pool_scores), count)]).astype(np.int64)


class _Clock:
    """Milliseconds spent per stage of one search, summed over laps."""

    def __init__(self, encode_ms: float) -> None:
        self.spent = {"encode": encode_ms, "vector_search": 0.0, "first_stage": 0.0, "rerank": 0.0}
        self.started = self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.spent[stage] += (now - self.last) * 1000
        self.last = now

    def timings(self) -> dict[str, float]:
        total = self.spent["encode"] + (time.perf_counter() - self.started) * 1000
        return {name: round(ms, 2) for name, ms in {**self.spent, "total": total}.items()}
