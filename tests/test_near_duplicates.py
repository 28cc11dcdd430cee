"""Near-duplicates fold into one result (search/searcher.py, collapse_near_duplicates), held to
a brute force: the same search with every copy kept, folded by a plain loop in rank order. With
a calibrated model, near means global vectors within the calibration's near_duplicate_cosine;
without one, the same content (sha256). "More like this" never returns its own photo or a
near-copy of it; the library's pages fold copies within a page and show every photo once."""

from __future__ import annotations

import os
import shutil

import pytest

from imgsearch import Index
from imgsearch.model.calibration import Calibration, Curve
from tests.conftest import draw_image

NEAR = 0.95  # the calibrated test model's near_duplicate_cosine


@pytest.fixture(scope="module", params=["vectors", "content"])
def copies_index(request, tmp_path_factory, model_dir):
    """20 drawings, four of them also as a byte-identical copy and one also as a larger copy;
    indexed with the test model calibrated (near-duplicates by vectors), or as it is (by content)."""
    root = tmp_path_factory.mktemp("copies") / "photos"
    (root / "copies").mkdir(parents=True)
    for seed in range(20):
        draw_image(seed).save(root / f"img_{seed:02d}.png")
        os.utime(root / f"img_{seed:02d}.png", (1.6e9 + 86400 * seed, 1.6e9 + 86400 * seed))  # a day apart
    for seed in (1, 4, 7, 9):  # copies keep their file's date, as file managers copy
        shutil.copy2(root / f"img_{seed:02d}.png", root / "copies" / f"img_{seed:02d}_copy.png")
    draw_image(4).resize((96, 96)).save(root / "copies" / "img_04_big.png")
    shutil.copystat(root / "img_04.png", root / "copies" / "img_04_big.png")
    model = model_dir
    if request.param == "vectors":
        model = tmp_path_factory.mktemp("calibrated") / "model"
        shutil.copytree(model_dir, model)
        line = Curve((-1.0, 1.0), (0.0, 1.0))
        kinds = ("text", "text_short", "text_first_stage", "text_first_stage_short", "image")
        Calibration({kind: line for kind in kinds}, 0.5, {}, NEAR).save(model)
    directory = tmp_path_factory.mktemp("copies-index") / "index"
    with Index.create(directory, model=model, device="cpu") as index:
        assert index.add([root], workers=0).added == 25
        index.by_vectors = request.param == "vectors"
        yield index


def near_function(index, ids):
    """The brute force's near-duplicate test for the index's mode, over images `ids`."""
    store = index.data.store
    vectors = dict(zip(ids, store.global_vectors_of(ids)))
    rows = store.images(ids)
    if index.by_vectors:
        return lambda a, b: float(vectors[a] @ vectors[b]) >= NEAR
    return lambda a, b: rows[a].sha256 == rows[b].sha256


def brute_fold(index, results):
    """Fold `results` (ranked, every copy kept) by a plain loop: each joins the first kept
    result it is near."""
    near = near_function(index, [r.id for r in results])
    kept: list[tuple[int, list[int]]] = []
    for r in results:
        owner = next((entry for entry in kept if near(entry[0], r.id)), None)
        if owner is None:
            kept.append((r.id, []))
        else:
            owner[1].append(r.id)
    return kept


@pytest.mark.parametrize("rerank", [True, False])
def test_search_folds_near_duplicates_as_a_brute_force_does(copies_index, rerank):
    everything = copies_index.search("a red circle", k=25, rerank=rerank, collapse_duplicates=False)
    assert len(everything) == 25
    expected = brute_fold(copies_index, everything)
    assert sum(len(copies) for _, copies in expected) >= 4  # the four byte copies at least
    folded = copies_index.search("a red circle", k=25, rerank=rerank)
    assert [(r.id, [c["id"] for c in r.near_duplicates]) for r in folded] == expected
    # paged: the pages, one after another, are the whole folded list
    pages, offset = [], 0
    while offset is not None:
        page = copies_index.search_page("a red circle", k=4, offset=offset, rerank=rerank)
        pages += page.results
        offset = page.next_offset
    assert [r.id for r in pages] == [r.id for r in folded]
    assert [r.rank for r in pages] == list(range(1, len(folded) + 1))


def test_more_like_this_never_returns_a_copy_of_its_photo(copies_index):
    everything = copies_index.search("a red circle", k=25, collapse_duplicates=False)
    photo = next(r for r in everything if r.path.endswith("img_04.png"))
    near = near_function(copies_index, [r.id for r in everything])
    results = copies_index.search(like=photo.id, k=30, collapse_duplicates=False)
    assert photo.id not in [r.id for r in results]
    assert not [r.path for r in results if r.path.endswith("img_04_copy.png")]  # byte-identical
    assert not [r.path for r in results if near(r.id, photo.id)]
    assert len(results) == sum(not near(r.id, photo.id) for r in everything)  # nothing else left out
    folded = copies_index.search(like=photo.id, k=30)
    assert [(r.id, [c["id"] for c in r.near_duplicates]) for r in folded] == brute_fold(copies_index, results)


def test_the_library_shows_each_photo_once_with_its_copies_folded(copies_index):
    order = copies_index.data.store.newest_ids(1000)  # every photo, newest first
    near = near_function(copies_index, order)
    # the reference: each page takes photos from its offset, a near-duplicate of one taken on the
    # same page joining it, until one more than fits is found; the next page starts there
    expected_pages, offset = [], 0
    while offset < len(order):
        page: list[tuple[int, list[int]]] = []
        position = offset
        while position < len(order):
            owner = next((entry for entry in page if near(entry[0], order[position])), None)
            if owner is not None:
                owner[1].append(order[position])
            elif len(page) == 5:
                break
            else:
                page.append((order[position], []))
            position += 1
        expected_pages.append(page)
        offset = position

    pages, offset = [], 0
    while offset is not None:
        items, offset = copies_index.browse(k=5, offset=offset)
        pages.append([(item["id"], [copy["id"] for copy in item["near_duplicates"]]) for item in items])
    assert pages == expected_pages
    shown = [i for page in pages for i, _ in page] + [c for page in pages for _, copies in page for c in copies]
    assert sorted(shown) == sorted(order)  # every photo exactly once
    assert any(copies for page in pages for _, copies in page)  # byte copies, dated alike, sit together
