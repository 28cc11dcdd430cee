"""The ranking's parts, one at a time, on Flickr8k dev, through search's own ranking
(training/evaluate.py search_t2i_ranks: score_pool + final_order, as Index.search ranks).

    python bench/experiments/fusion.py MODEL_DIR [--data ../shared/data/flickr8k]
        [--zero-shot 0 0.3] [--hubness 0 0.5] [--fusion ...] [--candidates 100]

Embeds the dev images and captions once, then for every combination of the zero-shot label
weight, the hubness weight and re-ranking (off, or on with each fusion weight) prints text->image
R@1 / R@5 / R@10: the ablation table of issue 20.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

import torch

from imgsearch.model.alignment import AlignmentModel
from imgsearch.training.data import encode_captions, load_images
from imgsearch.training.evaluate import embed_images, recall_at_k, search_t2i_ranks
from imgsearch.training.run import read_dataset


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--data", default="../shared/data/flickr8k")
    p.add_argument("--split", default="dev")
    p.add_argument("--zero-shot", type=float, nargs="+", default=None)
    p.add_argument("--hubness", type=float, nargs="+", default=None)
    p.add_argument("--fusion", type=float, nargs="*", default=None, help="fusion weights to try (default: the model's)")
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    model = AlignmentModel.from_pretrained(args.model, device="cpu")
    base = model.config
    items = read_dataset(data / "captions.tsv", data / "images", data / f"{args.split}.txt")
    images = load_images(items, base.backbone.image_size, workers=1)
    bank = encode_captions(model.text, images.items, cache_states=False)
    image_global, regions, class_probs = embed_images(model, images.pixels, with_class_probs=True)
    zero_shots = args.zero_shot if args.zero_shot is not None else [base.zero_shot_weight]
    hubs = args.hubness if args.hubness is not None else [base.hubness.weight]
    fusions = args.fusion if args.fusion is not None else [base.fusion_weight]
    print(f"{args.model}: {len(images.items)} images, {len(bank.captions)} captions, {args.candidates} candidates")
    print("| zero-shot weight | hubness weight | re-ranking (fusion weight) | t2i R@1 | R@5 | R@10 |")
    print("|---|---|---|---|---|---|")
    for zero_shot, hub in itertools.product(zero_shots, hubs):
        for n, fusion in enumerate(fusions):
            model.config = dataclasses.replace(
                base,
                zero_shot_weight=zero_shot,
                fusion_weight=fusion,
                hubness=dataclasses.replace(base.hubness, weight=hub),
            )
            first, final = search_t2i_ranks(
                model, image_global, regions, class_probs, bank.captions, bank.image_of, args.candidates, rerank=True
            )
            rows = ([("off", first)] if n == 0 else []) + [(f"on ({fusion:g})", final)]
            for name, ranks in rows:
                r = recall_at_k(ranks)
                print(
                    f"| {zero_shot:g} | {hub:g} | {name} | {r['R@1']:.2f} | {r['R@5']:.2f} | {r['R@10']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
