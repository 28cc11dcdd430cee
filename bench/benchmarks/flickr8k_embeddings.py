"""Embed Flickr8k once with a trained model and cache the arrays the query and
compact-feature benchmarks need (bench/out/, not committed).

    python bench/benchmarks/flickr8k_embeddings.py MODEL_DIR DATA_DIR OUT.npz

Saved arrays: image_global (Ni, d) float32 and image_regions (Ni, R, d) float32
for every image in captions.tsv; dev_image (Nd,) indices of the dev split images;
caption_global (Nc, d), caption_tokens (Nc, T, d) float32, caption_mask (Nc, T)
and caption_image (Nc,) for the dev captions.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.image_encoder import preprocess
from imgsearch.training.evaluate import embed_captions


def main(model_dir: str, data_dir: str, out: str) -> None:
    data = Path(data_dir)
    model = AlignmentModel.from_pretrained(model_dir, device="cpu")
    size = model.config.backbone.image_size
    with open(data / "captions.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    names = sorted({r["image"] for r in rows})
    index_of = {name: i for i, name in enumerate(names)}
    with open(data / "dev.txt") as f:
        dev = [line.strip() for line in f if line.strip()]
    started = time.perf_counter()
    globals_, regions = [], []
    with torch.inference_mode():
        for start in range(0, len(names), 128):
            pixels = torch.stack(
                [
                    preprocess(Image.open(data / "images" / n).convert("RGB"), size, model.config.backbone)
                    for n in names[start : start + 128]
                ]
            )  # (B, 3, S, S)
            emb = model.image(pixels)
            globals_.append(emb.global_.numpy())
            regions.append(emb.regions.numpy())
            print(f"images {start + len(pixels)}/{len(names)}", file=sys.stderr, flush=True)
    dev_set = set(dev)
    dev_rows = [r for r in rows if r["image"] in dev_set]
    captions = [r["caption"] for r in dev_rows]
    caption_global, tokens, mask = embed_captions(model, captions)
    np.savez(
        out,
        names=np.array(names),
        image_global=np.concatenate(globals_),
        image_regions=np.concatenate(regions),
        dev_image=np.array([index_of[n] for n in dev]),
        caption_global=caption_global,
        caption_tokens=tokens.numpy(),
        caption_mask=mask.numpy(),
        caption_image=np.array([index_of[r["image"]] for r in dev_rows]),
        captions=np.array(captions),
    )
    print(
        f"embedded {len(names)} images and {len(captions)} captions in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
