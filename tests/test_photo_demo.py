"""The main job on real photos: data/photos indexed with the packaged photo model, as `make demo` does.

For each demo query (scripts/demo.sh), the photo that must come first. The answers
were written from looking at the photos:
- cats: cat.jpg and cat_720p.jpg (the same tabby on a red rug), cat_test_0.jpg (a
  ginger cat, backlit), cat_train_0.jpg (a calico); pets.jpg is two dogs;
- hot dogs: hot_dog.jpg, hotdog_test_0.jpg (sausages in buns) and hotdog_train_0.jpg
  (a sausage in a split baguette with peppers and mustard);
- the dog running in water is dog_train_0.jpg (a pale retriever puppy splashing through
  shallow sea water); dog_test_0.jpg runs on grass with a ball, pets.jpg has two dogs
  on artificial grass, dog.jpg is a Samoyed's head;
- cars on a highway: traffic_frame.jpg (cars driving on a multi-lane road beside a
  sound wall); cityscapes.jpg shows cars parked along a residential street;
- the woman in a naval uniform is grace_hopper.jpg (Rear Admiral Grace Hopper's portrait).

Skipped while data/photo-model is a stand-in (not a mobilenet_v2 model): the real
model makes it run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgsearch import Index
from imgsearch.model.packaged import default_model_dir
from imgsearch.errors import ModelNotFound

PHOTOS = Path(__file__).parents[1] / "data" / "photos"

# make demo's eight queries (the first eight of data/photos/queries.json) --> the photos each describes
FIRST = {query: set(names) for query, names in
         list(json.loads((PHOTOS / "queries.json").read_text()).items())[:8]}


def _not_the_photo_model() -> str | None:
    """Why the packaged model cannot run this test, or None when it is the real photo model."""
    try:
        config = json.loads((default_model_dir() / "config.json").read_text())
    except ModelNotFound as exc:
        return str(exc)
    backbone = config.get("image", {}).get("backbone", {}).get("name")
    if backbone != "mobilenet_v2":
        return (f"data/photo-model is a stand-in (backbone {backbone!r}, not 'mobilenet_v2'); "
                "this test runs once the trained photo model is there")
    return None


needs_photo_model = pytest.mark.skipif(_not_the_photo_model() is not None, reason=str(_not_the_photo_model()))


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory):
    with Index.create(tmp_path_factory.mktemp("photos") / "index", model=default_model_dir(), device="cpu") as index:
        summary = index.add([PHOTOS], workers=0)
        assert (summary.added, summary.failed) == (24, 0)
        yield index


# Known miss of the shipped model (bench/RESULTS.md): "a parrot" ranks parrot.jpg 3rd, after
# owl.jpg and bird.jpg (the model trained on train.txt alone put it first). Strict: the day it
# passes, this marker must go.
KNOWN_MISSES = {"a parrot": "the shipped photo model ranks parrot.jpg 3rd, after owl.jpg and bird.jpg"}


@needs_photo_model
@pytest.mark.parametrize("query", [
    pytest.param(q, marks=pytest.mark.xfail(reason=KNOWN_MISSES[q], strict=True)) if q in KNOWN_MISSES else q
    for q in FIRST
])
def test_demo_query_finds_the_described_photo_first(photo_index, query):
    results = photo_index.search(query, k=3)
    top = [Path(r.path).name for r in results]
    assert top[0] in FIRST[query], f"{query!r}: top 3 {top}, expected first one of {sorted(FIRST[query])}"


def test_demo_queries_match_scripts_demo_sh():
    script = (Path(__file__).parents[1] / "scripts" / "demo.sh").read_text()
    for query in FIRST:
        assert f'"{query}"' in script
