"""The HTTP API's one error table (imgsearch/server/http_errors.py; docs/api.md, Errors; issue 21 item 8).

Every exception class of imgsearch.ground.errors, found by introspection, must have its own row: a new
error class without one fails here. Each is raised where a real request meets the library (the
shared Index's refresh, before every endpoint) and must come back with its row's status and
`{"detail": its message}`; docs/api.md's table must say the same as the code's. Then real routes
over a small real index answer real bad input with the documented status and a sentence.
"""

from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

import pytest
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient

import imgsearch.ground.errors
from imgsearch import Index
from imgsearch.ground.errors import ImageNotFound, InvalidImage, InvalidQuery
from imgsearch.server.app import create_app
from imgsearch.server.http_errors import STATUS_OF

ROOT = Path(__file__).parents[1]
PHOTOS = ROOT / "data" / "photos"
ERROR_CLASSES = [
    value
    for _, value in inspect.getmembers(imgsearch.ground.errors, inspect.isclass)
    if issubclass(value, BaseException) and value.__module__ == imgsearch.ground.errors.__name__
]


def test_every_error_class_of_the_library_has_its_own_row():
    assert (
        len(ERROR_CLASSES) >= 20 and imgsearch.ground.errors.ImgsearchError in ERROR_CLASSES
    )  # introspection finds them
    missing = sorted(kind.__name__ for kind in ERROR_CLASSES if kind not in STATUS_OF)
    assert not missing, f"add these to STATUS_OF (imgsearch/server/http_errors.py) and docs/api.md: {missing}"


class Raising:
    """An Index whose refresh (the first library call of every request) raises `error`."""

    def __init__(self, directory: Path, error: BaseException) -> None:
        self.directory = directory
        self.error = error

    def refresh_if_changed(self):
        raise self.error


def _answer(tmp_path: Path, error: BaseException, path: str = "/api/health"):
    with TestClient(create_app(Raising(tmp_path, error)), raise_server_exceptions=False) as client:
        return client.get(path)


@pytest.mark.parametrize("kind", ERROR_CLASSES, ids=lambda kind: kind.__name__)
def test_each_error_class_answers_its_status_and_its_message(tmp_path, kind):
    message = f"{kind.__name__} happened at /some/place; do the next thing."
    response = _answer(tmp_path, kind(message))
    assert response.status_code == STATUS_OF[kind], response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": message}


def test_a_subclass_answers_as_its_parent_and_anything_else_is_a_500_that_hides_its_message(tmp_path):
    class NotAPhoto(InvalidImage):
        pass

    class Gone(ImageNotFound):
        pass

    assert _answer(tmp_path, NotAPhoto("not a photo.")).status_code == 415
    assert _answer(tmp_path, Gone("gone.")).json() == {"detail": "gone."}
    crashed = _answer(tmp_path, KeyError("/secret/place"))
    assert crashed.status_code == 500 and "/secret/place" not in crashed.text
    assert crashed.json() == {"detail": "internal error (KeyError); the server's log has the details."}


def _documented() -> dict[str, int]:
    """docs/api.md's error table: error type name --> status (rows whose first cell names types)."""
    text = (ROOT / "docs" / "api.md").read_text()
    section = text[text.index("### Errors") :]
    section = section[: section.index("\n## ")]
    rows: dict[str, int] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`(\w+)`", cells[0]):
            assert name not in rows, f"{name} is in docs/api.md's error table twice"
            rows[name] = int(cells[1])
    return rows


def test_the_docs_table_says_what_the_code_does():
    assert _documented() == {kind.__name__: status for kind, status in STATUS_OF.items()}


def test_request_validation_answers_as_the_library_s_own_checks():
    assert STATUS_OF[RequestValidationError] == STATUS_OF[InvalidQuery] == 400


