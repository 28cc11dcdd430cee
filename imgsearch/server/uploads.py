"""Serving stage, request bodies: read under a size cap, then JSON or a form, all in memory.

Starlette's own form parser spools files over 1 MB to a temporary file; an upload here
is never written to disk (docs/api.md, Security), so the body is read into memory, at
most `limit` bytes (the Content-Length is checked first, then the bytes are counted as
they arrive), and multipart/form-data is parsed from that with python-multipart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["Body", "UploadedFile", "FORM_OVERHEAD", "malformed", "read_body", "parse_body", "too_large"]

FORM_OVERHEAD = 64 * 1024  # bytes a body may hold beyond its files: form fields and multipart framing
MAX_PARTS = 64  # fields and files in one multipart body


@dataclass(frozen=True)
class UploadedFile:
    field: str  # the form field's name ("image", "images")
    filename: str | None
    data: bytes


@dataclass
class Body:
    fields: dict[str, Any] = field(default_factory=dict)  # a JSON object, or the form's text fields
    files: list[UploadedFile] = field(default_factory=list)
    form: bool = False  # a form (multipart or urlencoded): every field is text

    def files_named(self, name: str) -> list[UploadedFile]:
        return [upload for upload in self.files if upload.field == name]


def malformed(message: str) -> RequestValidationError:
    """A body that is not well-formed: a request validation failure like a field out of range
    (a 400 whose detail is `message`, http_errors.py)."""
    return RequestValidationError([{"type": "malformed_body", "loc": ("body",), "msg": message, "input": None}])


def too_large(size: int | None, limit: int) -> HTTPException:
    sent = "" if size is None else f" ({_megabytes(size)})"
    return HTTPException(
        413,
        f"the upload is too large{sent}; the limit is {_megabytes(limit)}. "
        "Send a smaller image (resize it or save it as JPEG).",
    )


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size:,} bytes"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it is over `limit` + FORM_OVERHEAD bytes (the
    limit is on uploads; a body also holds fields and framing): at once when the Content-Length
    says so, else as soon as the bytes received pass it."""
    most = limit + FORM_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, "the Content-Length header is not a number of bytes.")
        if int(declared) > most:
            raise too_large(int(declared), limit)
    chunks, received = [], 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > most:
            raise too_large(None, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(content_type: str | None, body: bytes) -> Body:
    """A JSON object or a multipart form; any other content type is a 415."""
    kind, params = parse_options_header(content_type or "")
    if kind == b"application/json":
        return Body(fields=_json_object(body))
    if kind == b"multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise malformed("the multipart/form-data Content-Type has no boundary.")
        return _parse_multipart(boundary, body)
    if kind == b"application/x-www-form-urlencoded":  # an HTML form without files, `curl -d`
        return _parse_urlencoded(body)
    shown = (content_type or "none").split(";")[0]
    raise HTTPException(
        415,
        f"the request body's Content-Type is {shown}; send application/json, "
        "or multipart/form-data to upload an image.",
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise malformed(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise malformed('the JSON body must be an object, e.g. {"query": "a dog on a beach"}.')
    return value


def _parse_urlencoded(body: bytes) -> Body:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_PARTS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise malformed(f"the form body is malformed: {exc}") from None
    parsed = Body(form=True)
    for name, value in pairs:
        if name in parsed.fields:
            raise malformed(f"the form field {name!r} is given twice; give it once.")
        parsed.fields[name] = value
    return parsed


class _PartCollector:
    """python-multipart callbacks --> the parts of one body: their headers and bytes."""

    def __init__(self) -> None:
        self.parts: list[tuple[list[tuple[bytes, bytes]], bytearray]] = []
        self.finished = False
        self._name = self._value = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_part_data": self._data,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise malformed(f"the form has more than {MAX_PARTS} parts.")
        self.parts.append(([], bytearray()))

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1][1].extend(data[start:end])

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self.parts[-1][0].append((self._name.lower(), self._value))
        self._name = self._value = b""

    def _end(self) -> None:
        self.finished = True


def _parse_multipart(boundary: bytes, body: bytes) -> Body:
    collector = _PartCollector()
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise malformed(f"the multipart/form-data body is malformed: {exc}") from None
    if not collector.finished:
        raise malformed("the multipart/form-data body ends before its closing boundary.")
    parsed = Body(form=True)
    for headers, data in collector.parts:
        _add_part(parsed, dict(headers), bytes(data))
    return parsed


def _add_part(parsed: Body, headers: dict[bytes, bytes], data: bytes) -> None:
    """One form part into `parsed`: a file when its Content-Disposition has a filename."""
    _, options = parse_options_header(headers.get(b"content-disposition", b""))
    if b"name" not in options:
        raise malformed("a multipart part has no name (Content-Disposition: form-data; name=...).")
    name = _text(options[b"name"], "a field name")
    if b"filename" in options:
        if not data and not options[b"filename"]:
            return  # a browser's file input with no file chosen
        parsed.files.append(UploadedFile(name, _text(options[b"filename"], "a file name"), data))
        return
    if name in parsed.fields:
        raise malformed(f"the form field {name!r} is given twice; give it once.")
    parsed.fields[name] = _text(data, f"the form field {name!r}")


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed(f"{what} is not UTF-8 text.") from None
