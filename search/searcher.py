"""The query pipeline: text --> BERT --> FAISS candidates --> re-rank --> results."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from indexer.errors import InvalidQuery
from indexer.store import Store
from indexer.vectors import VectorIndex
from search.alignment import AlignmentModel
from search.rerank import rerank_scores

__all__ = ["SearchResult", "search", "DEFAULT_CANDIDATES"]

DEFAULT_CANDIDATES = 100  # first-stage depth K that the re-ranker sees

log = logging.getLogger("imgsearch")


@dataclass
class SearchResult:
    rank: int  # 1-based
    id: int
    path: str
    score: float  # final score: re-ranked, or the first-stage score with rerank off
    first_stage_score: float  # cosine similarity of query and image vectors
    rerank_score: float | None
    first_stage_rank: int  # 1-based rank before re-ranking
    width: int | None
    height: int | None
    size: int | None
    sha256: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def _valid_unicode(text: str) -> str:
    """Lone surrogates (undecodable bytes from a non-UTF-8 terminal) become U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def search(
    model: AlignmentModel,
    store: Store,
    vectors: VectorIndex,
    text: str,
    *,
    k: int = 10,
    candidates: int = DEFAULT_CANDIDATES,
    rerank: bool = True,
) -> list[SearchResult]:
    if not isinstance(text, str) or not text.strip():
        raise InvalidQuery("the query is empty; describe the image you are looking for.")
    text = _valid_unicode(text)
    if not model.text.tokenizer(text, add_special_tokens=False)["input_ids"]:
        raise InvalidQuery(
            f"the query {text!r} has no characters the text encoder can read (only control or "
            "invisible characters); describe the image in words."
        )
    if k < 1:
        raise InvalidQuery(f"k must be at least 1 (got {k}).")
    if candidates < 1:
        raise InvalidQuery(f"candidates must be at least 1 (got {candidates}).")
    depth = max(k, candidates) if rerank else k
    with torch.inference_mode():
        query = model.text.encode([text])
    if query.truncated[0]:
        log.warning("the query is longer than the text encoder's %d tokens; the rest was ignored",
                    model.text.config.max_length)
    first_scores, ids = vectors.search(query.global_[0].float().cpu().numpy(), depth)  # (C,), (C,)
    if rerank and len(ids):
        mask = query.mask[0]  # (T,)
        final = rerank_scores(
            model.scorer, query.tokens[0], mask, store.regions(ids.tolist()), first_scores,
            model.config.fusion_weight,
        )
        reranked = final - np.float32(model.config.fusion_weight) * first_scores
        order = np.argsort(-final, kind="stable")[:k]
    else:
        final, reranked = first_scores, None
        order = np.arange(min(k, len(ids)))
    rows = store.images(ids[order].tolist())
    results = []
    for rank, position in enumerate(order, start=1):
        row = rows[int(ids[position])]
        results.append(
            SearchResult(
                rank=rank, id=row.id, path=row.path, score=float(final[position]),
                first_stage_score=float(first_scores[position]),
                rerank_score=None if reranked is None else float(reranked[position]),
                first_stage_rank=int(position) + 1,
                width=row.width, height=row.height, size=row.size, sha256=row.sha256,
            )
        )
    return results
