"""Index's search calls check their arguments once, at that boundary (search/arguments.py),
before the model is loaded or the snapshot is read: a bad argument is an InvalidQuery that says
so even where the model could not be loaded, and the stages after it do not check again."""

from __future__ import annotations

import shutil

import pytest

from imgsearch.errors import InvalidQuery, ModelNotFound
from imgsearch.index import Index


@pytest.fixture
def index_without_its_model(tmp_path, model_dir):
    """An empty index whose model has moved away since: any call that needs the model raises ModelNotFound."""
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    Index.create(tmp_path / "index", model, device="cpu").close()
    model.rename(tmp_path / "model-moved")
    with Index.open(tmp_path / "index", device="cpu") as index:
        yield index


@pytest.mark.parametrize("call, said", [
    (lambda index: index.search(), "exactly one of a text query, an image or an indexed image"),
    (lambda index: index.search("a cat", like=1), r"\(got query and like\)"),
    (lambda index: index.search("a cat", k=0), "k must be at least 1"),
    (lambda index: index.search_page("a cat", candidates=0), "candidates must be at least 1"),
    (lambda index: index.search_page("a cat", offset=-1), "offset must be 0 or more"),
    (lambda index: index.search("a cat", rerank_precision="half"), "rerank_precision must be"),
    (lambda index: index.search("a cat", taken_after="last tuesday"), "not a date"),
    (lambda index: index.search(like=2.5), "an indexed image is given by its id or its path"),
    (lambda index: index.search(like=True), "an indexed image is given by its id or its path"),
    (lambda index: index.rerank("a cat", []), "at least one image"),
    (lambda index: index.rerank("a cat", [1], rerank_precision="half"), "rerank_precision must be"),
    (lambda index: index.rerank("a cat", [1, 2.5]), r"an image is given by .* \(got float\)"),
    (lambda index: index.explain("a cat", None), r"an image is given by .* \(got NoneType\)"),
    (lambda index: index.image_info(True), "an indexed image is given by its id or its path"),
])
def test_a_bad_argument_is_refused_before_the_model_is_needed(index_without_its_model, call, said):
    with pytest.raises(InvalidQuery, match=said):
        call(index_without_its_model)


def test_good_arguments_go_on_to_need_the_model(index_without_its_model):
    with pytest.raises(ModelNotFound):
        index_without_its_model.search("a cat")
    with pytest.raises(ModelNotFound):
        index_without_its_model.rerank("a cat", [1])
