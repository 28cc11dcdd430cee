"""The HTTP API (imgsearch/server, docs/api.md) over a real index of the 24 sample photos.

Oracles: every endpoint is one library call, so the API must answer what the call answers
on the same arguments (ids, order, scores); thumbnails are checked by decoding them and
by the cache files on disk; `serve` is run as a real process.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import selectors
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgsearch import Index
from imgsearch.server.app import CONTENT_SECURITY_POLICY, create_app
from imgsearch.server.run import is_loopback
from imgsearch.server.thumbnails import THUMBNAIL_SIDE, ThumbnailCache

PHOTOS = Path(__file__).parents[1] / "data" / "photos"
IN_SUB = ("owl.jpg", "bird.jpg", "parrot.jpg")  # moved into photos/birds/ for the folder filter
TAKEN_2023 = ("cat.jpg", "dog.jpg", "sunflower.jpg")  # mtime in 2023; every other photo 2020
COMPARED = ("id", "path", "rank", "first_stage_rank", "width", "height", "taken_at", "labels")
SCORES = ("score", "first_stage_score", "rerank_score", "zero_shot_score")


def _timestamp(year: int) -> float:
    return dt.datetime(year, 6, 1, 12, 0, 0).timestamp()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A copy of data/photos: three birds in a subfolder, known modification times."""
    folder = tmp_path_factory.mktemp("server") / "photos"
    (folder / "birds").mkdir(parents=True)
    for source in sorted(PHOTOS.glob("*.jpg")):
        target = folder / ("birds" if source.name in IN_SUB else "") / source.name
        shutil.copyfile(source, target)
        year = 2023 if source.name in TAKEN_2023 else 2020
        os.utime(target, (_timestamp(year), _timestamp(year)))
    return folder


@pytest.fixture(scope="module")
def index(photos):
    with Index.create(photos.parent / "index", device="cpu") as index:
        summary = index.add([photos], workers=0)
        assert (summary.added, summary.failed) == (24, 0)
        yield index


@pytest.fixture(scope="module")
def client(index):
    with TestClient(create_app(index)) as client:
        yield client


def _id_of(index, name: str) -> int:
    [result] = [r for r in index.search("a photo", k=24, collapse_duplicates=False) if Path(r.path).name == name]
    return result.id


def _same(items: list[dict], results) -> None:
    """API items equal library results: the same images in the same order with the same scores."""
    assert [item["id"] for item in items] == [r.id for r in results]
    for item, result in zip(items, results):
        expected = result.to_dict()
        assert {key: item[key] for key in COMPARED} == {key: expected[key] for key in COMPARED}
        for key in SCORES:
            if expected[key] is None:
                assert item[key] is None, key
            else:
                assert item[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-6), key
        assert item["thumbnail_url"] == f"/api/images/{result.id}/thumbnail"
        assert item["image_url"] == f"/api/images/{result.id}"


def _search(client, **fields) -> dict:
    response = client.post("/api/search", json=fields)
    assert response.status_code == 200, response.text
    return response.json()


# ---- search ---------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["a cat", "a dog running in the water", "cars on a highway"])
def test_text_search_equals_the_library(client, index, query):
    body = _search(client, query=query, k=5)
    _same(body["items"], index.search(query, k=5))
    assert body["reranked"] is True
    assert set(body["timings_ms"]) == {"encode", "vector_search", "first_stage", "rerank", "total"}
    assert body["next_cursor"] == "5"


def test_search_without_rerank_and_with_fewer_candidates_equals_the_library(client, index):
    _same(_search(client, query="a cat", k=4, rerank=False)["items"], index.search("a cat", k=4, rerank=False))
    _same(_search(client, query="a cat", k=4, candidates=6)["items"], index.search("a cat", k=4, candidates=6))


def test_multipart_fields_give_what_json_gives(client):
    as_json = _search(client, query="a hot dog", k=6, rerank="false")
    as_form = client.post(
        "/api/search",
        data={"query": "a hot dog", "k": "6", "rerank": "false", "folder": ""},
        files={"unused": ("", b"")},
    )  # an empty file input, as a browser sends it
    assert as_form.status_code == 200, as_form.text
    assert [i["id"] for i in as_form.json()["items"]] == [i["id"] for i in as_json["items"]]
    assert [i["score"] for i in as_form.json()["items"]] == [i["score"] for i in as_json["items"]]


