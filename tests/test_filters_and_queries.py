"""Issue 14's library side, each against an oracle:
- filters (folder, date taken, min score) equal a brute force that filters, then ranks;
- paging: the pages put together are the one long list;
- image queries and "more like this" rank by cosine of stored vectors, leaving the image out;
- Index.rerank equals search's re-rank stage on the same candidates;
- explain equals a naive loop over tokens and regions;
- taken_at is the EXIF DateTimeOriginal alone, file_date the mtime, and the date filters use
  the first, else the second; original_path serves only indexed folders;
- refresh_if_changed sees what another writer committed.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import draw_image
from imgsearch.ground.errors import ImageNotFound, InvalidImage, InvalidQuery
from imgsearch.images.decode import file_date
from imgsearch.index import Index
from imgsearch.search.explain import SHARPNESS, overlay_png
from imgsearch.storage.vectors import IndexSpec, VectorIndex

ATOL = 1e-4
TEXT = "a red circle"


def save_with_exif_date(image: Image.Image, path, when: str) -> None:
    """A JPEG whose EXIF DateTimeOriginal is `when` ("YYYY:MM:DD HH:MM:SS")."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = when  # Exif IFD: DateTimeOriginal
    image.save(path, "JPEG", quality=95, exif=exif)


@pytest.fixture(scope="module")
def dated_photos(tmp_path_factory):
    """18 images in three folders; the 'camera' ones carry EXIF dates, the others have set mtimes.
    Returns the root and {file name: expected date: the EXIF date, else the mtime (local time)}."""
    root = tmp_path_factory.mktemp("dated") / "photos"
    expected = {}
    for i in range(6):
        folder = root / "camera"
        folder.mkdir(parents=True, exist_ok=True)
        when = f"2020:0{i + 1}:15 10:30:00"
        save_with_exif_date(draw_image(i), folder / f"cam_{i}.jpg", when)
        expected[f"cam_{i}.jpg"] = f"2020-0{i + 1}-15T10:30:00"
    for folder_name, offset in (("scans", 10), ("scans-old", 20)):  # scans-old shares a prefix with scans
        folder = root / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(6):
            path = folder / f"scan_{i}.png"
            draw_image(offset + i).save(path)
            moment = dt.datetime(2019 + i % 3, 3, 1 + i, 8, 0, 0)
            os.utime(path, (moment.timestamp(), moment.timestamp()))
            expected[f"{folder_name}/scan_{i}.png"] = moment.isoformat(timespec="seconds")
    return root, expected


@pytest.fixture(scope="module")
def dated_index(tmp_path_factory, dated_photos, model_dir):
    root, _ = dated_photos
    index = Index.create(tmp_path_factory.mktemp("dated-index") / "index", model_dir, device="cpu")
    index.add([root], workers=0)
    yield index
    index.close()


def all_rows(index):
    rows = index.store.images(index.store.ok_ids().tolist())
    return rows


def brute_force(index, vector, *, keep=lambda row: True, exclude=None):
    """(ids, cosines) of the images `keep` allows, best first: numpy over the SQLite vectors."""
    ids, vectors = index.store.global_vectors()
    rows = all_rows(index)
    allowed = np.array([keep(rows[int(i)]) and int(i) != exclude for i in ids], bool)
    scores = vectors[allowed] @ vector
    order = np.argsort(-scores, kind="stable")
    return ids[allowed][order], scores[order]


def text_vector(index, text=TEXT):
    with torch.inference_mode():
        return index.model.text.encode([text]).global_[0].numpy()


def relative(root, row):
    return os.path.relpath(row.path, root)


# ---- taken_at --------------------------------------------------------------------------


def test_taken_at_is_the_exif_date_alone_and_file_date_the_mtime(dated_index, dated_photos):
    root, expected = dated_photos
    rows = {relative(root, row).removeprefix("camera/"): row for row in all_rows(dated_index).values()}
    assert {name: row.taken_at for name, row in rows.items()} == {
        name: (date if name.startswith("cam_") else None) for name, date in expected.items()
    }
    assert {name: file_date(row) for name, row in rows.items() if not name.startswith("cam_")} == {
        name: date for name, date in expected.items() if not name.startswith("cam_")
    }
    for result in dated_index.search(TEXT, k=20):  # what --json and the API show
        shown = result.to_dict()
        name = relative(root, result).removeprefix("camera/")
        assert shown["taken_at"] == rows[name].taken_at
        assert shown["file_date"] == dt.datetime.fromtimestamp(os.stat(result.path).st_mtime).isoformat(
            timespec="seconds"
        )
    image_id = int(dated_index.store.ok_ids()[0])
    info = dated_index.image_info(image_id)
    assert info["file_date"] == file_date(dated_index.store.images([image_id])[image_id])


