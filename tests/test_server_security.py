"""The HTTP API's security (docs/api.md, Security; issue 14 item 6), tested against a real index.

Files are served only by id and only from inside the indexed folders; traversal in the URL,
symbolic links out of those folders and ids that do not exist get 404; uploads are capped
(Content-Length first, then counted while read) and decoded with the indexer's guards; the
API is read-only; every response carries the security headers; nothing reflects input as HTML.
Some requests go straight into the ASGI app (call_asgi), so that no client tidies the path
("/a/../b") or adds a Content-Length on the way.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from urllib.parse import unquote

import anyio
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image

from imgsearch import Index
from imgsearch.server.app import CONTENT_SECURITY_POLICY, create_app
from imgsearch.server.run import local_names

PHOTOS = Path(__file__).parents[1] / "data" / "photos"
SECRET = b"TOP SECRET: not a file the server may show"
CAP = 10_000  # bytes of upload, for the small-cap app
SCRIPT_FOLDER, SCRIPT_FILE = "<script>alert(1)<", "script>.jpg"  # together: .../<script>alert(1)</script>.jpg


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """indexed/: photos, a link to a photo inside, a link to a photo outside (outside/), a file
    whose path holds <script>; site/: a web page; secret.txt beside them."""
    root = tmp_path_factory.mktemp("security")
    indexed, outside = root / "indexed", root / "outside"
    (indexed / SCRIPT_FOLDER).mkdir(parents=True)
    outside.mkdir()
    for name in ("cat.jpg", "dog.jpg", "hot_dog.jpg", "owl.jpg", "parrot.jpg"):
        shutil.copyfile(PHOTOS / name, indexed / name)
    shutil.copyfile(PHOTOS / "sunflower.jpg", indexed / SCRIPT_FOLDER / SCRIPT_FILE)
    shutil.copyfile(PHOTOS / "grace_hopper.jpg", outside / "private.jpg")
    (indexed / "inside-link.jpg").symlink_to(indexed / "cat.jpg")
    (indexed / "outside-link.jpg").symlink_to(outside / "private.jpg")
    (root / "secret.txt").write_bytes(SECRET)
    (root / "site").mkdir()
    (root / "site" / "index.html").write_text("<!doctype html><title>imgsearch</title>")
    return root


@pytest.fixture(scope="module")
def index(tree):
    with Index.create(tree / "index", device="cpu") as index:
        summary = index.add([tree / "indexed"], workers=0)
        assert (summary.added, summary.failed) == (8, 0)
        yield index


@pytest.fixture(scope="module")
def app(index, tree):
    return create_app(index, static_dir=tree / "site")


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def ids(index) -> dict[str, int]:
    """File name --> image id, for every indexed file."""
    return {Path(r.path).name: r.id for r in index.search("a photo", k=50, collapse_duplicates=False)}


def _with_host(headers) -> list[tuple[str, str]]:
    headers = list(headers)
    return headers if any(name.lower() == "host" for name, _ in headers) else [("host", "testserver"), *headers]


def call_asgi(app, method: str, raw_path: str, headers=(), chunks=(b"",)) -> tuple[int, dict, bytes, int]:
    """One request straight into the app, the path as written (percent-decoded as uvicorn does,
    never normalised), the body in `chunks`: (status, headers, body, chunks the app read)."""
    path, _, query = raw_path.partition("?")
    chunks, read, sent = list(chunks), [0], []

    async def receive():
        if read[0] >= len(chunks):
            return {"type": "http.disconnect"}
        read[0] += 1
        return {"type": "http.request", "body": chunks[read[0] - 1], "more_body": read[0] < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in _with_host(headers)],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
    }
    anyio.run(app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body, read[0]


# ---- files by id only ------------------------------------------------------------------------

IMAGE_ENDPOINTS = ("", "/thumbnail", "/explain?query=a+cat", "/explain.png?query=a+cat&word=0")


@pytest.mark.parametrize("suffix", IMAGE_ENDPOINTS)
def test_ids_that_do_not_exist_are_404(client, suffix):
    for image_id in (999_999, 2**63 - 1):
        response = client.get(f"/api/images/{image_id}{suffix}")
        assert response.status_code == 404, response.text
        assert response.json()["detail"]


@pytest.mark.parametrize("image_id", ["abc", "1.5", "-1", "0", str(2**64), "1e3", "%00", "1;2"])
def test_ids_that_are_not_ids_are_refused(client, image_id):
    for suffix in IMAGE_ENDPOINTS:
        response = client.get(f"/api/images/{image_id}{suffix}")
        assert response.status_code in (400, 404), (image_id, suffix, response.status_code)
        assert isinstance(response.json()["detail"], str)


TRAVERSALS = [
    "/api/images/..%2f..%2fetc%2fpasswd",
    "/api/images/1/../../etc/passwd",
    "/api/images/1/..%2f..%2f..%2fsecret.txt",
    "/api/images/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/../../../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/..%2fsecret.txt",
    "/../secret.txt",
    "/site/../../secret.txt",
    "/..%5csecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/api/images/1/thumbnail/../../../../secret.txt",
    "//etc/passwd",
    "/api/../../secret.txt",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_never_reaches_a_file_outside(app, path):
    status, headers, body, _ = call_asgi(app, "GET", path)
    assert status in (400, 404, 405), (path, status)
    assert SECRET not in body and b"root:" not in body
    assert headers["content-type"].startswith("application/json")


def test_a_symlink_to_a_photo_outside_the_indexed_folders_is_indexed_but_never_served(client, index, ids, tree):
    private = (tree / "outside" / "private.jpg").read_bytes()
    link = ids["outside-link.jpg"]  # indexed: the indexer reads through links to files
    for suffix in IMAGE_ENDPOINTS[:2] + IMAGE_ENDPOINTS[3:]:
        response = client.get(f"/api/images/{link}{suffix}")
        assert response.status_code == 404, (suffix, response.status_code)
        assert private not in response.content
    inside = client.get(f"/api/images/{ids['inside-link.jpg']}")  # a link that stays inside is served
    assert inside.status_code == 200 and inside.content == (tree / "indexed" / "cat.jpg").read_bytes()


def test_a_file_turned_into_a_link_out_after_indexing_is_not_served(client, ids, tree):
    parrot = tree / "indexed" / "parrot.jpg"
    assert client.get(f"/api/images/{ids['parrot.jpg']}").status_code == 200
    parrot.unlink()
    parrot.symlink_to(tree / "outside" / "private.jpg")
    for suffix in ("", "/thumbnail"):
        assert client.get(f"/api/images/{ids['parrot.jpg']}{suffix}").status_code == 404


def test_a_file_gone_since_indexing_is_404_not_an_error(client, ids, tree):
    gone = tree / "indexed" / "owl.jpg"
    kept = gone.read_bytes()
    gone.unlink()
    try:
        for suffix in IMAGE_ENDPOINTS[:2] + IMAGE_ENDPOINTS[3:]:
            response = client.get(f"/api/images/{ids['owl.jpg']}{suffix}")
            assert response.status_code == 404, (suffix, response.text)
    finally:
        gone.write_bytes(kept)


# ---- uploads -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(index):
    return create_app(index, max_upload_bytes=CAP)


def _multipart(data: bytes, boundary: str = "b0undary") -> tuple[list[tuple[str, str]], bytes]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return [("content-type", f"multipart/form-data; boundary={boundary}")], body


def test_an_upload_under_the_cap_is_searched(capped):
    small = (PHOTOS / "dog.jpg").read_bytes()
    assert len(small) < CAP
    with TestClient(capped) as client:
        response = client.post("/api/search", files={"image": ("dog.jpg", small, "image/jpeg")})
    assert response.status_code == 200, response.text


def test_an_image_over_the_cap_is_413(capped):
    big = (PHOTOS / "hot_dog.jpg").read_bytes()
    assert CAP < len(big) < 60_000  # the body is within the form allowance: the image itself is counted
    with TestClient(capped) as client:
        response = client.post("/api/search", files={"image": ("hot_dog.jpg", big, "image/jpeg")})
    assert response.status_code == 413
    assert "too large" in response.json()["detail"] and "10,000 bytes" in response.json()["detail"]


def test_a_declared_content_length_over_the_cap_is_refused_before_reading(capped):
    headers, body = _multipart(b"x" * 200_000)
    status, _, answer, read = call_asgi(
        capped, "POST", "/api/search", headers=[*headers, ("content-length", str(len(body)))], chunks=[body]
    )
    assert status == 413 and read == 0
    assert "the limit is 10,000 bytes" in json.loads(answer)["detail"]


def test_a_body_without_content_length_is_counted_and_cut_off(capped):
    headers, body = _multipart(b"x" * 200_000)
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    status, _, _, read = call_asgi(capped, "POST", "/api/search", headers=headers, chunks=chunks)
    assert status == 413 and read < len(chunks) / 2  # stopped at the limit, not at the end


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """Single-colour PNGs, small on disk, huge in pixels: 400 MP (over Pillow's bomb limit)
    and 81 MP (over the indexer's pixel limit only)."""
    made = {}
    for name, side in (("20000", 20_000), ("9000", 9_000)):
        out = io.BytesIO()
        Image.new("1", (side, side), 1).save(out, "PNG")
        made[name] = out.getvalue()
    return made


@pytest.mark.parametrize("name", ["20000", "9000"])
def test_a_decompression_bomb_is_refused_with_a_clear_message(client, bombs, name):
    assert len(bombs[name]) < 200_000
    for path, field, extra in (("/api/search", "image", {}), ("/api/rerank", "images", {"query": "a cat"})):
        response = client.post(path, data=extra, files={field: ("bomb.png", bombs[name], "image/png")})
        assert response.status_code == 415, response.text
        assert "too large" in response.json()["detail"]


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"just some notes, not a photo\n", "not an image"),
        ((PHOTOS / "cat.jpg").read_bytes()[:3000], "truncated"),
        (b"", "empty"),
    ],
)
def test_an_upload_that_is_not_a_usable_image_is_415(client, payload, reason):
    response = client.post("/api/search", files={"image": ("notes.jpg", payload, "image/jpeg")})
    assert response.status_code == 415, response.text
    assert reason in response.json()["detail"]