def test_photo_upload_search_equals_the_library(client, index, photos):
    data = (photos / "cat.jpg").read_bytes()
    response = client.post("/api/search", data={"k": "5"}, files={"image": ("cat.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    _same(body["items"], index.search(image=data, k=5))
    assert body["reranked"] is False and all(item["rerank_score"] is None for item in body["items"])
    assert Path(body["items"][0]["path"]).name in ("cat.jpg", "cat_720p.jpg")  # the photo itself, or its twin


def test_more_like_this_equals_the_library_and_leaves_the_image_out(client, index):
    dog = _id_of(index, "dog.jpg")
    body = _search(client, like=dog, k=8)
    _same(body["items"], index.search(like=dog, k=8))
    assert dog not in [item["id"] for item in body["items"]]


def test_filters_equal_the_library(client, index, photos):
    birds = str(photos / "birds")
    body = _search(client, query="a bird", folder=birds, k=10)
    _same(body["items"], index.search("a bird", k=10, under=birds))
    assert sorted(Path(i["path"]).name for i in body["items"]) == sorted(IN_SUB)

    body = _search(client, query="an animal", taken_after="2023-01-01", k=10)
    _same(body["items"], index.search("an animal", k=10, taken_after="2023-01-01"))
    assert sorted(Path(i["path"]).name for i in body["items"]) == sorted(TAKEN_2023)

    body = _search(client, query="an animal", taken_before="2020-06-01", k=30)
    assert len(body["items"]) == 24 - len(TAKEN_2023)  # a date as the upper bound includes that whole day

    everything = index.search("a cat", k=24)
    threshold = everything[5].relevance  # min_score is on the relevance scale (the packaged model's calibration)
    body = _search(client, query="a cat", min_score=threshold, k=24)
    _same(body["items"], index.search("a cat", k=24, min_score=threshold))
    assert len(body["items"]) == sum(r.relevance >= threshold for r in everything) >= 6


def test_pages_follow_the_cursor_and_add_up_to_one_long_page(client, index):
    ids, cursor, pages = [], None, 0
    while True:
        body = _search(client, query="a dog", k=7, **({"cursor": cursor} if cursor else {}))
        ids += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 4 and ids == [r.id for r in index.search("a dog", k=24)]
    by_page = _search(client, query="a dog", k=7, page=2)
    _same(by_page["items"], index.search("a dog", k=7, offset=7))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({}, "query"),  # none of query, like, image
        ({"query": "a cat", "like": 1}, "query"),  # two of them
        ({"query": "   "}, "empty"),
        ({"query": "a cat", "cursor": "abc"}, "cursor"),
        ({"query": "a cat", "cursor": "5", "page": 2}, "not both"),
        ({"query": "a cat", "taken_after": "last tuesday"}, "taken_after"),
        ({"query": "a cat", "folder": "Pictures/2021"}, "absolute path"),
    ],
)
def test_bad_parameters_are_400_with_a_message(client, fields, message):
    response = client.post("/api/search", json=fields)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"query": "a cat", "k": 0}, "k must be at least 1."),
        ({"query": "a cat", "k": 201}, "k must be at most 200."),
        ({"query": "a cat", "colour": "red"}, "colour is not a field of this request"),
        ({"query": "a cat", "like": "three"}, "like must be a whole number."),
        ({"query": "a cat" * 201}, "query is too long: at most 1,000 characters."),
    ],
)
def test_fields_that_fail_validation_are_400_like_the_library_s_checks(client, fields, message):
    """Request validation answers as InvalidQuery does (docs/api.md, Errors): 400, a sentence."""
    response = client.post("/api/search", json=fields)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def test_concurrent_searches_answer_what_one_at_a_time_answers(client):
    queries = ["a cat", "a parrot", "a sunflower", "a couple walking in the snow"] * 4
    alone = {q: _search(client, query=q, k=5)["items"] for q in set(queries)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda q: _search(client, query=q, k=5)["items"], queries))
    for query, items in zip(queries, together):
        assert [i["id"] for i in items] == [i["id"] for i in alone[query]]
        assert [i["score"] for i in items] == pytest.approx([i["score"] for i in alone[query]], rel=1e-5)