# ---- the library, newest first --------------------------------------------------------------


@pytest.mark.parametrize("filters", [{}, dict(under="scans"), dict(taken_after="2020-01-01")], ids=str)
def test_browse_pages_are_the_library_newest_first(dated_index, dated_photos, filters):
    """Index.browse, page by page, equals the brute force: the filtered rows sorted by date (the
    EXIF date, else the file's) newest first, then by id, newest row first."""
    root, _ = dated_photos
    keep = oracle_keep(root, filters)
    rows = [row for row in all_rows(dated_index).values() if keep(row)]
    expected = [row.id for row in sorted(rows, key=lambda r: (r.taken_at or file_date(r), r.id), reverse=True)]
    arguments = {**filters, **({"under": root / filters["under"]} if "under" in filters else {})}
    got, offset = [], 0
    while offset is not None:
        items, offset = dated_index.browse(k=5, offset=offset, **arguments)
        assert len(items) <= 5
        got += items
    assert [item["id"] for item in got] == expected and len(expected) > 5
    assert all(item.pop("near_duplicates") == [] for item in got)  # no copies here: tests/test_near_duplicates.py
    assert got[0] == dated_index.image_info(got[0]["id"])  # each item is the image's info
    with pytest.raises(InvalidQuery):
        dated_index.browse(k=0)
    with pytest.raises(InvalidQuery):
        dated_index.browse(offset=-1)


# ---- filters against a brute force ------------------------------------------------------


FILTERS = [
    dict(under="scans"),
    dict(under="camera", taken_after="2020-03-01"),
    dict(taken_before="2019-12-31"),
    dict(taken_after="2020-02-15T10:30:00", taken_before="2020-04-15"),  # inclusive at both ends
    dict(under="scans-old", taken_after=dt.date(2020, 1, 1)),
    dict(under="nowhere"),  # min_score is on the relevance scale: tests/test_calibration.py
]


def oracle_keep(root, filters):
    def keep(row):
        if "under" in filters and not row.path.startswith(str(root / filters["under"]) + os.sep):
            return False
        after, before = filters.get("taken_after"), filters.get("taken_before")
        date = row.taken_at or file_date(row)  # taken (EXIF), else the file's date
        if after is not None and date < str(after):
            return False
        if before is not None:
            bound = str(before) + ("T23:59:59" if len(str(before)) == 10 else "")
            if date > bound:
                return False
        return True

    return keep


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_filtered_first_stage_equals_brute_force(dated_index, dated_photos, filters):
    root, _ = dated_photos
    arguments = dict(filters)
    if "under" in arguments:
        arguments["under"] = root / arguments["under"]
    ids, scores = brute_force(dated_index, text_vector(dated_index), keep=oracle_keep(root, filters))
    results = dated_index.search(TEXT, k=50, rerank=False, **arguments)
    assert [r.id for r in results] == ids.tolist()
    np.testing.assert_allclose([r.first_stage_score for r in results], scores, atol=ATOL)


def test_filtered_rerank_reranks_the_filtered_pool(dated_index, dated_photos):
    root, _ = dated_photos
    ids, _ = brute_force(dated_index, text_vector(dated_index), keep=oracle_keep(root, {"under": "scans"}))
    pool = dated_index.rerank(TEXT, ids[:4].tolist())  # the filtered subset's top 4, re-ranked alone
    results = dated_index.search(TEXT, k=4, candidates=4, under=root / "scans")
    assert [(r.id, round(r.score, 4)) for r in results] == [(r.id, round(r.score, 4)) for r in pool]


def test_faiss_id_selector_equals_brute_force_on_flat_and_ivf():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(3000, dtype=np.int64) * 7 + 3
    allowed = np.sort(rng.choice(ids, 400, replace=False))
    query = vectors[5]
    mask = np.isin(ids, allowed)
    expected = np.argsort(-(vectors[mask] @ query), kind="stable")[:20]
    for spec in (IndexSpec("flat"), IndexSpec("ivf_flat", nlist=16, nprobe=16)):  # IVF scanning every list: exact
        index = VectorIndex.build(ids, vectors, 16, spec)
        scores, found = index.search(query, 20, allowed)
        assert found.tolist() == ids[mask][expected].tolist()
        np.testing.assert_allclose(scores, (vectors[mask] @ query)[expected], atol=1e-5)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(taken_after="last tuesday"), "not a date"),
        (dict(taken_after="2021-05-01", taken_before="2021-01-01"), "later than"),
        (dict(min_score="high"), "must be a number"),
        (dict(under="  "), "folder filter is empty"),
        (dict(offset=-1), "offset"),
    ],
)
def test_bad_filters_are_clear_errors(dated_index, bad, message):
    with pytest.raises(InvalidQuery, match=message):
        dated_index.search(TEXT, **bad)


