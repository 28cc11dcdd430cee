"""Serving stage, errors: the one table from the library's typed errors to HTTP statuses, and
the one handler that answers every failed request with it (docs/api.md, Errors).

Every error response is JSON `{"detail": "message"}`: the library error's own message (it
says what went wrong and what to do), or for a request that fails validation a sentence per
field ("query is too long: at most 1,000 characters"). Request validation and the library's
argument checks (InvalidQuery) answer alike, 400: a client cannot tell, and need not know,
which layer found `k` out of range. Statuses come from STATUS_OF, looked up along the
exception's class hierarchy (a subclass answers as its parent unless it has its own row);
an HTTPException (the body's size and Content-Type, routing's 404 and 405) carries its own
status. Anything else is a 500 that hides its message and is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from starlette.exceptions import HTTPException

from imgsearch.ground.errors import (
    CaptionFileError,
    ConversionError,
    ImageNotFound,
    ImageTooLarge,
    ImgsearchError,
    IndexExists,
    IndexLocked,
    IndexNotFound,
    InputPathNotFound,
    InvalidImage,
    InvalidQuery,
    ModelConfigError,
    ModelMismatch,
    ModelNotFound,
    RayNotInstalled,
    RuntimeUnsupported,
    ServeFailed,
    ShardFailed,
    StoreCorrupt,
    StoreWriteFailed,
    WeightsMissing,
)
from imgsearch.server.schemas import ErrorBody

__all__ = ["STATUS_OF", "status_of", "error_body", "add_error_handler", "responses"]

log = logging.getLogger(__name__)

# Every exception class of imgsearch.ground.errors has its row (tests/test_http_errors.py holds this,
# and that docs/api.md's table says the same). 500: the fault is the server's (its index, its
# model, its disk), not the request's; most of these cannot happen while serving (the server
# never writes to the index), and answer 500 with their message if they ever do.
STATUS_OF: dict[type[BaseException], int] = {
    InvalidQuery: 400,  # a bad parameter
    RequestValidationError: 400,  # a field out of range or of the wrong type, a malformed body: as InvalidQuery
    ImageNotFound: 404,  # no such image, or a file the index may not (or can no longer) serve
    InvalidImage: 415,  # an uploaded image that is not usable
    ImageTooLarge: 415,  # never leaves decoding (it becomes InvalidImage); would mean the same
    ImgsearchError: 500,
    IndexNotFound: 500,
    IndexExists: 500,
    StoreCorrupt: 500,
    ModelMismatch: 500,
    ModelNotFound: 500,
    ModelConfigError: 500,
    WeightsMissing: 500,
    InputPathNotFound: 500,
    IndexLocked: 500,
    StoreWriteFailed: 500,
    CaptionFileError: 500,
    ConversionError: 500,
    ServeFailed: 500,
    RayNotInstalled: 500,
    ShardFailed: 500,
    RuntimeUnsupported: 500,  # never leaves search: it falls back to the torch model
}


def status_of(exc: BaseException) -> int:
    """The HTTP status that answers `exc`: its class's row, else its nearest ancestor's; an
    HTTPException's own status; 500 for anything the table does not know."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    for kind in type(exc).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return 500


def error_body(exc: BaseException) -> dict[str, str]:
    """The JSON body that answers `exc`: {"detail": a message for a person}."""
    if isinstance(exc, RequestValidationError):
        return {"detail": validation_message(exc.errors())}
    if isinstance(exc, HTTPException):
        return {"detail": str(exc.detail)}
    if isinstance(exc, tuple(STATUS_OF)):
        return {"detail": str(exc)}
    return {"detail": f"internal error ({type(exc).__name__}); the server's log has the details."}


async def _answer(request: Request, exc: Exception) -> Response:
    status = status_of(exc)
    if not isinstance(exc, (HTTPException, *STATUS_OF)):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    elif status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    headers = getattr(exc, "headers", None)  # an HTTPException's: 405's Allow
    if not is_body_allowed_for_status_code(status):
        return Response(status_code=status, headers=headers)
    return JSONResponse(error_body(exc), status_code=status, headers=headers)