# ---- rerank and explain -------------------------------------------------------------------


def test_rerank_equals_the_library(client, index):
    ids = [_id_of(index, name) for name in ("dog.jpg", "cat.jpg", "pets.jpg", "owl.jpg")]
    response = client.post("/api/rerank", json={"query": "a dog", "ids": ids})
    assert response.status_code == 200, response.text
    _same(response.json()["items"], index.rerank("a dog", ids))
    as_form = client.post("/api/rerank", data={"query": "a dog", "ids": ",".join(map(str, ids))})
    assert as_form.json()["items"] == response.json()["items"]


def test_rerank_of_an_upload_scores_it_as_its_indexed_copy(client, index, photos):
    """cat.jpg (512x341) is decoded at full size by the indexer too, so the upload is the same image."""
    cat = _id_of(index, "cat.jpg")
    data = (photos / "cat.jpg").read_bytes()
    response = client.post(
        "/api/rerank", data={"query": "a cat", "ids": str(cat)}, files=[("images", ("upload.jpg", data, "image/jpeg"))]
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    [indexed] = [i for i in items if i["id"] == cat]
    [uploaded] = [i for i in items if i["id"] is None]
    assert uploaded["thumbnail_url"] is None and uploaded["image_url"] is None
    assert uploaded["score"] == pytest.approx(indexed["score"], rel=1e-3, abs=1e-3)


def test_explain_equals_the_library_and_its_weights_sum_to_one(client, index):
    owl = _id_of(index, "owl.jpg")
    response = client.get(f"/api/images/{owl}/explain", params={"query": "an owl in a tree"})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = index.explain("an owl in a tree", owl).to_dict()
    rows, cols = body["grid"]
    assert [rows, cols] == list(expected["grid"]) and body["image_id"] == owl
    assert [w["word"] for w in body["words"]] == [w["word"] for w in expected["words"]] == ["owl", "tree"]
    for word, oracle in zip(body["words"], expected["words"]):
        assert len(word["weights"]) == rows * cols
        assert sum(word["weights"]) == pytest.approx(1.0, abs=1e-4)
        assert word["weights"] == pytest.approx(oracle["weights"], abs=1e-6)


def test_explain_png_is_a_heatmap_over_the_upright_image(client, index):
    owl = _id_of(index, "owl.jpg")
    body = client.get(f"/api/images/{owl}/explain", params={"query": "an owl"}).json()
    assert [w["word"] for w in body["words"]] == ["owl"]
    response = client.get(body["words"][0]["overlay_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    heatmap = Image.open(io.BytesIO(response.content))
    assert heatmap.format == "PNG" and heatmap.size == (512, 384)  # owl.jpg is 512x384: never enlarged
    too_far = client.get(f"/api/images/{owl}/explain.png", params={"query": "an owl", "word": 1})
    assert too_far.status_code == 400 and "out of range" in too_far.json()["detail"]


# ---- files -------------------------------------------------------------------------------


def test_original_file_is_served_as_it_is(client, index, photos):
    parrot = _id_of(index, "parrot.jpg")
    response = client.get(f"/api/images/{parrot}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content == (photos / "birds" / "parrot.jpg").read_bytes()


def test_image_info_is_what_the_index_holds(client, index):
    parrot = _id_of(index, "parrot.jpg")
    info = client.get(f"/api/images/{parrot}/info").json()
    assert {k: v for k, v in info.items() if not k.endswith("_url")} == index.image_info(parrot)
    searched = [
        item
        for item in client.post("/api/search", json={"query": "a parrot", "k": 24}).json()["items"]
        if item["id"] == parrot
    ][0]
    assert {k: searched[k] for k in info} == info  # the same facts a search result gives
    assert client.get("/api/images/999999/info").status_code == 404


def _cache_files(index) -> set[Path]:
    return set((index.directory / "thumbnails").rglob("*.jpg"))


@pytest.mark.parametrize("name", ["parrot.jpg", "cat_720p.jpg", "dog.jpg", "cityscapes.jpg"])
def test_thumbnail_is_a_small_jpeg_of_the_same_shape(client, index, photos, name):
    response = client.get(f"/api/images/{_id_of(index, name)}/thumbnail")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    width, height = Image.open(next(photos.rglob(name))).size
    longest = min(THUMBNAIL_SIDE, max(width, height))  # a smaller image (dog.jpg, 128x128) keeps its size
    assert thumb.format == "JPEG" and max(thumb.size) == longest
    assert thumb.size[0] / thumb.size[1] == pytest.approx(width / height, rel=0.01)


def test_thumbnail_is_cached_then_renewed_when_the_file_changes(client, index, photos):
    path, image_id = photos / "dragonfly.jpg", _id_of(index, "dragonfly.jpg")
    url = f"/api/images/{image_id}/thumbnail"
    before = _cache_files(index)
    first = client.get(url)
    [made] = _cache_files(index) - before
    facts = made.stat()
    second = client.get(url)
    assert second.content == first.content and second.headers["etag"] == first.headers["etag"]
    assert made.stat().st_mtime_ns == facts.st_mtime_ns and made.stat().st_ino == facts.st_ino  # not rewritten
    assert client.get(url, headers={"If-None-Match": first.headers["etag"]}).status_code == 304

    os.utime(path, ns=(facts.st_atime_ns, path.stat().st_mtime_ns + 10**9))
    third = client.get(url)
    assert third.status_code == 200 and third.headers["etag"] != first.headers["etag"]
    [renewed] = _cache_files(index) - before
    assert renewed != made and not made.exists()  # the older version is dropped


def test_thumbnails_survive_a_restart(index):
    image_id = _id_of(index, "face.jpg")
    with TestClient(create_app(index)) as first:
        made = first.get(f"/api/images/{image_id}/thumbnail").content
    facts = {p: p.stat().st_mtime_ns for p in _cache_files(index)}
    with TestClient(create_app(index)) as second:
        assert second.get(f"/api/images/{image_id}/thumbnail").content == made
    assert {p: p.stat().st_mtime_ns for p in _cache_files(index)} == facts


def test_thumbnail_follows_exif_orientation(tmp_path):
    """A 60x20 image stored with EXIF orientation 6 (turn 90 degrees) is 20x60 upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    Image.new("RGB", (600, 200), (200, 30, 30)).save(path, exif=exif)
    thumb = Image.open(io.BytesIO(ThumbnailCache(tmp_path / "cache").get(path).jpeg))
    assert thumb.size[1] == THUMBNAIL_SIDE and thumb.size[0] == pytest.approx(THUMBNAIL_SIDE * 200 / 600, abs=1)


def test_thumbnails_are_served_when_the_cache_cannot_be_written(tmp_path, photos):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    thumb = ThumbnailCache(blocked / "thumbnails").get(photos / "birds" / "owl.jpg")
    assert Image.open(io.BytesIO(thumb.jpeg)).size == (320, 240)


# ---- the index, the page, the docs --------------------------------------------------------


def test_index_info_and_health(client, index):
    assert client.get("/api/index").json() == json.loads(json.dumps(index.info()))
    assert client.get("/api/health").json() == {"status": "ok", "images": 24}


def test_page_is_served_at_root(index, tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>imgsearch</title><script src=app.js></script>")
    (tmp_path / "app.js").write_text("console.log('hi')")
    with TestClient(create_app(index, static_dir=tmp_path)) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<title>imgsearch</title>" in page.text
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert client.get("/app.js").text == "console.log('hi')"


def test_root_says_when_the_page_is_missing(index, tmp_path):
    with TestClient(create_app(index, static_dir=tmp_path / "nothing")) as client:
        page = client.get("/")
        assert page.status_code == 404 and "web page is not installed" in page.text
        assert client.get("/api/health").status_code == 200


def test_openapi_documents_json_and_multipart_bodies(client):
    schema = client.get("/openapi.json").json()
    for path, upload in (("/api/search", "image"), ("/api/rerank", "images")):
        content = schema["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}
        assert upload in content["multipart/form-data"]["schema"]["properties"]
        assert "query" in content["application/json"]["schema"]["properties"]
    assert {
        "/api/images/{image_id}/thumbnail",
        "/api/images/{image_id}/explain.png",
        "/api/index",
        "/api/health",
    } <= set(schema["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200
    # The docs render offline: Swagger UI's own files are served here, and nothing is loaded from elsewhere.
    assert "cdn" not in docs.text.lower() and "https://" not in docs.text
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in docs.text and client.get(asset).status_code == 200


# ---- a writer beside the server -------------------------------------------------------------


def test_images_a_concurrent_writer_commits_are_found_without_a_restart(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(PHOTOS / "cat.jpg", folder / "cat.jpg")
    with Index.create(tmp_path / "index", device="cpu") as served:
        served.add([folder], workers=0)
        with TestClient(create_app(served)) as client:
            assert client.get("/api/health").json()["images"] == 1
            shutil.copyfile(PHOTOS / "sunflower.jpg", folder / "sunflower.jpg")
            with Index.open(tmp_path / "index", device="cpu") as writer:  # as `imgsearch index` would
                writer.add([folder], workers=0)
            items = _search(client, query="a sunflower", k=2)["items"]
            assert Path(items[0]["path"]).name == "sunflower.jpg"
            assert client.get(items[0]["thumbnail_url"]).status_code == 200
            assert client.get("/api/health").json()["images"] == 2


# ---- serve ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("photos.example", False),
    ],
)
def test_only_loopback_hosts_count_as_private(host, loopback):
    assert is_loopback(host) is loopback


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"serve printed nothing in {timeout} s")
    return process.stdout.readline()


def test_serve_prints_its_url_and_answers_there(index):
    code = f"from imgsearch.server.run import serve; serve({str(index.directory)!r}, port=0, device='cpu')"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        line = _first_line(process, timeout=300)
        assert line.startswith(f"imgsearch: serving {index.directory} at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        assert httpx.get(url + "api/health", timeout=60).json() == {"status": "ok", "images": 24}
        assert httpx.get(url + "api/health", timeout=60).headers["x-content-type-options"] == "nosniff"
        rebound = httpx.get(url + "api/health", headers={"Host": "attacker.example"}, timeout=60)
        assert rebound.status_code == 400  # DNS rebinding: only this machine's own names are answered
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    assert "no authentication" not in stderr


def test_serve_warns_when_bound_beyond_this_machine(index, monkeypatch, caplog, capsys):
    import uvicorn

    from imgsearch.server.run import serve

    ran = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: ran.append(sockets[0].getsockname()))
    serve(index.directory, host="0.0.0.0", port=0, device="cpu")
    assert ran and ran[0][0] == "0.0.0.0"
    assert "no authentication" in caplog.text and "every indexed photo" in caplog.text
    assert f"at http://0.0.0.0:{ran[0][1]}/" in capsys.readouterr().out


def test_serve_says_when_the_port_is_taken(index):
    import socket

    from imgsearch.ground.errors import ImgsearchError
    from imgsearch.server.run import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(ImgsearchError, match="pick another --port"):
            serve(index.directory, port=taken.getsockname()[1], device="cpu")


def test_a_query_that_is_not_english_comes_back_with_a_warning(client):
    french = client.post("/api/search", json={"query": "un chien qui court sur la plage", "k": 3}).json()
    assert len(french["items"]) == 3 and len(french["warnings"]) == 1
    assert "reads English" in french["warnings"][0] and "'fr'" in french["warnings"][0]
    assert client.post("/api/search", json={"query": "a dog running on the beach", "k": 3}).json()["warnings"] == []


def test_browse_pages_through_the_library_as_the_library_does(client, index):
    got, cursor, expected, offset = [], None, [], 0
    while True:
        body = client.get("/api/browse", params={"k": 10, **({"cursor": cursor} if cursor else {})}).json()
        got += body["items"]
        cursor = body["next_cursor"]
        items, offset = index.browse(k=10, offset=offset)  # page by page: copies fold within a page
        expected += items
        assert cursor == (None if offset is None else str(offset))
        if cursor is None:
            break
    assert [{k: v for k, v in item.items() if not k.endswith("_url")} for item in got] == expected
    assert all(item["thumbnail_url"] == f"/api/images/{item['id']}/thumbnail" for item in got)
    bad = client.get("/api/browse", params={"cursor": "abc"})
    assert bad.status_code == 400 and "cursor" in bad.json()["detail"]
