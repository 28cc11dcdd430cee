import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "data" / "scenes.py"
_spec = importlib.util.spec_from_file_location("scenes", SCRIPT)
scenes = importlib.util.module_from_spec(_spec)
sys.modules["scenes"] = scenes  # dataclasses look their module up here
_spec.loader.exec_module(scenes)

Shape, Scene = scenes.Shape, scenes.Scene


def colour_pixels(image):
    """Map each palette colour to the list of (x, y) pixels closest to it."""
    found = {name: [] for name in scenes.RGB}
    width, height = image.size
    data = image.load()
    for y in range(height):
        for x in range(width):
            pixel = data[x, y]
            name, dist = min(
                ((n, sum((a - b) ** 2 for a, b in zip(pixel, rgb))) for n, rgb in scenes.RGB.items()),
                key=lambda t: t[1],
            )
            if dist < 40**2:
                found[name].append((x, y))
    return found


def centroid(points):
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))


@pytest.mark.parametrize("relation", scenes.RELATIONS)
@pytest.mark.parametrize("size", [32, 64])
def test_render_makes_relation_true(relation, size):
    rng = random.Random(scenes.RELATIONS.index(relation) * 1000 + size)
    for trial in range(12):
        colours = rng.sample(scenes.COLOURS, 2)
        first = Shape(rng.choice(scenes.SHAPES), colours[0], rng.choice(scenes.SIZES))
        second = Shape(rng.choice(scenes.SHAPES), colours[1], rng.choice(scenes.SIZES))
        image = scenes.render(Scene(first, relation, second), size, rng)
        assert image.mode == "RGB" and image.size == (size, size)
        found = colour_pixels(image)
        a, b = found[first.colour], found[second.colour]
        assert a and b, "both shapes must be visible"
        assert not any(found[c] for c in scenes.COLOURS if c not in colours)
        (ax, ay), (bx, by) = centroid(a), centroid(b)
        expected = {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}
        assert expected[relation], (trial, relation, (ax, ay), (bx, by))
        # Separation along the relation's axis is unambiguous: no pixel ranges overlap.
        axis = 0 if relation in ("left of", "right of") else 1
        lo, hi = (a, b) if relation in ("left of", "above") else (b, a)
        assert max(p[axis] for p in lo) < min(p[axis] for p in hi)


def test_large_shapes_are_clearly_larger():
    rng = random.Random(3)
    for shape in scenes.SHAPES:
        scene = Scene(Shape(shape, "red", "small"), "left of", Shape(shape, "blue", "large"))
        found = colour_pixels(scenes.render(scene, 96, rng))
        assert len(found["blue"]) > 2.5 * len(found["red"]) > 0


def test_shapes_stay_inside_image_at_extreme_sizes():
    rng = random.Random(5)
    for size in (32, 33, 224):
        for relation in scenes.RELATIONS:
            big = Scene(Shape("circle", "red", "large"), relation, Shape("square", "blue", "large"))
            found = colour_pixels(scenes.render(big, size, rng))
            for colour in ("red", "blue"):
                xs = [p[0] for p in found[colour]]
                ys = [p[1] for p in found[colour]]
                # A clipped shape would touch the border on at least one side.
                assert min(xs) > 0 or max(xs) < size - 1
                assert min(ys) > 0 or max(ys) < size - 1


def test_captions_are_distinct_lowercase_and_mention_both_objects():
    scene = Scene(Shape("circle", "red", "small"), "left of", Shape("square", "blue", "large"))
    captions = scene.captions()
    assert "a small red circle left of a large blue square" in captions
    assert "a large blue square right of a small red circle" in captions
    assert "a red circle left of a blue square" in captions
    assert "a red circle to the left of a blue square" in captions
    assert len(captions) == len(set(captions)) >= 2
    for caption in captions:
        assert caption == caption.lower() and not caption.endswith(".")
    above = Scene(scene.first, "above", scene.second).captions()
    assert "a large blue square below a small red circle" in above
    assert len(above) == len(set(above))


def test_random_scene_shapes_are_distinguishable():
    rng = random.Random(0)
    for _ in range(500):
        s = scenes.random_scene(rng)
        assert s.relation in scenes.RELATIONS
        assert (s.first.colour, s.first.shape) != (s.second.colour, s.second.shape)
        strict = scenes.random_scene(rng, strict=True)
        assert strict.first.colour != strict.second.colour
        assert strict.first.shape != strict.second.shape


