"""Synthetic "scenes" dataset for text-to-image retrieval.

Each image shows two coloured shapes on a light, slightly noisy background,
placed so that one spatial relation holds between them. Captions come from
templates and always describe the image truthfully, for example
"a small red circle left of a large blue square" or its converse
"a large blue square right of a small red circle".

Why swaps exist: a retrieval model can score well by matching a bag of words
("red", "circle", "blue", "square") without understanding which attribute
belongs to which object, or which object is where. `swapped` builds hard
negatives with the same words but a different image: an "attributes" swap
exchanges the colours of the two objects (red circle + blue square becomes
blue circle + red square), a "relation" swap exchanges their positions.
With ``generate(..., swaps=True)`` every scene is rendered together with both
swaps, so an evaluation set contains these hard negatives side by side.

Command line:
    python data/scenes.py OUT_DIR --count N [--seed S] [--size PX] [--swaps]
                          [--format png|jpg]
"""

import argparse
import os
import random
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")

RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
}
RADIUS = {"small": 0.12, "large": 0.22}  # fraction of the image size
CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
PHRASE = {"left of": "to the left of", "right of": "to the right of"}
SWAP_KINDS = ("attributes", "relation")
FORMATS = {"png": "PNG", "jpg": "JPEG"}


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str

    def describe(self, with_size: bool = True) -> str:
        words = (self.size, self.colour, self.shape) if with_size else (self.colour, self.shape)
        return " ".join(words)


@dataclass(frozen=True)
class Scene:
    """`first` <relation> `second`, e.g. a red circle left of a blue square."""

    first: Shape
    relation: str
    second: Shape

    def captions(self) -> list[str]:
        """Distinct, truthful template captions (lowercase, no period)."""
        a, b, rel, conv = self.first, self.second, self.relation, CONVERSE[self.relation]
        candidates = []
        for with_size in (True, False):
            da, db = a.describe(with_size), b.describe(with_size)
            candidates += [f"a {da} {rel} a {db}", f"a {db} {conv} a {da}"]
        da, db = a.describe(False), b.describe(False)
        candidates += [f"a {da} {PHRASE.get(rel, rel)} a {db}", f"a {db} {PHRASE.get(conv, conv)} a {da}"]
        return list(dict.fromkeys(candidates))  # de-duplicate, keep order


def random_shape(rng: random.Random) -> Shape:
    return Shape(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES))


def random_scene(rng: random.Random, *, strict: bool = False) -> Scene:
    """Two shapes differing in colour or shape (in both when `strict`,
    which is what makes both kinds of swap distinct hard negatives)."""
    first = random_shape(rng)
    while True:
        second = random_shape(rng)
        same_colour, same_shape = second.colour == first.colour, second.shape == first.shape
        if (not (same_colour or same_shape)) if strict else not (same_colour and same_shape):
            return Scene(first, rng.choice(RELATIONS), second)


def swapped(scene: Scene, kind: str) -> Scene:
    """Hard negative with the same words: swap colours or swap positions."""
    if kind == "attributes":
        if scene.first.colour == scene.second.colour:
            raise ValueError("attribute swap of two same-coloured shapes changes nothing")
        return replace(
            scene,
            first=replace(scene.first, colour=scene.second.colour),
            second=replace(scene.second, colour=scene.first.colour),
        )
    if kind == "relation":
        return Scene(scene.second, scene.relation, scene.first)
    raise ValueError(f"kind must be one of {SWAP_KINDS}, got {kind!r}")


