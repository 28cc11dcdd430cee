"""Does a zero-shot ImageNet score help the first stage? Measured on Flickr8k dev and the sample photos.

    python bench/experiments/zero_shot.py MODEL_DIR [--top 5]

zero_shot(query, image) = sum over the image's top ImageNet classes c of p(c | image) *
cos(MiniLM(query), MiniLM(class name c)), with mean-pooled, L2-normalised MiniLM sentence
vectors (the packaged text encoder, frozen). The fused first-stage score is
cos(query vector, image vector) + weight * zero_shot. Prints dev t2i R@1/5/10 per weight
(the cached features of bench/experiments/photo_features.py) and, per sample-photo query, the rank of
the photo it describes among the 24 (data/photos).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT))

from imgsearch.images.decode import decode_file  # noqa: E402
from imgsearch.model.alignment import AlignmentModel  # noqa: E402
from imgsearch.model.image_encoder import resize_uint8  # noqa: E402
from imgsearch.model.zero_shot import sentence_vectors  # noqa: E402
from imgsearch.training.evaluate import recall_at_k, t2i_ranks  # noqa: E402

WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
# query --> the sample photos that it describes (data/photos/queries.json; the first eight are make demo's)
PHOTO_QUERIES = {
    query: set(names) for query, names in json.loads((ROOT / "data" / "photos" / "queries.json").read_text()).items()
}


def top_posteriors(probs: torch.Tensor, top: int) -> torch.Tensor:
    """(N, C) posteriors --> the same with all but the top `top` non-background classes zeroed."""
    probs = probs.clone()
    probs[:, 0] = 0
    kept = torch.zeros_like(probs)
    values, index = probs.topk(top, dim=1)
    return kept.scatter_(1, index, values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--top", type=int, default=5, help="classes kept per image (the index stores 5)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = AlignmentModel.from_pretrained(args.model, device="cpu")
    names = torch.from_numpy(sentence_vectors(model, list(model.config.image_labels)))  # (C, h)

    # Flickr8k dev, from the cached backbone outputs and text states
    dev = torch.load(ROOT / "bench" / "out" / "photo-features-224.pt", weights_only=True)["dev"]
    with torch.inference_mode():
        image = model.image.project(dev["regions"].float(), dev["pooled"]).global_  # (Ni, d)
        tokens_mask = dev["mask"]
        text = model.text.project(dev["states"].float(), tokens_mask)[1]  # (Nc, d)
        mask = tokens_mask.unsqueeze(-1).float()
        query_sentences = F.normalize((dev["states"].float() * mask).sum(1) / mask.sum(1), dim=-1)  # (Nc, h)
        posteriors = top_posteriors(model.image.backbone.classify(dev["pooled"]).softmax(-1), args.top)  # (Ni, C)
    sim = (text @ image.T).numpy()  # (Nc, Ni)
    zero_shot = (query_sentences @ (posteriors @ names).T).numpy()  # (Nc, h) x (h, Ni)
    print("Flickr8k dev, text->image, first stage + weight * zero-shot:")
    for weight in WEIGHTS:
        print(f"  weight {weight:<4}: {recall_at_k(t2i_ranks(sim + weight * zero_shot, dev['image_of'].numpy()))}")

    # the sample photos
    paths = sorted((ROOT / "data" / "photos").glob("*.jpg"))
    size = model.config.backbone.image_size
    pixels = torch.stack([resize_uint8(decode_file(p, min_size=size).image, size) for p in paths])
    with torch.inference_mode():
        out = model.image(model.image.normalize(pixels))
        photo_posteriors = top_posteriors(out.class_probs, args.top)
        queries = list(PHOTO_QUERIES)
        query_vectors = model.text.encode(queries).global_  # (Q, d)
        photo_sim = (query_vectors @ out.global_.T).numpy()  # (Q, P)
        photo_zero_shot = (torch.from_numpy(sentence_vectors(model, queries)) @ (photo_posteriors @ names).T).numpy()
    print(f"\nsample photos ({len(paths)}): rank of the best described photo (1 = first), per weight")
    print("  " + " ".join(f"{w:>5}" for w in WEIGHTS) + "  query")
    firsts = np.zeros(len(WEIGHTS), dtype=int)
    for q, query in enumerate(queries):
        row = []
        for w_index, weight in enumerate(WEIGHTS):
            scores = photo_sim[q] + weight * photo_zero_shot[q]
            order = [paths[i].name for i in np.argsort(-scores, kind="stable")]
            rank = min(order.index(name) for name in PHOTO_QUERIES[query]) + 1
            firsts[w_index] += rank == 1
            row.append(rank)
        print("  " + " ".join(f"{r:>5}" for r in row) + f"  {query}")
    print("  " + " ".join(f"{f:>5}" for f in firsts) + f"  first, of {len(queries)}")


if __name__ == "__main__":
    main()
