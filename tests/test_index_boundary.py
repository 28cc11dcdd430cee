"""Index is the library's boundary.

- Its search calls check their arguments once, there (search/arguments.py), before the model
  is loaded or the snapshot is read: a bad argument is an InvalidQuery that says so even where
  the model could not be loaded, and the stages after it do not check again.
- The command line, the server and the benchmarks use its public calls: they never reach
  through it to the store, the vectors or its private parts (checked on the source).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from imgsearch.ground.errors import InvalidQuery, ModelNotFound
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


@pytest.mark.parametrize(
    "call, said",
    [
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
    ],
)
def test_a_bad_argument_is_refused_before_the_model_is_needed(index_without_its_model, call, said):
    with pytest.raises(InvalidQuery, match=said):
        call(index_without_its_model)


def test_good_arguments_go_on_to_need_the_model(index_without_its_model):
    with pytest.raises(ModelNotFound):
        index_without_its_model.search("a cat")
    with pytest.raises(ModelNotFound):
        index_without_its_model.rerank("a cat", [1])


# ---- the callers use the public calls -----------------------------------------------------

ROOT = Path(__file__).parents[1]
CALLERS = [
    ROOT / "imgsearch" / "cli.py",
    ROOT / "imgsearch" / "common.py",
    ROOT / "imgsearch" / "train_commands.py",
    *sorted((ROOT / "imgsearch" / "server").rglob("*.py")),
    *sorted((ROOT / "bench").rglob("*.py")),
]
INSIDE = {"store", "vectors", "data", "lock"}  # Index's storage: for tests and tools that inspect it


def reaches_inside(tree: ast.AST) -> list[int]:
    """Lines where something named index (a variable, or an attribute such as app.state.index)
    has its storage or a private attribute read: index.store, state.index._searcher."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        named_index = (isinstance(owner, ast.Name) and owner.id == "index") or (
            isinstance(owner, ast.Attribute) and owner.attr == "index"
        )
        private = node.attr.startswith("_") and not node.attr.startswith("__")
        if named_index and (node.attr in INSIDE or private):
            found.append(node.lineno)
    return sorted(found)


def test_the_cli_the_server_and_the_benchmarks_use_index_s_public_calls():
    found = {
        str(path.relative_to(ROOT)): reaches_inside(ast.parse(path.read_text(encoding="utf-8"))) for path in CALLERS
    }
    assert {name: lines for name, lines in found.items() if lines} == {}


def test_the_public_calls_scan_finds_what_it_should():
    tree = ast.parse(
        "index.store.get(p)\nrequest.app.state.index._searcher\nindex.search('a')\n"
        "index.vectors\nindex.image_count()\nother.store\nindex.__class__\n"
    )
    assert reaches_inside(tree) == [1, 2, 4]