def test_rerank_takes_a_bounded_number_of_uploads(client):
    tiny = (PHOTOS / "dog.jpg").read_bytes()
    response = client.post(
        "/api/rerank", data={"query": "a dog"}, files=[("images", (f"{i}.jpg", tiny, "image/jpeg")) for i in range(17)]
    )
    assert response.status_code == 400 and "at most 16" in response.json()["detail"]


def test_no_url_is_ever_fetched_for_an_image(client):
    url = "http://127.0.0.1:9/private.jpg"
    form = client.post("/api/search", data={"image": url})
    as_json = client.post("/api/search", json={"image": url})
    for response in (form, as_json):
        assert response.status_code == 415 and "uploaded file" in response.json()["detail"]
    assert client.post("/api/search", json={"like": url}).status_code == 400


def test_a_body_that_is_neither_json_nor_multipart_is_415(client):
    response = client.post("/api/search", content=b"a cat", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'--b\r\nContent-Disposition: form-data; name="q"'])
def test_a_malformed_body_is_400(client, body):
    kind = "multipart/form-data; boundary=b" if body.startswith(b"--") else "application/json"
    response = client.post("/api/search", content=body, headers={"content-type": kind})
    assert response.status_code == 400, response.text
    assert isinstance(response.json()["detail"], str)


