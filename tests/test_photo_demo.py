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

Both packaged models run the demo's queries: the default ("photo", EfficientNet-Lite0) also
"a dragonfly" (dragonfly.jpg), which the fast one (MobileNetV2) is not held to.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgsearch import Index
from imgsearch.model.packaged import packaged_model_dir

PHOTOS = Path(__file__).parents[1] / "data" / "photos"

# make demo's eight queries (the first eight of data/photos/queries.json) --> the photos each describes
QUERIES = json.loads((PHOTOS / "queries.json").read_text())
FIRST = {query: set(names) for query, names in list(QUERIES.items())[:8]}
# Each packaged model's queries: the default model answers "a dragonfly" too (issue 20).
MODEL_QUERIES = {"photo": [*FIRST, "a dragonfly"], "fast": list(FIRST)}


@pytest.fixture(scope="module")
def photo_indexes(tmp_path_factory):
    """name --> the sample photos indexed with that packaged model, built on first use and kept for
    the module (one index per model, not one per query)."""
    indexes: dict[str, Index] = {}

    def index_of(name: str) -> Index:
        if name not in indexes:
            directory = tmp_path_factory.mktemp(f"photos-{name}") / "index"
            index = Index.create(directory, model=packaged_model_dir(name), device="cpu")
            summary = index.add([PHOTOS], workers=0)
            assert (summary.added, summary.failed) == (24, 0)
            indexes[name] = index
        return indexes[name]

    yield index_of
    for index in indexes.values():
        index.close()


# Known misses (bench/RESULTS.md, issue 20): the fast model (MobileNetV2, its zero-shot score
# on the classes' names) ranks parrot.jpg 3rd. The default model's label score reads WordNet
# class texts ("macaw, parrot") and finds both the parrot and the dragonfly first. Strict: the
# day one passes, its entry must go.
KNOWN_MISSES = {
    ("fast", "a parrot"): "the fast model ranks parrot.jpg 3rd, after owl.jpg and bird.jpg",
}


@pytest.mark.parametrize(
    ("name", "query"),
    [
        pytest.param(
            name,
            query,
            marks=[pytest.mark.xfail(reason=KNOWN_MISSES[name, query], strict=True)]
            if (name, query) in KNOWN_MISSES
            else [],
            id=f"{name}-{query}",
        )
        for name, queries in MODEL_QUERIES.items()
        for query in queries
    ],
)
def test_demo_query_finds_the_described_photo_first(photo_indexes, name, query):
    results = photo_indexes(name).search(query, k=3)
    top = [Path(r.path).name for r in results]
    expected = set(QUERIES[query])
    assert top[0] in expected, f"{name}, {query!r}: top 3 {top}, expected first one of {sorted(expected)}"


def test_demo_queries_match_scripts_demo_sh():
    script = (Path(__file__).parents[1] / "scripts" / "demo.sh").read_text()
    for query in FIRST:
        assert f'"{query}"' in script
