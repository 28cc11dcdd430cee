"""Serving stage, the API's shapes: request fields (validated), responses, and the OpenAPI
description of bodies that come as JSON or as multipart/form-data."""

from __future__ import annotations

import copy
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from imgsearch.images.decode import SHOWN_FIELDS, ImageRecord
from imgsearch.search.defaults import DEFAULT_CANDIDATES

__all__ = [
    "MAX_QUERY_CHARS",
    "SearchRequest",
    "RerankRequest",
    "SearchItem",
    "SearchResponse",
    "ExplainResponse",
    "Health",
    "ErrorBody",
    "search_body_doc",
    "rerank_body_doc",
]

MAX_QUERY_CHARS = 1000  # the model reads 40 tokens; this only stops huge bodies from being tokenized
MAX_CANDIDATES = 1000  # re-ranked per request: bounds one request's work
MAX_RERANK_ITEMS = 1000


class SearchRequest(BaseModel):
    """POST /api/search: exactly one of query, like, or an uploaded `image` file."""

    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(None, max_length=MAX_QUERY_CHARS, description="describe the photo in words")
    like: int | None = Field(None, ge=1, description="an indexed image id: find images like it")
    k: int = Field(24, ge=1, le=200, description="results per page")
    candidates: int = Field(
        DEFAULT_CANDIDATES, ge=1, le=MAX_CANDIDATES, description="first-stage results the re-ranker orders"
    )
    rerank: bool = Field(True, description="re-rank text queries with the scorer")
    collapse_duplicates: bool = Field(
        True, description="fold each photo's near-duplicates into it (its near_duplicates) instead of listing them"
    )
    cursor: str | None = Field(None, max_length=20, description="next_cursor from the previous page")
    page: int | None = Field(None, ge=1, description="1-based page number (instead of a cursor)")
    folder: str | None = Field(None, max_length=4096, description="only images inside this folder (absolute path)")
    taken_after: str | None = Field(
        None,
        max_length=40,
        description="ISO date or date-time, inclusive; a photo's date is its EXIF date taken, else its file's date",
    )
    taken_before: str | None = Field(
        None, max_length=40, description="ISO date or date-time, inclusive; as taken_after"
    )
    min_score: float | None = Field(
        None,
        ge=0,
        le=1,
        description="the least relevance (0-1, the estimated probability that a photo matches; 0.5 keeps the "
        "good matches); needs a calibrated model",
    )


class RerankRequest(BaseModel):
    """POST /api/rerank: a text query and indexed image ids (uploaded `images` files beside them)."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="describe the photo in words")
    ids: list[int] = Field(
        default_factory=list, max_length=MAX_RERANK_ITEMS, description="indexed image ids (in a form: comma-separated)"
    )


class Label(BaseModel):
    label: str
    score: float


class NearDuplicate(BaseModel):
    id: int
    path: str


_RECORD_TYPES = get_type_hints(ImageRecord)

# A search result (SearchResult.to_dict) with its URLs: id and path, the scores, then the image
# record's shown fields (images/decode.py: ImageRecord, each as its type there), labels and URLs.
_SEARCH_ITEM: dict[str, Any] = {
    "id": (int | None, Field(description="null for an uploaded image that is not in the index")),
    "path": (str | None, ...),
    "rank": (int, ...),
    "relevance": (
        float | None,
        Field(description="estimated probability (0-1) that the photo matches; null for a model without calibration"),
    ),
    "score": (float, ...),
    "first_stage_score": (float | None, ...),
    "rerank_score": (float | None, ...),
    "first_stage_rank": (int | None, ...),
    **{name: (_RECORD_TYPES[name], None) for name in SHOWN_FIELDS if name != "path"},
    "file_date": (
        str | None,
        Field(None, description="the file's modification time, local time; taken_at is the EXIF date alone"),
    ),
    "labels": (list[Label], []),
    "zero_shot_score": (float | None, None),
    "near_duplicates": (
        list[NearDuplicate],
        Field([], description="near-duplicates of this photo folded into it (same photo at another size, a copy)"),
    ),
    "thumbnail_url": (str | None, ...),
    "image_url": (str | None, ...),
}
SearchItem = create_model("SearchItem", **_SEARCH_ITEM)


class SearchResponse(BaseModel):
    items: list[SearchItem]  # type: ignore[valid-type]  # a model made by create_model
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")
    reranked: bool
    timings_ms: dict[str, float]
    warnings: list[str] = Field(
        [], description="sentences for the person searching, e.g. that the query is not English"
    )
    good_matches: int | None = Field(
        None,
        description="results (past the filters) whose relevance is at least good_threshold; null without calibration",
    )
    good_matches_complete: bool = Field(
        True, description="false when every candidate looked at was good: there are at least good_matches"
    )
    good_threshold: float | None = Field(None, description="the relevance from which a result is a good match")


class ExplainClass(BaseModel):
    label: str
    similarity: float = Field(description="cosine of the word and the class name (MiniLM sentence vectors)")


class ExplainWord(BaseModel):
    word: str
    weights: list[float] = Field(description="grid rows x cols, row-major, summing to 1")
    classes: list[ExplainClass] = Field(
        description="method 'classes': the ImageNet class names nearest the word, whose regions the map shows"
    )
    overlay_url: str = Field(description="this word's heatmap over the image (PNG)")


class ExplainResponse(BaseModel):
    query: str
    words: list[ExplainWord]
    grid: tuple[int, int]
    image_id: int | None
    path: str | None
    method: str = Field(
        description="'classes' (class activation maps of the classifier, keyed by the word) "
        "or 'alignment' (the re-ranker's token-region alignment); see docs/api.md"
    )


class Health(BaseModel):
    status: str
    images: int


class ErrorBody(BaseModel):
    """Every error response (docs/api.md, Errors)."""

    detail: str = Field(description="what went wrong and what to do, for a person to read")


_FILE = {"type": "string", "format": "binary"}


def _body_doc(json_schema: dict, form_schema: dict) -> dict[str, Any]:
    """openapi_extra for an endpoint that reads its body itself, as JSON or a multipart form."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form_schema},
            },
        }
    }


def search_body_doc() -> dict[str, Any]:
    json_schema = SearchRequest.model_json_schema()
    form = copy.deepcopy(json_schema)
    form["properties"]["image"] = {**_FILE, "description": "a photo to search with (instead of query or like)"}
    return _body_doc(json_schema, form)


def rerank_body_doc() -> dict[str, Any]:
    json_schema = RerankRequest.model_json_schema()
    form = copy.deepcopy(json_schema)
    form["properties"]["ids"] = {"type": "string", "description": "comma-separated image ids, e.g. 3,5,9"}
    form["properties"]["images"] = {"type": "array", "items": _FILE, "description": "photos that need not be indexed"}
    return _body_doc(json_schema, form)
