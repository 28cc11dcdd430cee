"""Text search on the numpy query runtime (model/numpy_query.py, what a CPU search uses) against
the same search on the torch model (search/query_model.py's TorchQueryModel): the sample photos
indexed with the packaged photo model, every query of data/photos/queries.json and a few more.

Tolerance: ids and order the same, except between results whose final scores are within
SCORE_TOLERANCE of each other (a tie either runtime may break); every score within
SCORE_TOLERANCE. The runtimes differ by float32 rounding (tests/test_numpy_query.py: 1e-5 on
the embeddings), which the fusion weight (30) scales up on the final score.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from imgsearch import Index
from imgsearch.model.packaged import packaged_model_dir

PHOTOS = Path(__file__).parents[1] / "data" / "photos"
QUERIES = [
    *json.loads((PHOTOS / "queries.json").read_text()),
    "a dog running in the water",
    "xqzv blorft wug",
    "A RED CAR!",
    "two cats on a sofa " * 10,
]
SCORE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def photo_index_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("photos") / "index"
    with Index.create(directory, model=packaged_model_dir("photo"), device="cpu") as index:
        assert index.add([PHOTOS], workers=0).added == 24
    return directory


@pytest.fixture(scope="module")
def both_runtimes(photo_index_dir):
    light = Index.open(photo_index_dir, device="cpu")  # text queries on the numpy runtime
    full = Index.open(photo_index_dir, device="cpu")
    full.model  # noqa: B018 - the torch model loaded: text queries go through it (Searcher.query_model)
    yield light, full
    light.close()
    full.close()


def runtime_of(index: Index) -> str:
    return index._searcher.query_model().runtime


def test_each_index_uses_the_runtime_the_test_means(both_runtimes):
    light, full = both_runtimes
    assert (runtime_of(light), runtime_of(full)) == ("numpy", "torch")


@pytest.mark.parametrize("query", QUERIES)
def test_numpy_and_torch_runtimes_give_the_same_results(both_runtimes, query):
    light, full = both_runtimes
    got = light.search(query, k=24, collapse_duplicates=False)
    want = full.search(query, k=24, collapse_duplicates=False)
    assert len(got) == len(want) == 24
    for field in ("score", "first_stage_score", "rerank_score", "zero_shot_score"):
        np.testing.assert_allclose(
            [getattr(r, field) for r in got], [getattr(r, field) for r in want], atol=SCORE_TOLERANCE, err_msg=field
        )
    for a, b in zip(got, want):
        if a.id != b.id:  # only a near-tie may be broken the other way
            assert abs(a.score - b.score) < SCORE_TOLERANCE, (query, a.path, b.path)
    assert sorted(r.id for r in got) == sorted(r.id for r in want)


def test_a_text_search_loads_neither_torch_nor_transformers(photo_index_dir):
    """What makes a command line search start fast: a text query on the CPU reads the model's
    files with numpy; an image query needs the torch model and loads it."""
    script = textwrap.dedent(f"""
        import json, sys
        from imgsearch import Index
        with Index.open({str(photo_index_dir)!r}, device="auto") as index:
            top = index.search("a parrot", k=1)[0].path
            text_only = sorted(m for m in ("torch", "transformers", "torchvision") if m in sys.modules)
            index.search(image={str(PHOTOS / "cat.jpg")!r}, k=1)
        print(json.dumps({{"top": top, "after_text": text_only, "after_image": "torch" in sys.modules}}))
    """)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # "auto" is the CPU here even on a GPU machine
    out = json.loads(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    )
    assert Path(out["top"]).name == "parrot.jpg"
    assert out["after_text"] == [] and out["after_image"] is True