def add_error_handler(app: FastAPI) -> None:
    """Answer every error of `app` with _answer: the table's classes, HTTPException, and (as
    a 500) anything else."""
    for kind in (*STATUS_OF, HTTPException, Exception):
        app.add_exception_handler(kind, _answer)


# ---- request validation, in words -----------------------------------------------------------

_WHERE = ("body", "query", "path", "header", "cookie")  # FastAPI's first element of `loc`
_NAMES = {"image_id": "the image id"}  # a path parameter, named as docs/api.md names it


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors (a list of {type, loc, msg, ctx}) as sentences, one per error, in order."""
    sentences: list[str] = []
    for error in errors:
        sentence = _sentence(error)
        if sentence not in sentences:
            sentences.append(sentence)
    return "; ".join(sentences) + "." if sentences else "the request is not valid."


def _field(loc: tuple | list) -> str:
    """("body", "ids", 3) --> "ids[3]"; ("path", "image_id") --> "the image id"."""
    parts = list(loc[1:] if loc and loc[0] in _WHERE else loc)
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return _NAMES.get(name, name)


_LIMIT = {
    "string_too_long": "max_length",
    "string_too_short": "min_length",
    "too_long": "max_length",
    "too_short": "min_length",
    "greater_than_equal": "ge",
    "greater_than": "gt",
    "less_than_equal": "le",
    "less_than": "lt",
}  # the error type --> which of its ctx values is the limit


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _sentence(error: Mapping[str, Any]) -> str:
    name = _field(error.get("loc", ()))
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    message = str(error.get("msg", "")).rstrip(".")
    if not name:  # about the body as a whole (uploads.malformed: already a sentence)
        return message
    limit = _number(ctx.get(_LIMIT.get(kind, ""), ""))
    said = {
        "missing": f"{name} is required",
        "extra_forbidden": f"{name} is not a field of this request (docs/api.md lists them)",
        "string_too_long": f"{name} is too long: at most {limit} characters",
        "string_too_short": (
            f"{name} is empty" if ctx.get("min_length") == 1 else f"{name} is too short: at least {limit} characters"
        ),
        "too_long": f"{name} has too many items: at most {limit}",
        "too_short": f"{name} has too few items: at least {limit}",
        "greater_than_equal": f"{name} must be at least {limit}",
        "greater_than": f"{name} must be more than {limit}",
        "less_than_equal": f"{name} must be at most {limit}",
        "less_than": f"{name} must be less than {limit}",
        "int_parsing": f"{name} must be a whole number",
        "int_parsing_size": f"{name} must be a whole number",
        "int_type": f"{name} must be a whole number",
        "int_from_float": f"{name} must be a whole number",
        "float_parsing": f"{name} must be a number",
        "float_type": f"{name} must be a number",
        "finite_number": f"{name} must be a finite number",
        "bool_parsing": f"{name} must be true or false",
        "bool_type": f"{name} must be true or false",
        "string_type": f"{name} must be text",
        "string_unicode": f"{name} must be text",
        "list_type": f"{name} must be a list",
    }
    return said.get(kind, f"{name}: {message}")


# ---- OpenAPI -------------------------------------------------------------------------------

_SAID = {
    400: "a bad parameter, or a body that is not well-formed (the detail says which)",
    404: "no such image, or a file the index may not or can no longer serve",
    413: "the upload is too large",
    415: "the upload is not a usable image, or the body is neither JSON nor a form",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that can answer these error statuses. Each, and any other
    error ("default"; it also keeps FastAPI from documenting a 422 it never sends), has the
    body {"detail": "message"}."""
    described: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody, "description": _SAID[status]} for status in statuses
    }
    described["default"] = {"model": ErrorBody, "description": "any other error, with the same body"}
    return described