# ---- read-only, methods, headers -----------------------------------------------------------------


def test_only_get_and_post_routes_exist(app):
    methods = set().union(*(route.methods for route in app.routes if isinstance(route, APIRoute)))
    assert methods <= {"GET", "HEAD", "POST"}


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize(
    "path",
    [
        "/api/search",
        "/api/rerank",
        "/api/images/1",
        "/api/images/1/thumbnail",
        "/api/health",
        "/api/index",
        "/",
        "/index.html",
    ],
)
def test_other_methods_are_405(client, method, path):
    assert client.request(method, path).status_code == 405


def _index_files(index) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(index.directory.iterdir())
        if path.is_file() and not path.name.endswith(("-wal", "-shm", ".lock"))
    }


def test_requests_never_change_the_index(client, index, ids):
    before = _index_files(index)
    client.post("/api/search", json={"query": "a cat"})
    client.post("/api/search", json={"like": ids["cat.jpg"]})
    client.post("/api/rerank", json={"query": "a dog", "ids": list(ids.values())})
    for suffix in IMAGE_ENDPOINTS:
        client.get(f"/api/images/{ids['dog.jpg']}{suffix}")
    client.get("/api/index")
    assert _index_files(index) == before


def _has_security_headers(headers, policy=CONTENT_SECURITY_POLICY) -> bool:
    return (
        headers.get("x-content-type-options") == "nosniff"
        and headers.get("referrer-policy") == "no-referrer"
        and headers.get("content-security-policy") == policy
    )