# ---- paging ------------------------------------------------------------------------------


@pytest.mark.parametrize("rerank", [True, False])
def test_pages_put_together_are_the_long_list(dated_index, rerank):
    whole = dated_index.search_page(TEXT, 5, candidates=7, rerank=rerank)
    pages, offset = [], 0
    while offset is not None:
        page = dated_index.search_page(TEXT, 5, candidates=7, rerank=rerank, offset=offset)
        pages += page.results
        offset = page.next_offset
    assert len(pages) == 18
    assert [r.rank for r in pages] == list(range(1, 19))
    assert [r.id for r in pages[:5]] == [r.id for r in whole.results]
    # Past the pool (max(k, candidates) = 7) the order is the first stage's, not re-ranked.
    first_stage_ids, _ = brute_force(dated_index, text_vector(dated_index))
    assert [r.id for r in pages[7:]] == first_stage_ids[7:].tolist()
    assert all(r.rerank_score is None for r in pages[7:])
    assert sorted(r.id for r in pages) == sorted(first_stage_ids.tolist())
    assert set(page.timings_ms) == {"encode", "vector_search", "first_stage", "rerank", "total"}


# ---- image queries -------------------------------------------------------------------------


def test_like_ranks_by_cosine_and_leaves_the_image_out(dated_index, dated_photos):
    root, _ = dated_photos
    source = dated_index.store.get(str(root / "scans" / "scan_2.png"))
    vector = dated_index.store.global_vectors_of([source.id])[0]
    ids, scores = brute_force(dated_index, vector, exclude=source.id)
    page = dated_index.search_page(like=source.id, k=50)
    assert not page.reranked
    assert [r.id for r in page.results] == ids.tolist()
    np.testing.assert_allclose([r.score for r in page.results], scores, atol=ATOL)
    assert all(r.rerank_score is None for r in page.results)
    by_path = dated_index.search(like=root / "scans" / "scan_2.png", k=50)
    assert [r.id for r in by_path] == ids.tolist()


def test_like_never_returns_a_copy_of_its_own_photo(tmp_path, model_dir):
    """Byte-identical copies under other paths share the photo's content: "more like this" leaves
    them out with the photo, and ranks the rest as the brute force does."""
    photos = tmp_path / "photos"
    (photos / "copies").mkdir(parents=True)
    for i in range(6):
        draw_image(i).save(photos / f"p_{i}.png")
    shutil.copy(photos / "p_2.png", photos / "copies" / "p_2 copy.png")
    shutil.copy(photos / "p_2.png", photos / "copies" / "p_2 again.png")
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        source = index.store.get(str(photos / "p_2.png")).id
        copies = {index.store.get(str(photos / "copies" / name)).id for name in ("p_2 copy.png", "p_2 again.png")}
        assert set(index.store.copies_of(source)) == copies
        ids, scores = brute_force(index, index.store.global_vectors_of([source])[0])
        keep = ~np.isin(ids, [source, *copies])
        results = index.search(like=source, k=10)
        assert [r.id for r in results] == ids[keep].tolist() and len(results) == 5
        np.testing.assert_allclose([r.score for r in results], scores[keep], atol=ATOL)
        assert [r.id for r in index.search(like=min(copies), k=10)] == ids[keep].tolist()  # from a copy too


def test_an_image_query_finds_that_image_first(dated_index, dated_photos, tmp_path):
    root, _ = dated_photos
    outside = tmp_path / "query.png"
    shutil.copy(root / "scans" / "scan_4.png", outside)
    expected = dated_index.store.get(str(root / "scans" / "scan_4.png")).id
    for query in (outside, outside.read_bytes(), Image.open(outside)):
        results = dated_index.search(image=query, k=3)
        assert results[0].id == expected and results[0].score == pytest.approx(1.0, abs=1e-3)


def test_exactly_one_query_kind(dated_index, tmp_path):
    with pytest.raises(InvalidQuery, match="exactly one"):
        dated_index.search()
    with pytest.raises(InvalidQuery, match="query and like"):
        dated_index.search(TEXT, like=1)
    with pytest.raises(ImageNotFound):
        dated_index.search(like=999_999)
    (tmp_path / "notes.txt").write_text("not a photo")
    with pytest.raises(InvalidImage, match="not an image"):
        dated_index.search(image=tmp_path / "notes.txt")
    with pytest.raises(InvalidImage, match="does not exist"):
        dated_index.search(image=tmp_path / "missing.jpg")


