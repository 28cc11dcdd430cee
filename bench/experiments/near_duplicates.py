"""How alike near-duplicates and distinct photos are to a model: the measurements behind
near_duplicate_cosine (model/calibration.py, training/calibration.py's near_duplicate_threshold).

    python bench/experiments/near_duplicates.py [MODEL_DIR]     (default data/photo-model)

Global-vector cosines of: the sample photos' closest pairs (data/photos: cat.jpg and its
1280x720 copy cat_720p.jpg); each Flickr8k dev photo's nearest other dev photo (distinct
photos); and each dev photo against an edited copy of itself (half size, JPEG quality 40, a
90% centre crop, 20% brighter, mirrored), as quantiles.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgsearch.images.decode import decode_file, decode_image_bytes
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.image_encoder import resize_uint8
from imgsearch.training.run import read_dataset

FLICKR8K = Path("../shared/data/flickr8k")


def encode(model: AlignmentModel, pictures: list[Image.Image]) -> np.ndarray:
    """Pictures --> global vectors (N, d), as the indexer resizes and encodes them."""
    pixels = torch.stack([resize_uint8(p, model.config.backbone.image_size) for p in pictures])
    with torch.inference_mode():
        return np.concatenate(
            [model.image.encode(pixels[i : i + 64]).global_.float().numpy() for i in range(0, len(pixels), 64)]
        )


def jpeg(picture: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, "JPEG", quality=quality)
    return decode_image_bytes(buffer.getvalue())


def main() -> None:
    torch.set_num_threads(2)
    model = AlignmentModel.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else "data/photo-model", device="cpu")
    model.eval()
    photos = sorted(Path("data/photos").glob("*.jpg"))
    names = [p.name for p in photos]
    vectors = encode(model, [decode_file(p).image for p in photos])
    similar = vectors @ vectors.T
    print(f"cat.jpg vs cat_720p.jpg: {similar[names.index('cat.jpg'), names.index('cat_720p.jpg')]:.4f}")
    np.fill_diagonal(similar, -1)
    for flat in np.argsort(-similar.ravel())[:12:2]:
        a, b = divmod(int(flat), len(names))
        print(f"  sample photos: {names[a]} {names[b]} {similar[a, b]:.4f}")

    items = read_dataset(FLICKR8K / "captions.tsv", FLICKR8K / "images", FLICKR8K / "dev.txt")
    pictures = [decode_file(item.path).image for item in items]
    base = encode(model, pictures)
    distinct = base @ base.T
    np.fill_diagonal(distinct, -1)
    nearest = distinct.max(1)
    print(
        "dev photos, nearest other photo's cosine: quantiles 50/99/99.9% "
        f"{np.quantile(nearest, [0.5, 0.99, 0.999]).round(4)}, max {nearest.max():.4f}"
    )
    for t in np.argsort(-nearest)[:6]:
        print(f"    {items[t].path.name} {items[int(distinct[t].argmax())].path.name} {nearest[t]:.4f}")
    variants = {
        "half size": [p.resize((p.width // 2, p.height // 2)) for p in pictures],
        "jpeg q40": [jpeg(p, 40) for p in pictures],
        "crop 90%": [
            p.crop((int(p.width * 0.05), int(p.height * 0.05), int(p.width * 0.95), int(p.height * 0.95)))
            for p in pictures
        ],
        "brighter 20%": [Image.eval(p.convert("RGB"), lambda v: min(255, int(v * 1.2))) for p in pictures],
        "mirrored": [p.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in pictures],
    }
    for name, edited in variants.items():
        cosine = (encode(model, edited) * base).sum(1)
        quantiles = np.quantile(cosine, [0.001, 0.01, 0.05, 0.5]).round(4)
        print(f"{name}: cosine to the original, quantiles 0.1/1/5/50% {quantiles}")


if __name__ == "__main__":
    main()
