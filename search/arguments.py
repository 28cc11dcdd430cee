"""Search, the arguments: what a caller gives Index's search calls (imgsearch/index.py), checked
once, there, before a model loads or the snapshot is read. The stages after it (the Searcher,
search/session.py, and the search run, search/searcher.py) trust what they are given.

Each check raises InvalidQuery saying what to give instead. Light to import (no numpy, PIL or
store): the command line calls check_search itself before it loads anything, so that a bad
argument is answered at once, and query_kind to word its error as a usage error.
"""

from __future__ import annotations

import numbers
import os
import sys
from dataclasses import dataclass
from typing import Literal, get_args

from imgsearch.ground.errors import InvalidQuery
from imgsearch.search.defaults import DEFAULT_CANDIDATES, RerankPrecision
from imgsearch.search.filters import DateLike, SearchFilters

__all__ = [
    "SearchArguments",
    "QueryKind",
    "query_kind",
    "check_search",
    "check_rerank",
    "check_image_item",
    "check_indexed_image",
]

QueryKind = Literal["query", "image", "like"]


@dataclass(frozen=True)
class SearchArguments:
    """One search, checked: the kind of query and its value, the page, the filters, re-ranking."""

    kind: QueryKind
    # "query": the text; "image": a path, the bytes of an image file or a PIL image;
    # "like": an indexed image's id or path
    value: object
    k: int = 10
    offset: int = 0
    candidates: int = DEFAULT_CANDIDATES
    rerank: bool = True
    rerank_precision: RerankPrecision = "float32"
    filters: SearchFilters = SearchFilters()
    collapse_duplicates: bool = True  # near-duplicates fold into one result (search/searcher.py)


def query_kind(query: object, image: object, like: object) -> QueryKind:
    """Which one of a text `query`, an `image` or `like` (an indexed image) is given.
    Raises InvalidQuery unless exactly one is."""
    named: tuple[tuple[QueryKind, object], ...] = (("query", query), ("image", image), ("like", like))
    given = [name for name, value in named if value is not None]
    if len(given) != 1:
        raise InvalidQuery(
            "give exactly one of a text query, an image or an indexed image to find more like it"
            + (f" (got {' and '.join(given)})." if given else ".")
        )
    return given[0]


def check_search(
    query: str | None = None,
    k: int = 10,
    *,
    image: object = None,
    like: object = None,
    under: str | os.PathLike | None = None,
    taken_after: DateLike | None = None,
    taken_before: DateLike | None = None,
    min_score: float | None = None,
    offset: int = 0,
    candidates: int = DEFAULT_CANDIDATES,
    rerank: bool = True,
    rerank_precision: RerankPrecision = "float32",
    collapse_duplicates: bool = True,
) -> SearchArguments:
    """Index.search_page's arguments, checked (see there). Raises InvalidQuery."""
    kind = query_kind(query, image, like)
    if kind == "query" and (not isinstance(query, str) or not query.strip()):
        raise InvalidQuery("the query is empty; describe the image you are looking for.")
    if k < 1:
        raise InvalidQuery(f"k must be at least 1 (got {k}).")
    if candidates < 1:
        raise InvalidQuery(f"candidates must be at least 1 (got {candidates}).")
    if offset < 0:
        raise InvalidQuery(f"offset must be 0 or more (got {offset}).")
    _check_precision(rerank_precision)
    filters = SearchFilters.parse(under, taken_after, taken_before, min_score)
    if kind == "like":
        check_indexed_image(like)
    value = query if kind == "query" else image if kind == "image" else like
    return SearchArguments(
        kind, value, k, offset, candidates, rerank, rerank_precision, filters, bool(collapse_duplicates)
    )


def check_rerank(items, rerank_precision: RerankPrecision) -> list:
    """Index.rerank's images (a list of them, at least one, each as check_image_item takes) and
    precision. Raises InvalidQuery."""
    items = list(items)
    if not items:
        raise InvalidQuery("give at least one image to re-rank.")
    _check_precision(rerank_precision)
    for item in items:
        check_image_item(item)
    return items


def check_image_item(item: object) -> None:
    """An image to re-rank or explain: an indexed image's id, a path, the bytes of an image file
    or a PIL image. Raises InvalidQuery."""
    if isinstance(item, numbers.Integral) and not isinstance(item, bool):  # numpy's integers too
        return
    if not isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)) and not _is_pil_image(item):
        raise InvalidQuery(
            f"an image is given by its id, a path, the bytes of its file or a PIL image (got {type(item).__name__})."
        )


def check_indexed_image(item: object) -> None:
    """An indexed image, by its id or its path. Raises InvalidQuery."""
    if isinstance(item, bool) or not isinstance(item, (numbers.Integral, str, os.PathLike)):
        raise InvalidQuery(f"an indexed image is given by its id or its path (got {item!r}).")


def _is_pil_image(item: object) -> bool:
    """A PIL image, known without importing PIL: a program that made one has imported it."""
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(item, pil.Image)


def _check_precision(rerank_precision: object) -> None:
    if rerank_precision not in get_args(RerankPrecision):
        raise InvalidQuery(f"rerank_precision must be float32, bfloat16 or auto (got {rerank_precision!r}).")
