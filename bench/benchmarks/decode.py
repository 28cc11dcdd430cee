"""Decoding cost per image, full scale against reduced scale (what indexing and training use).

For each source the same files are decoded and resized to the model's input size
both ways, alternating, in one run: `decode_file(path)` then resize, against
`decode_file(path, min_size=size)` then resize (libjpeg decodes at 1/2, 1/4 or
1/8 scale). Sources: the Flickr8k JPEGs (224x224) and generated 12-megapixel
photo-like JPEGs (4000x3000, the size of a phone photo).

    python bench/benchmarks/decode.py [IMAGES_DIR] [--count N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.benchmarks.machine import describe
from imgsearch.images.decode import decode_file
from imgsearch.model.image_encoder import resize_uint8


def photo(seed: int, width: int = 4000, height: int = 3000) -> Image.Image:
    """Smooth gradients, texture noise and blocks: compresses like a photo (a few MB)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([255 * x / width, 255 * y / height, 128 + 90 * np.sin(x / 97.0 + seed) * np.cos(y / 61.0)], -1)
    base += rng.normal(0, 12, base.shape).astype(np.float32)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def time_per_image(paths: list[Path], size: int, reduced: bool, repeats: int) -> float:
    """Median over repeats of the mean seconds per image for decode + resize."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            result = decode_file(path, min_size=size if reduced else None)
            resize_uint8(result.image, size)
        runs.append((time.perf_counter() - start) / len(paths))
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="?", default="../shared/data/flickr8k/images")
    parser.add_argument("--count", type=int, default=300, help="Flickr8k files to decode")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    flickr = sorted(Path(args.images).glob("*.jpg"))[: args.count]
    if not flickr:
        sys.exit(f"Error: no .jpg files in {args.images}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = []
        for seed in range(4):
            path = Path(tmp) / f"photo{seed}.jpg"
            photo(seed).save(path, quality=90)
            photos.append(path)
        megabytes = sum(p.stat().st_size for p in photos) / len(photos) / 1e6
        for name, paths, sizes in (
            (f"Flickr8k 224x224 ({len(flickr)} files)", flickr, (96, 224)),
            (f"4000x3000 JPEG ({megabytes:.1f} MB, {len(photos)} files)", photos, (96, 224)),
        ):
            for size in sizes:
                full = time_per_image(paths, size, False, args.repeats)
                reduced = time_per_image(paths, size, True, args.repeats)
                rows.append((name, size, full * 1e3, reduced * 1e3, full / reduced))
    lines = [
        f"## Decoding cost, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC (bench/benchmarks/decode.py)",
        "",
        f"Machine: {describe()}. One process, decode + resize to the model's input, median of {args.repeats} passes.",
        "",
        "| files | model input | full-scale decode ms/img | reduced-scale decode ms/img | speed-up |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {s}px | {f:.2f} | {r:.2f} | {f / r:.1f}x |" for n, s, f, r, _ in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(Path(__file__).parents[1] / "RESULTS.md", "a") as results:
        results.write("\n" + text)


if __name__ == "__main__":
    main()