# ---- re-ranking on its own ---------------------------------------------------------------


def test_rerank_equals_searchs_rerank_stage(dated_index, dated_photos, tmp_path):
    root, _ = dated_photos
    searched = dated_index.search(TEXT, k=9, candidates=9)
    pool_ids = [r.id for r in sorted(searched, key=lambda r: r.first_stage_rank)]
    reranked = dated_index.rerank(TEXT, pool_ids)
    assert [r.id for r in reranked] == [r.id for r in searched]
    for got, want in zip(reranked, searched):
        assert got.score == pytest.approx(want.score, abs=ATOL)
        assert got.rerank_score == pytest.approx(want.rerank_score, abs=ATOL)
        assert got.first_stage_rank == want.first_stage_rank
    # An image outside the index is encoded now: a copy of an indexed PNG scores as the original.
    copy = tmp_path / "elsewhere.png"
    shutil.copy(root / "scans" / "scan_1.png", copy)
    original = dated_index.store.get(str(root / "scans" / "scan_1.png")).id
    both = {r.id: r for r in dated_index.rerank(TEXT, [original, copy])}
    assert both[None].path == str(copy)
    assert both[None].score == pytest.approx(both[original].score, abs=1e-3)


# ---- explain -------------------------------------------------------------------------------


def naive_explanation(index, text, image_id):
    """Per word, softmax over regions of SHARPNESS * cosine(token, positioned region), averaged over
    the word's tokens, by loops: the tokenizer's word ids say which tokens make a word."""
    model = index.model
    with torch.inference_mode():
        query = model.text.encode([text])
    regions = index.store.regions([image_id])[0].astype(np.float32) + model.scorer.region_position.detach().numpy()[:16]
    encoding = model.text.tokenizer(text)
    words: dict[int, list[np.ndarray]] = {}
    for position, word in enumerate(encoding.word_ids()):
        if word is None:
            continue
        token = query.tokens[0][position].numpy()
        cosines = np.array([token @ r / (np.linalg.norm(token) * np.linalg.norm(r)) for r in regions])
        weights = np.exp(SHARPNESS * cosines - (SHARPNESS * cosines).max())
        words.setdefault(word, []).append(weights / weights.sum())
    return [np.mean(parts, axis=0) / np.mean(parts, axis=0).sum() for parts in words.values()]


def test_explain_equals_a_naive_loop(dated_index):
    image_id = int(dated_index.store.ok_ids()[3])
    text = "a reddish circle above squares"
    explanation = dated_index.explain(text, image_id)
    assert explanation.grid == (4, 4) and explanation.image_id == image_id
    content = ["reddish", "circle", "squares"]  # "a" and "above" are function words
    assert [w["word"] for w in explanation.words] == content
    wanted = naive_explanation(dated_index, text, image_id)  # every word's
    for got, want in zip(explanation.words, [wanted[text.split().index(word)] for word in content]):
        assert sum(got["weights"]) == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(got["weights"], want, atol=1e-4)
    png = overlay_png(draw_image(1), explanation.words[1]["weights"], explanation.grid)
    with Image.open(__import__("io").BytesIO(png)) as overlay:
        assert overlay.format == "PNG" and overlay.size == (48, 48)


# ---- serving originals ----------------------------------------------------------------------


def test_original_path_only_inside_indexed_folders(tmp_path, model_dir):
    inside = tmp_path / "photos"
    inside.mkdir()
    outside = tmp_path / "private"
    outside.mkdir()
    draw_image(1).save(inside / "a.png")
    draw_image(2).save(outside / "secret.png")
    (inside / "link.png").symlink_to(outside / "secret.png")
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        index.add([inside], workers=0)
        ids = {os.path.basename(row.path): row.id for row in index.store.all_images().values()}
        assert index.original_path(ids["a.png"]) == inside / "a.png"
        with pytest.raises(ImageNotFound):  # indexed through a link, but its file lies outside
            index.original_path(ids["link.png"])
        with pytest.raises(ImageNotFound):
            index.original_path(10_000)
        (inside / "a.png").unlink()
        (inside / "a.png").symlink_to("/etc/passwd")  # swapped for a link after indexing
        with pytest.raises(ImageNotFound):
            index.original_path(ids["a.png"])


# ---- a server's reader sees a writer's commits -------------------------------------------------


