"""One record: what is known about an image is one type, ImageRecord (images/decode.py), from
decoding to the API; the decode result, the store's rows and the search results derive from it.

One photo (and one file that fails) walks every stage: decode, the embed worker's shard (and
the shard's file), the store, search results (text, "more like this", rerank), --json and the
HTTP API (search items, image info, the OpenAPI schema). At each stage every field of the
record must arrive with the value the decoder gave it: the shown fields in what is shown, all
of them in the store and the results. The fields are read from dataclasses.fields, so a field
added to the record is covered without touching this test: it fails until the decoder fills
the field, the store keeps it and it is shown.
"""

from __future__ import annotations

import ast
import json
from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from conftest import draw_image
from imgsearch.cli import cli
from imgsearch.images.decode import (
    RECORD_FIELDS,
    SHOWN_FIELDS,
    DecodeResult,
    ImageRecord,
    decode_file,
    record_of,
    record_values,
)
from imgsearch.index import Index
from imgsearch.indexer.embed_worker import embed_shard
from imgsearch.indexer.shard import Shard
from imgsearch.search.searcher import SearchResult
from imgsearch.server.app import create_app
from imgsearch.storage.store import StoredImage

ROOT = Path(__file__).parents[1]
PACKAGES = sorted(folder.name for folder in ROOT.iterdir() if (folder / "__init__.py").is_file())  # all of imgsearch.*
HIDDEN_FIELDS = tuple(name for name in RECORD_FIELDS if name not in SHOWN_FIELDS)
_EXIF_IFD, _DATE_TIME_ORIGINAL = 0x8769, 0x9003


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A JPEG with an EXIF date (so that the decoder fills every field) and a file that fails."""
    folder = tmp_path_factory.mktemp("one-record") / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif.get_ifd(_EXIF_IFD)[_DATE_TIME_ORIGINAL] = "2019:05:04 03:02:01"
    draw_image(7, size=64).crop((0, 0, 64, 40)).save(folder / "photo.jpg", exif=exif, quality=95)
    draw_image(8, size=64).save(folder / "other.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


@pytest.fixture(scope="module")
def decoded(photos) -> DecodeResult:
    return decode_file(photos / "photo.jpg")


@pytest.fixture(scope="module")
def index(photos, model_dir):
    with Index.create(photos.parent / "index", model_dir, device="cpu") as index:
        summary = index.add([photos], workers=0)
        assert (summary.added, summary.failed) == (2, 1)
        yield index


def assert_record(got: dict, want: dict, names, where: str) -> None:
    missing = [name for name in names if name not in got]
    assert not missing, f"{where} lacks the record's {missing}"
    differ = {name: (got[name], want[name]) for name in names if got[name] != want[name]}
    assert not differ, f"{where}: (got, decoded) {differ}"


def test_the_decoder_fills_every_field_of_the_record(decoded, photos):
    assert isinstance(decoded, ImageRecord) and decoded.image is not None
    unset = [name for name in RECORD_FIELDS if name != "error" and getattr(decoded, name) is None]
    assert not unset, f"the sample photo leaves {unset} unset: make decode_file fill them"
    assert decoded.error is None and decoded.taken_at == "2019-05-04T03:02:01"
    assert decode_file(photos / "broken.jpg").error


def test_the_record_is_frozen_and_the_other_types_derive_from_it(decoded):
    for kind in (DecodeResult, StoredImage, SearchResult):
        assert issubclass(kind, ImageRecord), kind
        assert [f.name for f in fields(kind)][: len(RECORD_FIELDS)] == list(RECORD_FIELDS), kind
    with pytest.raises(AttributeError):
        decoded.width = 1
    assert type(record_of(decoded)) is ImageRecord and record_values(record_of(decoded)) == record_values(decoded)


def test_a_shard_carries_the_record_and_its_file_keeps_it(decoded, photos, index, tmp_path):
    shard = embed_shard([photos / "photo.jpg", photos / "broken.jpg"], index.image_encoder)
    good, bad = shard.records
    assert type(good) is ImageRecord
    assert_record(record_values(good), record_values(decoded), RECORD_FIELDS, "the shard's record")
    assert bad.error == decode_file(photos / "broken.jpg").error
    shard.save(tmp_path / "one.shard")
    assert Shard.load(tmp_path / "one.shard").records == shard.records


def test_the_store_keeps_every_field(decoded, photos, index):
    stored = index.store.get(decoded.path)
    rows = index.store.images([stored.id])  # as searches read them
    assert_record(record_values(rows[stored.id]), record_values(decoded), RECORD_FIELDS, "the stored row")
    failed = decode_file(photos / "broken.jpg")
    [row] = [row for row in index.store.failures() if row.path == failed.path]
    assert (row.status, row.error, row.size, row.sha256) == ("error", failed.error, failed.size, failed.sha256)


def results_of(index: Index, decoded: DecodeResult) -> dict[str, SearchResult]:
    image_id = index.store.get(decoded.path).id
    found = {
        "search": index.search("a photo", k=5),
        "like": index.search(like=(Path(decoded.path).parent / "other.png"), k=5),
        "rerank": index.rerank("a photo", [image_id]),
        "rerank by path": index.rerank("a photo", [Path(decoded.path)]),
    }
    return {how: next(r for r in results if r.path == decoded.path) for how, results in found.items()}


def test_search_results_hold_the_record(decoded, index):
    for how, result in results_of(index, decoded).items():
        assert_record(record_values(result), record_values(decoded), RECORD_FIELDS, f"a {how} result")
        shown = result.to_dict()
        assert_record(shown, record_values(decoded), SHOWN_FIELDS, f"a {how} result's to_dict")
        assert not set(HIDDEN_FIELDS) & set(shown), how


def test_json_shows_every_shown_field(decoded, index):
    out = CliRunner().invoke(
        cli, ["search", "a photo", "--index", str(index.directory), "-k", "5", "--json", "--device", "cpu"]
    )
    assert out.exit_code == 0, out.output
    [item] = [r for r in json.loads(out.stdout)["results"] if r["path"] == decoded.path]
    assert_record(item, record_values(decoded), SHOWN_FIELDS, "--json")
    assert not set(HIDDEN_FIELDS) & set(item)


def test_the_http_api_shows_every_shown_field(decoded, index):
    client = TestClient(create_app(index))
    image_id = index.store.get(decoded.path).id
    response = client.post("/api/search", json={"query": "a photo", "k": 5})
    assert response.status_code == 200, response.text
    [item] = [item for item in response.json()["items"] if item["path"] == decoded.path]
    assert_record(item, record_values(decoded), SHOWN_FIELDS, "POST /api/search")
    response = client.post("/api/rerank", json={"query": "a photo", "ids": [image_id]})
    assert_record(response.json()["items"][0], record_values(decoded), SHOWN_FIELDS, "POST /api/rerank")
    info = client.get(f"/api/images/{image_id}/info").json()
    assert_record(info, record_values(decoded), SHOWN_FIELDS, "GET /api/images/{id}/info")
    for body in (item, info):
        assert not set(HIDDEN_FIELDS) & set(body)
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SearchItem"]["properties"]
    assert set(SHOWN_FIELDS) <= set(schema)


def test_no_other_class_declares_the_records_fields():
    """A type that lists several of the record's fields again is a second record growing back
    (as ShardRecord, the store's Put and _ImageFeatures were): derive it from ImageRecord,
    or hold one. (FileSignature, the os.stat facts the decoder reads, holds 3.)"""
    names = set(RECORD_FIELDS)
    offenders = []
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.ClassDef) or node.name == "ImageRecord":
                    continue
                declared = {
                    stmt.target.id
                    for stmt in node.body
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                }
                if len(declared & names) > 3:
                    offenders.append(f"{path.relative_to(ROOT)}: {node.name} {sorted(declared & names)}")
    assert not offenders, "\n".join(offenders)