# ---- real routes, real bad input ---------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("http-errors") / "photos"
    folder.mkdir()
    for name in ("cat.jpg", "dog.jpg", "owl.jpg"):
        shutil.copyfile(PHOTOS / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def index(photos):
    with Index.create(photos.parent / "index", device="cpu") as index:
        assert index.add([photos], workers=0).added == 3
        yield index


@pytest.fixture(scope="module")
def client(index):
    with TestClient(create_app(index)) as client:
        yield client


def _ids(index) -> dict[str, int]:
    return {Path(result.path).name: result.id for result in index.search("a photo", k=10)}


def _refused(response, status: int, *said: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for words in said:
        assert words in detail, detail


@pytest.mark.parametrize("suffix", ["", "/info", "/thumbnail", "/explain?query=a+cat", "/explain.png?query=a+cat"])
def test_an_image_the_index_does_not_hold_is_404(client, suffix):
    _refused(client.get(f"/api/images/999999{suffix}"), STATUS_OF[ImageNotFound], "999999")


def test_an_image_id_that_is_not_one_is_400(client):
    _refused(client.get("/api/images/abc/info"), 400, "the image id must be a whole number.")
    _refused(client.get("/api/images/0/thumbnail"), 400, "the image id must be at least 1.")


def test_an_upload_that_does_not_decode_is_415_on_every_route_that_takes_one(client):
    notes = b"just some notes, not a photo\n"
    _refused(
        client.post("/api/search", files={"image": ("notes.jpg", notes, "image/jpeg")}),
        STATUS_OF[InvalidImage],
        "not an image",
    )
    _refused(
        client.post("/api/rerank", data={"query": "a cat"}, files={"images": ("notes.jpg", notes, "image/jpeg")}),
        STATUS_OF[InvalidImage],
        "not an image",
    )


def test_an_indexed_file_that_no_longer_decodes_is_404_not_415(client, index, photos):
    """Not the client's upload: an image the index cannot serve any more (ImageNotFound)."""
    owl = _ids(index)["owl.jpg"]
    kept = (photos / "owl.jpg").read_bytes()
    (photos / "owl.jpg").write_bytes(b"no longer a photo")
    try:
        for suffix in ("/thumbnail", "/explain.png?query=an+owl"):
            _refused(
                client.get(f"/api/images/{owl}{suffix}"),
                404,
                f"image {owl}'s file no longer decodes",
                "imgsearch index",
            )
    finally:
        (photos / "owl.jpg").write_bytes(kept)


def test_a_query_too_long_is_400_in_words_wherever_it_is_given(client, index):
    long = "a cat " * 200  # 1,200 characters
    said = "query is too long: at most 1,000 characters."
    cat = _ids(index)["cat.jpg"]
    _refused(client.post("/api/search", json={"query": long}), 400, said)
    _refused(client.post("/api/search", data={"query": long}), 400, said)
    _refused(client.post("/api/rerank", json={"query": long, "ids": [cat]}), 400, said)
    _refused(client.get(f"/api/images/{cat}/explain", params={"query": long}), 400, said)
    _refused(client.get(f"/api/images/{cat}/explain.png", params={"query": long}), 400, said)


@pytest.mark.parametrize(
    "k, said", [(0, "k must be at least 1"), (201, "k must be at most 200"), ("many", "k must be a whole number")]
)
def test_a_bad_k_is_400_as_the_library_s_own_check_is(client, index, k, said):
    _refused(client.post("/api/search", json={"query": "a cat", "k": k}), 400, said)
    _refused(client.post("/api/search", data={"query": "a cat", "k": str(k)}), 400, said)
    with pytest.raises(InvalidQuery, match="k must be at least 1"):  # the library says the same, as InvalidQuery
        index.search("a cat", k=0)


def test_a_bad_parameter_the_library_finds_is_400_with_its_message(client):
    _refused(client.post("/api/search", json={"query": "a cat", "taken_after": "last tuesday"}), 400, "taken_after")
    _refused(client.post("/api/search", json={}), 400, "query")