def test_every_kind_of_response_carries_the_security_headers(client, capped, ids):
    responses = {
        "search": client.post("/api/search", json={"query": "a cat"}),
        "thumbnail": client.get(f"/api/images/{ids['dog.jpg']}/thumbnail"),
        "original": client.get(f"/api/images/{ids['dog.jpg']}"),
        "page": client.get("/"),
        "openapi": client.get("/openapi.json"),
        "400": client.post("/api/search", json={}),
        "404": client.get("/api/images/999999"),
        "405": client.delete("/api/health"),
        "415": client.post("/api/search", files={"image": ("x.jpg", b"not an image")}),
        "400 (validation)": client.get("/api/images/abc"),
    }
    with TestClient(capped) as small:
        responses["413"] = small.post("/api/search", files={"image": ("x.jpg", b"x" * (CAP + 1))})
    for name, response in responses.items():
        assert _has_security_headers(response.headers), (name, dict(response.headers))
    assert [r.status_code for r in responses.values()] == [200, 200, 200, 200, 200, 400, 404, 405, 415, 400, 413]
    docs = client.get("/docs").headers["content-security-policy"]  # Swagger UI: its own, still no framing
    assert "frame-ancestors 'none'" in docs and "object-src 'none'" in docs


def test_an_unexpected_error_is_a_500_with_the_headers_and_no_traceback(tmp_path):
    class Broken:
        directory = tmp_path

        def refresh_if_changed(self):
            raise RuntimeError("the store at /secret/place broke")

    with TestClient(create_app(Broken()), raise_server_exceptions=False) as client:
        response = client.get("/api/health")
    assert response.status_code == 500 and _has_security_headers(response.headers)
    assert "/secret/place" not in response.text and "log" in response.json()["detail"]


@pytest.mark.parametrize(
    "host, answered",
    [
        ("127.0.0.1:8000", True),
        ("localhost:8000", True),
        ("[::1]:8000", True),
        ("LOCALHOST", True),
        ("attacker.example", False),
        ("attacker.example:8000", False),
        ("127.0.0.1.nip.io", False),
        ("", False),
    ],
)
def test_a_loopback_server_answers_only_its_own_names(index, host, answered):
    """DNS rebinding: a page at attacker.example whose name now resolves to 127.0.0.1 sends Host: attacker.example."""
    app = create_app(index, allowed_hosts=local_names("127.0.0.1"))
    status, headers, body, _ = call_asgi(app, "GET", "/api/health", headers=[("host", host)])
    assert status == (200 if answered else 400), body
    assert _has_security_headers(headers)
    if not answered:
        assert b"attacker" not in body


# ---- nothing reflected as HTML ---------------------------------------------------------------------


def test_a_path_with_script_in_it_comes_back_as_plain_json(client, tree):
    response = client.post("/api/search", json={"query": "a sunflower", "k": 3})
    assert response.headers["content-type"] == "application/json"
    paths = [item["path"] for item in json.loads(response.content)["items"]]
    assert str(tree / "indexed" / SCRIPT_FOLDER / SCRIPT_FILE) in paths  # as it is: escaping is the page's job


@pytest.mark.parametrize(
    "path",
    [
        "/nothing<script>alert(1)</script>?q=<script>alert(2)</script>",
        "/api/nothing?q=<script>alert(1)</script>",
        "/api/images/999999/explain?query=<script>alert(1)</script>",
        "/api/images/<script>alert(1)</script>",
    ],
)
def test_errors_do_not_reflect_input_as_html(app, path):
    status, headers, body, _ = call_asgi(app, "GET", path)
    assert status in (400, 404)
    assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"
    assert b"<script>" not in body


def test_the_missing_page_message_reflects_nothing(index, tmp_path):
    app = create_app(index, static_dir=tmp_path / "none")
    status, headers, body, _ = call_asgi(app, "GET", "/?q=<script>alert(1)</script>")
    assert status == 404 and headers["content-type"].startswith("text/plain") and b"<script>" not in body