def test_attribute_swap_exchanges_colours_only():
    scene = Scene(Shape("circle", "red", "small"), "left of", Shape("square", "blue", "large"))
    swap = scenes.swapped(scene, "attributes")
    assert swap == Scene(Shape("circle", "blue", "small"), "left of", Shape("square", "red", "large"))
    with pytest.raises(ValueError):
        scenes.swapped(Scene(scene.first, "above", Shape("square", "red", "large")), "attributes")


def test_relation_swap_keeps_words_but_moves_objects():
    scene = Scene(Shape("circle", "red", "small"), "above", Shape("square", "blue", "large"))
    swap = scenes.swapped(scene, "relation")
    assert swap.first == scene.second and swap.second == scene.first
    assert swap.relation == scene.relation
    assert sorted(swap.captions()[0].split()) == sorted(scene.captions()[0].split())
    assert not set(swap.captions()) & set(scene.captions())
    with pytest.raises(ValueError):
        scenes.swapped(scene, "colour")


def test_generate_writes_images_and_captions(tmp_path):
    rows = scenes.generate(tmp_path / "out", 7, seed=1, size=48)
    lines = (tmp_path / "out" / "captions.tsv").read_text().splitlines()
    assert lines[0] == "image\tcaption\tgroup"
    assert [tuple(line.split("\t")[:2]) for line in lines[1:]] == rows
    images = sorted((tmp_path / "out" / "images").iterdir())
    assert [p.name for p in images] == [f"scene_{i:05d}.png" for i in range(7)]
    per_image = {}
    for path, caption in rows:
        assert (tmp_path / "out" / path).is_file()
        per_image.setdefault(path, []).append(caption)
    assert len(per_image) == 7 and all(len(c) >= 2 for c in per_image.values())
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_generate_is_deterministic(tmp_path):
    def snapshot(name, seed, image_format="png"):
        scenes.generate(tmp_path / name, 4, seed=seed, size=40, image_format=image_format)
        return {
            p.relative_to(tmp_path / name): p.read_bytes() for p in sorted((tmp_path / name).rglob("*")) if p.is_file()
        }

    first = snapshot("a", 7)
    assert first == snapshot("b", 7)
    assert snapshot("c", 8) != first
    jpg = snapshot("d", 7, "jpg")
    assert jpg == snapshot("e", 7, "jpg")
    assert any(name.suffix == ".jpg" for name in jpg)


def test_generate_with_swaps_groups_hard_negatives(tmp_path):
    rows = scenes.generate(tmp_path, 8, seed=2, size=32, swaps=True)
    captions = {}
    for path, caption in rows:
        captions.setdefault(path, set()).add(caption)
    paths = sorted(captions)
    assert len(paths) == 6
    for group in (paths[0:3], paths[3:6]):
        a, b, c = (captions[p] for p in group)
        assert not (a & b or a & c or b & c), "a caption must pick out one image of its group"
        # Same bag of words, different images: hard negatives.
        bags = [sorted(" ".join(sorted(s)).split()) for s in (a, b, c)]
        assert bags[0] == bags[1] == bags[2]


def test_generate_refuses_to_overwrite(tmp_path):
    scenes.generate(tmp_path, 2, seed=0, size=32)
    before = (tmp_path / "captions.tsv").read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        scenes.generate(tmp_path, 3, seed=1, size=32)
    assert (tmp_path / "captions.tsv").read_bytes() == before


def run_cli(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_cli_generates_and_rejects_bad_arguments(tmp_path):
    ok = run_cli(tmp_path / "cli", "--count", 3, "--size", 32, "--swaps", "--format", "jpg")
    assert ok.returncode == 0, ok.stderr
    assert "wrote 3 images" in ok.stderr
    assert len(list((tmp_path / "cli" / "images").glob("*.jpg"))) == 3
    for bad in (["--count", 0], ["--count", 2, "--size", 31], ["--count", "x"]):
        result = run_cli(tmp_path / "bad", *bad)
        assert result.returncode == 2 and "error" in result.stderr, bad
    again = run_cli(tmp_path / "cli", "--count", 3)
    assert again.returncode != 0 and "already exists" in again.stderr
