"""Re-ranked text->image recall on the Flickr8k dev split with region features kept as
float32, float16 (what the store holds) and int8, and with the scorer's matrix products in
float32 (the reference scores) or bfloat16.

    python bench/benchmarks/compact_features.py EMBEDDINGS.npz MODEL_DIR [--depth 20]

EMBEDDINGS.npz comes from bench/benchmarks/flickr8k_embeddings.py (float32 region features of every
image). Each dev caption's top-`depth` dev images by first-stage cosine are re-ranked with
the model's fusion weight, as `imgsearch eval` does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

import numpy as np
import torch

from bench.benchmarks.machine import describe
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.fast_scorer import score_candidates_fast
from imgsearch.training.evaluate import recall_at_k, t2i_ranks


def int8_round_trip(regions: np.ndarray) -> np.ndarray:
    """Symmetric int8 per region vector (a float32 scale each): (N, R, d) --> dequantised float32."""
    scale = np.abs(regions).max(axis=-1, keepdims=True) / 127.0  # (N, R, 1)
    codes = np.round(regions / np.maximum(scale, 1e-12)).astype(np.int8)  # (N, R, d)
    return codes.astype(np.float32) * scale


def reranked_ranks(model, sim, image_of, tokens, mask, regions, depth, dtype) -> np.ndarray:
    """sim (Nc, Ni), tokens (Nc, T, d), regions (Ni, R, d) --> rank of each caption's image after re-ranking."""
    ranks = t2i_ranks(sim, image_of)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :depth]  # (Nc, depth)
    weight = np.float32(model.config.fusion_weight)
    with torch.inference_mode():
        for q in range(len(sim)):
            hit = np.nonzero(top[q] == image_of[q])[0]
            if not len(hit):
                continue  # the match is deeper than the re-ranked pool: first-stage rank stands
            logits = score_candidates_fast(model.scorer, tokens[q], mask[q], regions[top[q]], dtype).numpy()
            fused = logits + weight * sim[q, top[q]]
            ranks[q] = (fused > fused[hit[0]]).sum()
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("embeddings")
    parser.add_argument("model")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--report", default="bench/RESULTS.md")
    parser.add_argument("--title", default="Flickr8k dev", help="what the embeddings hold, for the report")
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = describe()
    data = np.load(args.embeddings)
    dev = data["dev_image"]  # (Ni,) rows of the dev images
    position = {int(row): i for i, row in enumerate(dev)}
    image_of = np.array([position[int(r)] for r in data["caption_image"]])  # (Nc,) index into the dev images
    sim = data["caption_global"] @ data["image_global"][dev].T  # (Nc, Ni)
    tokens, mask = torch.from_numpy(data["caption_tokens"]), torch.from_numpy(data["caption_mask"])
    regions32 = data["image_regions"][dev].astype(np.float32)  # (Ni, R, d)
    model = AlignmentModel.from_pretrained(args.model, device="cpu")
    num_regions, dim = regions32.shape[1:]
    float16 = regions32.astype(np.float16).astype(np.float32)
    variants = [  # name, features as the scorer sees them, bytes per image for R regions of d, scorer dtype
        ("float32", regions32, lambda r, d: 4 * r * d, torch.float32),
        ("float16 (stored)", float16, lambda r, d: 2 * r * d, torch.float32),
        ("int8 + scale per region", int8_round_trip(regions32), lambda r, d: r * (d + 4), torch.float32),
        ("float16 (stored), bf16 scorer", float16, lambda r, d: 2 * r * d, torch.bfloat16),
    ]
    first = recall_at_k(t2i_ranks(sim, image_of))
    rows, reference = [], None
    for name, regions, nbytes, dtype in variants:
        nbytes = (nbytes(num_regions, dim), nbytes(49, 256))  # this model, VGG16 7x7 x 256
        started = time.perf_counter()
        ranks = reranked_ranks(model, sim, image_of, tokens, mask, torch.from_numpy(regions), args.depth, dtype)
        seconds = time.perf_counter() - started
        reference = ranks if reference is None else reference
        changed = int((ranks != reference).sum())
        rows.append((name, str(dtype).removeprefix("torch."), nbytes, recall_at_k(ranks), changed, seconds))
        print(f"{name}: {rows[-1][3]} ({changed} ranks differ from float32, {seconds:.0f} s)", file=sys.stderr)
    out = [
        f"\n## Compact re-ranking features, {args.title}, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC "
        "(bench/benchmarks/compact_features.sh)\n",
        f"Machine: {machine}. Model: {args.model} ({num_regions} regions x {dim}). {len(dev)} images, "
        f"{len(sim)} captions; each caption's top {args.depth} re-ranked (fusion weight "
        f"{model.config.fusion_weight}). First stage: t2i R@1 {first['R@1']:.1f}, R@5 {first['R@5']:.1f}, "
        f"R@10 {first['R@10']:.1f}.\n",
        "| region features | scorer products | bytes / image (this model) | bytes / image at VGG16 7x7x256 | "
        "t2i R@1 | R@5 | R@10 | captions whose rank differs from float32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, dtype, nbytes, r, changed, _ in rows:
        out.append(
            f"| {name} | {dtype} | {nbytes[0]:,} | {nbytes[1]:,} | {r['R@1']:.2f} | {r['R@5']:.2f} | "
            f"{r['R@10']:.2f} | {changed} of {len(sim)} |"
        )
    report = "\n".join(out) + "\n"
    print(report)
    with open(args.report, "a") as f:
        f.write(report)


if __name__ == "__main__":
    main()