def _background(size: int, rng: random.Random) -> Image.Image:
    """Light neutral background with a random tint and grey pixel noise."""
    noise = Image.frombytes("L", (size, size), rng.randbytes(size * size))
    amp = 6
    channels = []
    for _ in range(3):
        base = 232 + rng.randint(-8, 8)
        channels.append(noise.point(lambda v, base=base: base - amp + v * 2 * amp // 255))
    return Image.merge("RGB", channels)


def _layout(r_lo: int, r_hi: int, size: int, rng: random.Random) -> tuple[int, int, int, int]:
    """Centres (lo, hi) along one axis with lo + gap clearly below hi; may shrink radii."""
    gap = max(2, round(0.05 * size))
    while (slack := size - 1 - 2 * r_lo - 2 * r_hi - gap) < 0:
        if r_lo >= r_hi:
            r_lo -= 1
        else:
            r_hi -= 1
    lo = r_lo + rng.randint(0, slack)
    hi = rng.randint(lo + r_lo + r_hi + gap, size - 1 - r_hi)
    return lo, hi, r_lo, r_hi


def _draw(draw: ImageDraw.ImageDraw, shape: Shape, cx: int, cy: int, r: int, rng: random.Random) -> None:
    fill = tuple(min(255, max(0, c + rng.randint(-10, 10))) for c in RGB[shape.colour])
    if shape.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape.shape == "square":
        h = max(1, round(0.88 * r))
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape.shape!r}")


def render(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Draw the scene so that its relation holds; shapes never overlap or clip."""
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    radii = [max(2, round(RADIUS[s.size] * size * rng.uniform(0.95, 1.05))) for s in (scene.first, scene.second)]
    # The object with the smaller coordinate on the relation's axis is "lo".
    first_is_lo = scene.relation in ("left of", "above")
    horizontal = scene.relation in ("left of", "right of")
    r_lo, r_hi = radii if first_is_lo else radii[::-1]
    lo, hi, r_lo, r_hi = _layout(r_lo, r_hi, size, rng)
    placed = [(lo, r_lo), (hi, r_hi)] if first_is_lo else [(hi, r_hi), (lo, r_lo)]

    image = _background(size, rng)
    draw = ImageDraw.Draw(image)
    for shape, (along, r) in zip((scene.first, scene.second), placed):
        across = rng.randint(r, size - 1 - r)
        cx, cy = (along, across) if horizontal else (across, along)
        _draw(draw, shape, cx, cy, r, rng)
    return image


def _write_atomic(path: Path, save) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save(tmp)
    os.replace(tmp, path)


def generate(
    out_dir: str | os.PathLike,
    count: int,
    seed: int = 0,
    size: int = 64,
    swaps: bool = False,
    image_format: str = "png",
) -> list[tuple[str, str]]:
    """Write `count` images and captions.tsv under `out_dir`; return the rows.

    With `swaps`, images come in groups of three (scene, attribute swap,
    relation swap) and `count` is rounded down to a multiple of 3.
    """
    if image_format not in FORMATS:
        raise ValueError(f"image_format must be one of {tuple(FORMATS)}, got {image_format!r}")
    if swaps:
        count -= count % 3
    if count < 1:
        raise ValueError("count must be at least 1 (at least 3 with swaps)")
    out = Path(out_dir)
    captions_path = out / "captions.tsv"
    if captions_path.exists():
        raise FileExistsError(
            f"{captions_path} already exists; refusing to overwrite it (choose another output directory or delete it)"
        )
    (out / "images").mkdir(parents=True, exist_ok=True)

    rng = random.Random(seed)
    scenes: list[Scene] = []
    while len(scenes) < count:
        scene = random_scene(rng, strict=swaps)
        scenes += [scene, swapped(scene, "attributes"), swapped(scene, "relation")] if swaps else [scene]

    rows: list[tuple[str, str]] = []
    groups: list[int] = []  # swap group of each row: training keeps a group in one batch
    pil_format = FORMATS[image_format]
    for index, scene in enumerate(scenes):
        rel_path = f"images/scene_{index:05d}.{image_format}"
        image = render(scene, size, rng)
        options = {"quality": 95} if pil_format == "JPEG" else {}
        _write_atomic(out / rel_path, partial(image.save, format=pil_format, **options))
        captions = scene.captions()
        rows += [(rel_path, caption) for caption in captions]
        groups += [index // 3 if swaps else index] * len(captions)

    text = "image\tcaption\tgroup\n" + "".join(
        f"{path}\t{caption}\t{group}\n" for (path, caption), group in zip(rows, groups)
    )
    _write_atomic(captions_path, lambda p: p.write_text(text, encoding="utf-8"))
    return rows


def _int_at_least(minimum: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="output directory (images/ and captions.tsv)")
    parser.add_argument("--count", type=_int_at_least(1), required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=_int_at_least(32), default=64, help="image side in pixels")
    parser.add_argument("--swaps", action="store_true", help="render each scene with its attribute and relation swaps")
    parser.add_argument("--format", choices=tuple(FORMATS), default="png", dest="image_format")
    args = parser.parse_args(argv)
    try:
        rows = generate(
            args.out_dir, args.count, seed=args.seed, size=args.size, swaps=args.swaps, image_format=args.image_format
        )
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    images = len({path for path, _ in rows})
    print(f"wrote {images} images and {len(rows)} captions to {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
