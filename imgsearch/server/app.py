"""Serving stage, the HTTP app: each endpoint of docs/api.md is one library call on a shared Index.

Endpoints are plain functions (def), so FastAPI runs them on its thread pool, side by side;
the Index is thread-safe. Request bodies are read (size-capped, in memory) by an async
dependency first (uploads.py). Routes raise the library's typed errors and never choose an
error status: http_errors.py maps every error to its status and body, in one table; every
response carries the security headers (middleware.py).
Nothing here writes to the index; thumbnails go to their own cache folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ValidationError

from imgsearch.ground.errors import ImageNotFound, InvalidImage, InvalidQuery
from imgsearch.images.decode import decode_image_bytes
from imgsearch.server.http_errors import add_error_handler, responses
from imgsearch.server.middleware import CONTENT_SECURITY_POLICY, SecureApp
from imgsearch.server.schemas import (
    MAX_QUERY_CHARS,
    ExplainResponse,
    Health,
    RerankRequest,
    SearchRequest,
    SearchResponse,
    rerank_body_doc,
    search_body_doc,
)
from imgsearch.server.thumbnails import ThumbnailCache, load_image
from imgsearch.server.uploads import Body, parse_body, read_body, too_large

__all__ = ["create_app", "DEFAULT_MAX_UPLOAD_BYTES", "STATIC_DIR", "CONTENT_SECURITY_POLICY"]

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
STATIC_DIR = Path(__file__).with_name("static")  # the web page: index.html, app.js, style.css
OVERLAY_SIDE = 800  # pixels, the longest side of an explain.png heatmap
MAX_OFFSET = 100_000  # results a page may skip (cursor or page): deeper paging is not a person's use
MAX_RERANK_UPLOADS = 16  # images uploaded to one /api/rerank
UPLOAD_SIDE = 2048  # pixels: uploads to /api/rerank are shrunk to this longest side once decoded

ImageId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="an image id, from a search result")]
QueryText = Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="the text query")]


# ---- the app ---------------------------------------------------------------------------


def create_app(
    index,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    static_dir: str | os.PathLike | None = STATIC_DIR,
    allowed_hosts: Iterable[str] | None = None,
) -> FastAPI:
    """The HTTP app over one open imgsearch.Index (see docs/api.md). `max_upload_bytes` caps
    the images of one request; `static_dir` holds the web page served at / (None: no page);
    `allowed_hosts`, when given, are the only Host names answered (others get 400)."""
    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be at least 1 (got {max_upload_bytes}).")
    app = SecureApp(
        title="imgsearch",
        summary="Find photos by describing them: a read-only API over one index.",
        description="The search page that uses this API: [back to the photos](./).",
        docs_url=None,
        redoc_url=None,  # /docs is _add_docs's: Swagger UI from local files, no CDN
    )
    app.state.index = index
    app.state.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
    app.state.max_upload_bytes = max_upload_bytes
    app.state.thumbnails = ThumbnailCache.for_index(index.directory)
    add_error_handler(app)
    app.include_router(router)
    _add_docs(app)
    _add_page(app, None if static_dir is None else Path(static_dir))
    return app


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs, its files (Swagger UI 5, which reads FastAPI's OpenAPI 3.1) from the
    fastapi-offline package at /docs-assets/: the API docs render offline (FastAPI's default
    loads them from a CDN)."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html

    assets = Path(fastapi_offline.__file__).with_name("static")
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="imgsearch API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )


def _add_page(app: FastAPI, static_dir: Path | None) -> None:
    """The web page at /, or at / a message that says it is missing."""
    if static_dir is not None and (static_dir / "index.html").is_file():
        app.mount("/", StaticFiles(directory=static_dir, html=True), name="page")
        return
    where = "no folder was given" if static_dir is None else f"{static_dir / 'index.html'} is missing"
    message = (
        f"The imgsearch web page is not installed here ({where}). The JSON API is at /api/ "
        "(its documentation at /docs); reinstall imgsearch to get the page.\n"
    )

    @app.get("/", include_in_schema=False)
    def page_missing() -> PlainTextResponse:
        return PlainTextResponse(message, status_code=404)


# ---- dependencies ------------------------------------------------------------------------


def current_index(request: Request):
    """The shared Index, moved to what a concurrent `imgsearch index` has committed, if anything."""
    index = request.app.state.index
    index.refresh_if_changed()
    return index


async def request_body(request: Request) -> Body:
    """The body as JSON or a multipart form, its uploads together at most max_upload_bytes."""
    limit = request.app.state.max_upload_bytes
    body = parse_body(request.headers.get("content-type"), await read_body(request, limit))
    uploaded = sum(len(upload.data) for upload in body.files)
    if uploaded > limit:
        raise too_large(uploaded, limit)
    return body


Model = TypeVar("Model", bound=BaseModel)


def _validated(model: type[Model], fields: dict[str, Any]) -> Model:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in errors]) from None


# ---- search and rerank ---------------------------------------------------------------------

router = APIRouter(prefix="/api")


@router.post(
    "/search", response_model=SearchResponse, responses=responses(400, 404, 413, 415), openapi_extra=search_body_doc()
)
def search(request: Request, body: Body = Depends(request_body), index=Depends(current_index)) -> dict:
    """Search by text (`query`), by an uploaded photo (`image`), or for images like an indexed one
    (`like`); filters and paging as in docs/api.md. Send JSON, or multipart/form-data with the photo."""
    form = _search_form(body)
    images = body.files_named("image")
    if len(images) > 1:
        raise InvalidQuery(f"{len(images)} images were uploaded; search with one.")
    page = index.search_page(
        query=form.query,
        image=images[0].data if images else None,
        like=form.like,
        k=form.k,
        candidates=form.candidates,
        rerank=form.rerank,
        collapse_duplicates=form.collapse_duplicates,
        offset=_offset(form),
        under=form.folder,
        taken_after=form.taken_after,
        taken_before=form.taken_before,
        min_score=form.min_score,
    )
    return {
        "items": [_item(result, request) for result in page.results],
        "next_cursor": None if page.next_offset is None else str(page.next_offset),
        "reranked": page.reranked,
        "timings_ms": page.timings_ms,
        "warnings": page.warnings,
        "good_matches": page.good_matches,
        "good_matches_complete": page.good_matches_complete,
        "good_threshold": page.good_threshold,
    }


def _search_form(body: Body) -> SearchRequest:
    """The search fields, validated; `image` only as an uploaded file (no path, no URL)."""
    fields = _given(body)
    if fields.pop("image", None) is not None:
        raise InvalidImage(
            "`image` must be an uploaded file: send multipart/form-data with a file "
            "part named image (JSON cannot carry a photo)."
        )
    unknown = {upload.field for upload in body.files} - {"image"}
    if unknown:
        raise InvalidQuery(f"unexpected file field(s) {sorted(unknown)}; upload the photo as `image`.")
    form = _validated(SearchRequest, fields)
    if form.folder is not None and not os.path.isabs(os.path.expanduser(form.folder)):
        raise InvalidQuery(
            f"the folder {form.folder!r} is not an absolute path; give the whole path, e.g. /home/me/Pictures/2021."
        )
    return form


def _given(body: Body) -> dict[str, Any]:
    """The body's fields; in a form, an empty field (a page's blank input) counts as not given."""
    if not body.form:
        return dict(body.fields)
    return {name: value for name, value in body.fields.items() if value != ""}


def _offset(form: SearchRequest) -> int:
    """How many results to skip: from the cursor a previous response gave, or the 1-based page."""
    return _offset_of(form.cursor, form.page, form.k)


def _offset_of(cursor: str | None, page: int | None, k: int) -> int:
    if cursor is not None and page is not None:
        raise InvalidQuery("give a cursor or a page, not both.")
    if cursor is not None:
        if not cursor.isdigit() or int(cursor) > MAX_OFFSET:
            raise InvalidQuery(
                f"the cursor {cursor!r} is not one this server gives; "
                "use next_cursor from a previous response, or leave it out."
            )
        return int(cursor)
    offset = ((page or 1) - 1) * k
    if offset > MAX_OFFSET:
        raise InvalidQuery(f"page {page} starts past result {MAX_OFFSET:,}; narrow the search instead.")
    return offset


def _item(result, request: Request) -> dict:
    """A SearchResult as an API item: its fields, plus the URLs of its thumbnail and file."""
    item = result.to_dict()
    root = request.scope.get("root_path", "")
    indexed = result.id is not None
    item["thumbnail_url"] = f"{root}/api/images/{result.id}/thumbnail" if indexed else None
    item["image_url"] = f"{root}/api/images/{result.id}" if indexed else None
    return item


@router.post(
    "/rerank", response_model=SearchResponse, responses=responses(400, 404, 413, 415), openapi_extra=rerank_body_doc()
)
def rerank(request: Request, body: Body = Depends(request_body), index=Depends(current_index)) -> dict:
    """Order the given images (indexed `ids`, and uploaded `images`) for a text query with the
    scorer (the re-ranker). Uploaded images come back with `id` null and no URLs."""
    fields = _given(body)
    if isinstance(fields.get("ids"), str):  # a form field: "3,5,9"
        fields["ids"] = [part.strip() for part in fields["ids"].split(",") if part.strip()]
    form = _validated(RerankRequest, fields)
    uploads = body.files_named("images")
    if len(uploads) != len(body.files):
        raise InvalidQuery("upload the images to re-rank as file fields named `images`.")
    if len(uploads) > MAX_RERANK_UPLOADS:
        raise InvalidQuery(f"{len(uploads)} images were uploaded; re-rank at most {MAX_RERANK_UPLOADS} at a time.")
    started = time.perf_counter()
    pictures = [_uploaded_picture(upload.data) for upload in uploads]
    results = index.rerank(form.query, [*form.ids, *pictures])
    total = (time.perf_counter() - started) * 1000
    return {
        "items": [_item(result, request) for result in results],
        "next_cursor": None,
        "reranked": True,
        "timings_ms": {"total": total},
    }


def _uploaded_picture(data: bytes):
    """An uploaded image, decoded with the indexer's guards (never read as a path), and shrunk
    to UPLOAD_SIDE at most so that many large uploads cannot hold gigabytes of pixels at once
    (the model reads 224 px)."""
    picture = decode_image_bytes(data, min_size=UPLOAD_SIDE)
    picture.thumbnail((UPLOAD_SIDE, UPLOAD_SIDE), Image.Resampling.LANCZOS)
    return picture


# ---- one image ---------------------------------------------------------------------------


T = TypeVar("T")


def _read_stored(image_id: int, path: Path, read: Callable[[Path], T]) -> T:
    """`read(path)` of indexed image `image_id`'s file. A file gone since it was indexed, or one
    that no longer decodes, is an image the index cannot serve: ImageNotFound, saying why."""
    try:
        return read(path)
    except InvalidImage as exc:
        raise ImageNotFound(
            f"image {image_id}'s file no longer decodes ({exc}); run `imgsearch index` again to update the index."
        ) from None
    except OSError as exc:
        raise ImageNotFound(
            f"image {image_id}'s file cannot be read ({exc.strerror or exc}); "
            "run `imgsearch index` again to update the index."
        ) from None


_MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpe": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}  # what the indexer reads (indexer/files.py); not the system's mime.types


def _media_type(path: Path) -> str:
    return _MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


@router.get("/images/{image_id}", response_class=FileResponse, responses=responses(400, 404))
def original(image_id: ImageId, index=Depends(current_index)) -> FileResponse:
    """The original file of an indexed image."""
    path = index.original_path(image_id)
    _read_stored(image_id, path, os.stat)  # a file gone since it was indexed: a 404 here, not an error mid-response
    return FileResponse(path, media_type=_media_type(path), headers={"Cache-Control": "private, no-cache"})


@router.get("/images/{image_id}/info", responses=responses(400, 404))
def image_info(request: Request, image_id: ImageId, index=Depends(current_index)) -> dict:
    """What the index holds of one image (as a search item, without scores), with its URLs."""
    return _with_urls(index.image_info(image_id), request)


@router.get("/browse", responses=responses(400))
def browse(
    request: Request,
    k: Annotated[int, Query(ge=1, le=200, description="images per page")] = 24,
    cursor: Annotated[str | None, Query(max_length=20, description="next_cursor from the previous page")] = None,
    folder: Annotated[str | None, Query(max_length=4096, description="only images inside this folder")] = None,
    taken_after: Annotated[str | None, Query(max_length=40, description="as /api/search's")] = None,
    taken_before: Annotated[str | None, Query(max_length=40, description="as /api/search's")] = None,
    index=Depends(current_index),
) -> dict:
    """The library, newest first (by the date taken, else the file's date), a page at a time:
    each image's info (as /api/images/{id}/info gives it), and `next_cursor` (null on the last page)."""
    offset = _offset_of(cursor, None, k)
    items, next_offset = index.browse(
        k, offset, under=folder or None, taken_after=taken_after or None, taken_before=taken_before or None
    )
    return {
        "items": [_with_urls(item, request) for item in items],
        "next_cursor": None if next_offset is None else str(next_offset),
    }


def _with_urls(info: dict, request: Request) -> dict:
    """An indexed image's info with the URLs of its thumbnail and file."""
    root = request.scope.get("root_path", "")
    return {
        **info,
        "thumbnail_url": f"{root}/api/images/{info['id']}/thumbnail",
        "image_url": f"{root}/api/images/{info['id']}",
    }


@router.get("/images/{image_id}/thumbnail", response_class=Response, responses=responses(400, 404))
def thumbnail(request: Request, image_id: ImageId, index=Depends(current_index)) -> Response:
    """A JPEG of the image, upright, longest side 320 px (smaller images keep their size), cached."""
    path = index.original_path(image_id)
    thumb = _read_stored(image_id, path, request.app.state.thumbnails.get)
    headers = {"ETag": f'"{thumb.key}"', "Cache-Control": "private, no-cache"}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return Response(thumb.jpeg, media_type="image/jpeg", headers=headers)


@router.get("/images/{image_id}/explain", response_model=ExplainResponse, responses=responses(400, 404))
def explain(request: Request, image_id: ImageId, query: QueryText, index=Depends(current_index)) -> dict:
    """For each word of the query, how much each region of the image matched it (weights sum to 1),
    with the URL of that word's heatmap."""
    payload = _as_dict(index.explain(query, image_id))
    root = request.scope.get("root_path", "")
    for number, word in enumerate(payload["words"]):
        word["overlay_url"] = f"{root}/api/images/{image_id}/explain.png?query={quote(query)}&word={number}"
    return payload


def _as_dict(value) -> dict:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return dict(value)


@router.get("/images/{image_id}/explain.png", response_class=Response, responses=responses(400, 404))
def explain_png(
    image_id: ImageId,
    query: QueryText,
    word: Annotated[
        int,
        Query(ge=0, description="which of the words /explain lists for `query` (its content words): 0 is the first"),
    ] = 0,
    index=Depends(current_index),
) -> Response:
    """Word number `word`'s weights as a heatmap over the image (PNG, longest side 800 px)."""
    from imgsearch.search.explain import overlay_png

    path = index.original_path(image_id)
    explanation = _as_dict(index.explain(query, image_id))
    words = explanation["words"]
    if word >= len(words):
        raise InvalidQuery(f"word {word} is out of range: the query has {len(words)} word(s), numbered from 0.")
    image = _read_stored(image_id, path, lambda stored: load_image(stored, OVERLAY_SIDE))
    png = overlay_png(image, words[word]["weights"], explanation["grid"], max_side=OVERLAY_SIDE)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-cache"})


# ---- the index -----------------------------------------------------------------------------


@router.get("/index")
def index_info(index=Depends(current_index)) -> dict:
    """What `imgsearch info` says: counts, the model, labels, bytes on disk."""
    return index.info()


@router.get("/health", response_model=Health)
def health(index=Depends(current_index)) -> dict:
    """The server is up; how many images the index holds."""
    return {"status": "ok", "images": index.image_count()}