def test_refresh_if_changed_sees_another_writers_images(tmp_path, model_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        draw_image(i).save(photos / f"a_{i}.png")
    Index.create(tmp_path / "index", model_dir, device="cpu").close()
    with Index.open(tmp_path / "index", device="cpu") as reader, Index.open(tmp_path / "index", device="cpu") as writer:
        assert reader.refresh_if_changed() is False
        writer.add([photos], workers=0)
        assert len(reader.vectors) == 0
        assert reader.refresh_if_changed() is True
        assert reader.refresh_if_changed() is False
        assert np.array_equal(reader.vectors.ids(), writer.store.ok_ids())
        (photos / "a_0.png").unlink()
        draw_image(9).save(photos / "b.png")
        writer.add([photos], workers=0)
        assert reader.refresh_if_changed() is True
        assert np.array_equal(reader.vectors.ids(), writer.store.ok_ids())
        assert [r.id for r in reader.search(TEXT, k=5)] == [r.id for r in writer.search(TEXT, k=5)]


def test_explain_by_classes_equals_a_class_activation_map(tmp_path, mobilenet_model_dir):
    """With a classifier: per word, the class names nearest the word weight the classifier's
    logits on each region, here from the 1x1 convolution run over the whole feature map."""
    from imgsearch.model.image_encoder import resize_uint8
    from imgsearch.model.zero_shot import sentence_vectors
    from imgsearch.search.explain import CLASS_TEMPERATURE, NAMED_CLASS_MIN

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        draw_image(i, size=80).save(photos / f"p_{i}.png")
    with Index.create(tmp_path / "index", mobilenet_model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        image_id = index.store.get(str(photos / "p_1.png")).id
        text = "class 5 beside class 7"
        explanation = index.explain(text, image_id)
        assert explanation.method == "classes" and explanation.grid == (2, 2)

        model = index.model
        labels = list(model.config.image_labels)
        names = sentence_vectors(model, labels)  # (C, h)
        with Image.open(photos / "p_1.png") as image, torch.inference_mode():
            pixels = model.image.normalize(resize_uint8(image.convert("RGB"), model.image.image_size)[None])
            grid = model.image.backbone.net.features(pixels)  # (1, 1280, G, G)
            cam = model.image.backbone.net.classifier(grid)[0].flatten(1).T.numpy()  # (C, G, G) --> (G*G, C)
            batch, _ = model.text.tokenize([text])
            states = model.text.bert(**batch).last_hidden_state[0].numpy()  # (T, h)
        words: dict[int, list[int]] = {}
        for position, word in enumerate(model.text.tokenizer(text).word_ids()):
            if word is not None:
                words.setdefault(word, []).append(position)
        assert [w["word"] for w in explanation.words] == ["class", "5", "class", "7"]  # not "beside"
        del words[2]
        for got, positions in zip(explanation.words, words.values()):
            vector = states[positions].mean(axis=0)
            similarity = names @ (vector / np.linalg.norm(vector))
            similarity[0] = -1.0
            class_weights = np.exp((similarity - similarity.max()) / CLASS_TEMPERATURE)
            class_weights /= class_weights.sum()
            scores = cam @ class_weights
            above = np.clip(scores - scores.mean(), 0, None)
            expected = above / above.sum()
            np.testing.assert_allclose(got["weights"], expected, atol=1e-4)
            named = [labels[c] for c in np.argsort(-similarity, kind="stable")[:3] if similarity[c] >= NAMED_CLASS_MIN]
            assert [c["label"] for c in got["classes"]] == named
        # Without the picture (the file is gone), the stored regions explain it by alignment.
        (photos / "p_1.png").unlink()
        assert index.explain(text, image_id).method == "alignment"


def test_a_small_subset_of_an_ivf_index_is_scanned_exactly(dated_index):
    """An IVF index probing 1 of 2 lists may miss most of a small subset; the candidate stage scans
    the subset's stored vectors instead, so its top-k equals the brute force."""
    from imgsearch.search.candidates import nearest

    ids, vectors = dated_index.store.global_vectors()
    ivf = VectorIndex.build(ids, vectors, vectors.shape[1], IndexSpec("ivf_flat", nlist=2, nprobe=1))
    allowed = np.sort(ids[::3])
    query = text_vector(dated_index)
    scores, found = nearest(ivf, dated_index.store, query, 4, allowed)
    inside = np.isin(ids, allowed)
    order = np.argsort(-(vectors[inside] @ query), kind="stable")[:4]
    assert found.tolist() == ids[inside][order].tolist()
    np.testing.assert_allclose(scores, (vectors[inside] @ query)[order], atol=1e-5)
